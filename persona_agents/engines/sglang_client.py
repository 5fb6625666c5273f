"""`engine: sglang`: an NPC's model served by a remote SGLang server; the heads run here.

SGLang (https://github.com/sgl-project/sglang) is a serving engine with tensor
parallelism, radix prefix caching and LoRA serving. Its native `POST /generate` takes
token ids and, on a server started with `--enable-return-hidden-states`, returns the
hidden states of the prompt pass. This module tokenizes locally with the adapter's
tokenizer, so the `<STATE>` position is exact, and runs a turn in requests that share
SGLang's radix cache:

1. the prompt pass: the prompt's ids up to and including `<STATE>`, `max_new_tokens: 1`,
   `return_hidden_states: true`. `<STATE>` is the request's last prompt token, and the
   last row of the returned prompt part is its hidden state, whatever SGLang took from
   its cache. With `state_pass: split` (the default) a request for the ids before
   `<STATE>` goes first, without hidden states: the second then computes one token and
   returns one row instead of one per uncached prompt token (a 300-token turn on a
   4096-wide model is about 15 MB of JSON floats).
2. the heads read that row here; the game's rules decide (decide, then speak);
3. the reply: the prompt's ids plus the decision's (`render_decision`), sampled with the
   persona's settings. SGLang finds the prompt pass's tokens in its radix cache:
   `meta.sglang.reply.cached_tokens` says how many it reused.

The API facts relied on, read in SGLang's source (the PyPI wheels 0.5.23, the version
checked, and 0.5.17, the first with the fix below; 0.5.16 and 0.4.10.post2 for what
came before):

- request (`managers/io_struct.py` GenerateReqInput; the HTTP gate `api/v1/api_types.py`
  GenerateRequest, SamplingParams with unknown keys rejected): `input_ids`,
  `sampling_params` {`max_new_tokens`, `temperature` (0: greedy), `top_p`,
  `repetition_penalty`, `stop_token_ids`, `skip_special_tokens`, `sampling_seed`},
  `return_hidden_states` (a boolean over HTTP: the `"last"` mode of the Python engine
  is refused by the 0.5.23 HTTP gate), `stream`, `lora_path`;
- response (`managers/tokenizer_manager.py`): `{"text", "output_ids", "meta_info"}`
  (no `text` under `--skip-tokenizer-init`); `meta_info` has `prompt_tokens`,
  `completion_tokens`, `cached_tokens`, `finish_reason` ({"type": "stop", "matched":
  id} / {"type": "length", "length": n}) and, when asked, `hidden_states`: a list whose
  first item is the prompt part, one row per prompt token computed in that pass (the
  uncached ones), then one row per decode step (none with `max_new_tokens: 1`);
  streaming: `data: {...}` lines with the output ids so far, then `data: [DONE]`;
  errors: HTTP 400 `{"error": {"message": ...}}`;
- which vector: the one the model class hands its logits processor: for Llama and
  Qwen2 the output of the final norm (`models/llama.py` LlamaModel.forward ends with
  `self.norm`; `layers/logits_processor.py` stores those states unless a model passes
  pre-norm ones). That is what the heads were trained on (`last_hidden_state` of
  transformers' decoder, after its final norm) and what the fast engine keeps;
- 0.5.16 and older slice a batch's prompt hidden states by whole prompt lengths
  (`len(req.origin_input_ids)`) although a radix-cache hit computes only the uncached
  part: in a batch with other requests a request can get another's rows (sglang issues
  #4997, #32089). 0.5.17 advances by each request's extend length. Older versions are
  refused; a row count that does not fit the request is an error, never a guess;
- server flags (`srt/server_args.py`, `arg_groups/fields/`): `--enable-return-hidden-states`
  (or `--return-hidden-states-mode full`; `last` is not enough over HTTP), `--enable-lora`,
  `--lora-paths NAME=PATH`, `--skip-tokenizer-init`; `GET /server_info` (`version` and
  the server arguments) and `GET /model_info` (`model_path`), `/get_server_info` and
  `/get_model_info` in older versions.

Checked against a recorded exchange (tests/data/sglang/, built from that source), not a
live GPU server. The adapter is served merged into its base (`export_merged` below):
SGLang's LoRA loader does not read the trained embedding rows of the prompt markers
that persona-agents adapters add (peft's `trainable_token_indices`).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ModelLoadError

#: The SGLang version whose source this client was checked against, and the oldest it accepts.
CHECKED_VERSION = "0.5.23"
MIN_VERSION = (0, 5, 17)
#: Written into a merged export; the step compares it with its adapter where it can read it.
EXPORT_FILE = "persona_agents_export.json"
_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json")


def launch_hint(model_path: str = "DIR") -> str:
    return f"python -m sglang.launch_server --model-path {model_path} --enable-return-hidden-states"


class SGLangError(ModelLoadError):
    """The SGLang server cannot serve this NPC (unreachable, started without the flags it
    needs, another model, a LoRA it has not loaded); the message names the URL and the fix."""


@dataclass
class GenerateResult:
    """One `/generate` answer, as this engine reads it."""

    output_ids: list[int]
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    finish_reason: Any
    hidden_states: list | None
    ms: float


def parse_version(text: Any) -> tuple[int, int, int] | None:
    found = re.match(r"\s*v?(\d+)\.(\d+)\.(\d+)", str(text or ""))
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def _error_message(raw: bytes) -> str:
    """SGLang's error text: `{"error": {"message": ...}}`, `{"message": ...}` or plain text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:500]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    return str(body)


def _find_key(info: Any, key: str, depth: int = 2) -> Any:
    """`info[key]`, or the first value of `key` in a nested dict (server arguments may be
    grouped), or None."""
    if not isinstance(info, dict):
        return None
    if key in info:
        return info[key]
    if depth:
        for value in info.values():
            found = _find_key(value, key, depth - 1)
            if found is not None:
                return found
    return None


class SGLangClient:
    """SGLang's native HTTP API: `/generate` with token ids, `/server_info`, `/model_info`."""

    def __init__(self, url: str, timeout_s: float = 60.0, lora: str | None = None):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.lora = lora
        #: Whether streamed chunks carry only the new ids (`--incremental-streaming-output`).
        self.incremental = False

    # -- transport ---------------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> SGLangError:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return SGLangError(
                f"SGLang server at {self.url} did not answer within {self.timeout_s:g} s ({reason}). Check that it "
                "is up and not overloaded, or raise the multihead step's `timeout_s` option.")
        return SGLangError(
            f"SGLang server at {self.url} is unreachable ({reason}). Start it ({launch_hint()}) or fix the "
            "multihead step's `url` option.")

    def _open(self, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.url + path, data=data, method="GET" if body is None else "POST",
            headers={} if body is None else {"Content-Type": "application/json"})
        try:
            return urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            raise _HTTPStatus(exc.code, _error_message(exc.read())) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(exc) from exc

    def get_json(self, *paths: str) -> dict | None:
        """The first of `paths` the server answers (newer names first), or None."""
        for path in paths:
            try:
                with self._open(path) as response:
                    body = json.loads(response.read())
            except _HTTPStatus:
                continue
            except ValueError:  # not JSON: not the endpoint this looks for
                continue
            except OSError as exc:
                raise self._unreachable(exc) from exc
            return body if isinstance(body, dict) else None
        return None

    def server_info(self) -> dict | None:
        return self.get_json("/server_info", "/get_server_info")

    def model_info(self) -> dict | None:
        return self.get_json("/model_info", "/get_model_info")

    # -- generate ----------------------------------------------------------------------------

    def generate(self, input_ids: Sequence[int], sampling_params: dict[str, Any], *,
                 return_hidden_states: bool = False, on_ids: Callable[[list[int]], None] | None = None
                 ) -> GenerateResult:
        """One `/generate` request; streamed when `on_ids` is given (called with each
        chunk's new output ids)."""
        body: dict[str, Any] = {"input_ids": list(input_ids), "sampling_params": sampling_params,
                                "stream": on_ids is not None}
        if return_hidden_states:
            body["return_hidden_states"] = True
        if self.lora is not None:
            body["lora_path"] = self.lora
        start = time.perf_counter()
        try:
            with self._open("/generate", body) as response:
                final = self._read_stream(response, on_ids) if on_ids is not None else json.loads(response.read())
        except _HTTPStatus as exc:
            raise self._refused(exc.status, exc.message) from exc
        except json.JSONDecodeError as exc:
            raise SGLangError(f"SGLang server at {self.url} answered /generate with invalid JSON ({exc}): is this an "
                              f"SGLang server (checked: {CHECKED_VERSION})?") from exc
        except OSError as exc:
            raise self._unreachable(exc) from exc
        ms = (time.perf_counter() - start) * 1000
        if not isinstance(final, dict) or not isinstance(final.get("meta_info"), dict):
            raise SGLangError(f"SGLang server at {self.url} answered /generate without `meta_info`: is this an "
                              f"SGLang server (checked: {CHECKED_VERSION})?")
        meta = final["meta_info"]
        return GenerateResult(
            output_ids=[int(i) for i in final.get("output_ids") or []],
            prompt_tokens=int(meta.get("prompt_tokens", len(input_ids))),
            cached_tokens=int(meta.get("cached_tokens") or 0),
            completion_tokens=int(meta.get("completion_tokens") or 0),
            finish_reason=meta.get("finish_reason"),
            hidden_states=meta.get("hidden_states"),
            ms=ms,
        )

    def _read_stream(self, response, on_ids: Callable[[list[int]], None]) -> dict:
        """Server-sent events: `data: {...}` per chunk (the output ids so far, or only the
        new ones under --incremental-streaming-output), then `data: [DONE]`."""
        ids: list[int] = []
        last: dict = {}
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else error
                raise _HTTPStatus(int(error.get("code", 400)) if isinstance(error, dict) else 400, str(message))
            chunk_ids = [int(i) for i in chunk.get("output_ids") or []]
            new = chunk_ids if self.incremental else chunk_ids[len(ids):]
            ids = ids + new if self.incremental else chunk_ids
            if new:
                on_ids(new)
            last = chunk
        return {**last, "output_ids": ids}

    def _refused(self, status: int, message: str) -> SGLangError:
        """SGLang's error answer, with what to change."""
        lowered = message.lower()
        if "hidden states" in lowered or "hidden_states" in lowered:
            return SGLangError(
                f"SGLang server at {self.url} does not return hidden states ({status}: {message}). Restart it with "
                f"--enable-return-hidden-states ({launch_hint()}).")
        if "lora" in lowered:
            return SGLangError(
                f"SGLang server at {self.url} has no LoRA adapter '{self.lora}' ({status}: {message}). Load it "
                f"(--enable-lora --lora-paths {self.lora}=PATH) or set `lora: merged` and serve the adapter merged "
                "into its base.")
        return SGLangError(f"SGLang server at {self.url} refused the request ({status}: {message}).")


class _HTTPStatus(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def adapter_digest(adapter_dir: str | Path) -> str:
    """A short hash of the adapter files a merged export is made of."""
    digest = hashlib.sha256()
    for name in _ADAPTER_FILES:
        file = Path(adapter_dir) / name
        if file.is_file():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:24]


class SGLangEngine:
    """The requests of a turn (see the module docstring), for one adapter's heads."""

    def __init__(self, client: SGLangClient, hidden_size: int, adapter_dir: str | Path, state_pass: str = "split"):
        self.client = client
        self.hidden_size = hidden_size
        self.adapter_dir = Path(adapter_dir)
        self.state_pass_mode = state_pass
        self._checked: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.client.url

    def check(self) -> dict[str, Any]:
        """Once per engine (again after a failure): the server's version and flags, and
        whether it serves this adapter's merged export. What it found goes into meta."""
        with self._lock:
            if self._checked is None:
                self._checked = self._check()
            return self._checked

    def _check(self) -> dict[str, Any]:
        info = self.client.server_info()
        found: dict[str, Any] = {"version": "unknown"}
        if info is not None:
            version = info.get("version")
            found["version"] = str(version) if version is not None else "unknown"
            parsed = parse_version(version)
            if parsed is not None and parsed < MIN_VERSION:
                raise SGLangError(
                    f"SGLang server at {self.url} runs SGLang {version}; the sglang engine needs "
                    f"{'.'.join(map(str, MIN_VERSION))} or newer (checked with {CHECKED_VERSION}): older versions can "
                    "return another request's hidden states when a batch mixes requests with radix-cache hits. "
                    "Upgrade SGLang.")
            enabled = _find_key(info, "enable_return_hidden_states")
            mode = _find_key(info, "return_hidden_states_mode")
            if enabled is False and mode in (None, "last"):
                what = "--return-hidden-states-mode last, which" if mode == "last" else "without hidden states, which"
                raise SGLangError(
                    f"SGLang server at {self.url} was started {what} the HTTP API cannot ask for here. Restart it "
                    f"with --enable-return-hidden-states ({launch_hint()}).")
            self.client.incremental = bool(_find_key(info, "incremental_streaming_output"))
            if _find_key(info, "disable_radix_cache"):
                found["note"] = "radix cache disabled: the reply recomputes the prompt pass"
        if self.client.lora is None:
            found.update(self._check_export())
        else:
            found["lora"] = self.client.lora
        return found

    def _check_export(self) -> dict[str, Any]:
        """Whether the served model is the merged export of this adapter, where the model
        path the server reports can be read here."""
        info = self.client.model_info() or {}
        model_path = info.get("model_path")
        if not model_path:
            return {"served_model": "unknown", "adapter_check": "unverified"}
        marker = Path(str(model_path)) / EXPORT_FILE
        try:
            exported = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"served_model": model_path, "adapter_check": "unverified"}
        if exported.get("adapter_digest") != adapter_digest(self.adapter_dir):
            raise SGLangError(
                f"SGLang server at {self.url} serves {model_path}, a merged export of adapter "
                f"{exported.get('adapter')}, not of {self.adapter_dir}. Export this adapter (python -m "
                f"persona_agents.engines.sglang_client export {self.adapter_dir} OUT) and serve that.")
        return {"served_model": model_path, "adapter_check": "export of this adapter"}

    # -- a turn --------------------------------------------------------------------------------

    def state_pass(self, ids_through_state: Sequence[int]) -> tuple[list[float], dict[str, Any]]:
        """The hidden state of the last id (`<STATE>`) and what the requests reported."""
        self.check()
        ids = list(ids_through_state)
        greedy_one = {"max_new_tokens": 1, "temperature": 0.0}
        start = time.perf_counter()
        requests, earlier_cached = 1, None
        if self.state_pass_mode == "split" and len(ids) > 1:
            # Everything before <STATE> first, so the request with hidden states computes one token.
            earlier_cached = self.client.generate(ids[:-1], greedy_one).cached_tokens
            requests = 2
        result = self.client.generate(ids, greedy_one, return_hidden_states=True)
        row, rows = self._state_row(result)
        meta = {"requests": requests, "prompt_tokens": result.prompt_tokens,
                "cached_tokens": result.cached_tokens if earlier_cached is None else earlier_cached,
                "hidden_rows": rows, "ms": round((time.perf_counter() - start) * 1000, 1)}
        return row, meta

    def _state_row(self, result: GenerateResult) -> tuple[list[float], int]:
        states = result.hidden_states
        if not states:
            raise SGLangError(
                f"SGLang server at {self.url} answered without hidden states: restart it with "
                f"--enable-return-hidden-states ({launch_hint()}).")
        prompt_part = states[0]
        rows = prompt_part if prompt_part and isinstance(prompt_part[0], list) else [prompt_part]
        computed = result.prompt_tokens - result.cached_tokens
        if not rows or not rows[-1] or len(rows) > max(computed, 1):
            raise SGLangError(
                f"SGLang server at {self.url} returned {len(rows)} prompt hidden-state rows for a pass that computed "
                f"{computed} of {result.prompt_tokens} tokens: the rows cannot be matched to the prompt. Use SGLang "
                f"{'.'.join(map(str, MIN_VERSION))} or newer (checked: {CHECKED_VERSION}).")
        row = rows[-1]
        if len(row) != self.hidden_size:
            raise SGLangError(
                f"SGLang server at {self.url} returns hidden states of size {len(row)}, but the heads of adapter "
                f"{self.adapter_dir} read size {self.hidden_size}: the server serves another model. Serve the adapter "
                f"merged into its base (python -m persona_agents.engines.sglang_client export {self.adapter_dir} "
                "OUT, then --model-path OUT).")
        return [float(v) for v in row], len(rows)

    def reply(self, ids: Sequence[int], sampling_params: dict[str, Any],
              on_ids: Callable[[list[int]], None] | None = None) -> tuple[list[int], dict[str, Any]]:
        """The reply's ids after `ids` (the prompt and the decision), and what SGLang reported."""
        self.check()
        result = self.client.generate(ids, sampling_params, on_ids=on_ids)
        return result.output_ids, {"prompt_tokens": result.prompt_tokens, "cached_tokens": result.cached_tokens,
                                   "completion_tokens": result.completion_tokens,
                                   "finish_reason": result.finish_reason, "ms": round(result.ms, 1)}


class SGLangRemoteEngine:
    """`sglang` behind the engine contract (engines/contract.py): the prompt pass up to
    `<STATE>` on the server, the verdict here, then the reply on the server, which finds
    the prompt pass's tokens in its radix cache. What SGLang reported is `meta.sglang`."""

    name = "sglang"

    def __init__(self, remote: SGLangEngine, tokenizer):
        self.remote = remote
        self.tokenizer = tokenizer

    @property
    def url(self) -> str:
        return self.remote.url

    def run(self, request):
        import torch

        from .contract import EngineResult, verdict_ids

        ids = list(request.prompt_ids)
        meta: dict[str, Any] = {}
        state = None
        if request.state_index is not None:
            row, meta["prompt_pass"] = self.remote.state_pass(ids[: request.state_index + 1])
            state = torch.tensor(row, dtype=torch.float32)
        meta.update(self.remote.check())
        continuation = ids
        if request.after_prefill is not None:
            extra = verdict_ids(request.after_prefill(state))
            if extra is None:
                return EngineResult([], state, {"sglang": {"url": self.url, **meta}})
            continuation = ids + extra
        tok = self.tokenizer
        stops = [*request.eos_ids, *(tok.convert_tokens_to_ids(m) for m in request.stop_markers)]
        stops = [t for t in stops if isinstance(t, int) and t != tok.unk_token_id]
        new_ids, meta["reply"] = self.remote.reply(continuation, sampling_params(request.sampling, request.seed, stops),
                                                   request.on_ids)
        return EngineResult(list(new_ids), state, {"sglang": {"url": self.url, **meta}})


def sampling_params(settings, seed: int, stop_ids: Sequence[int]) -> dict[str, Any]:
    """SGLang `sampling_params` from generation settings (a persona's, or a request's). Markers stop the reply
    by token id (they are single special tokens of the adapter's tokenizer), which also
    works on a server started with --skip-tokenizer-init; temperature 0 is greedy."""
    return {
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "repetition_penalty": settings.repetition_penalty,
        "stop_token_ids": sorted(set(stop_ids)),
        "skip_special_tokens": False,
        "sampling_seed": seed,
    }


def load_remote_bundle(adapter_dir: str | Path, expected_flags: Sequence[str] | None = None):
    """The parts of an adapter a remote engine needs here: its tokenizer, heads and
    metadata (an `AdapterBundle` with no model); no base weights are read."""
    from ..errors import AdapterError
    from ..fastpath.lean_tokenizer import LeanTokenizer, lean_tokenizer_reason
    from ..markers import section_markers
    from ..multihead.artifacts import AdapterBundle, check_flags, load_heads, read_metadata

    path = Path(adapter_dir)
    meta = read_metadata(path)
    check_flags(meta, expected_flags, path)
    if lean_tokenizer_reason(path) is None:  # no transformers import where the tokenizer allows
        tokenizer: Any = LeanTokenizer(path)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    vocab = tokenizer.get_vocab()
    missing = [m for m in section_markers(int(meta["prompt_format_version"])) if m not in vocab]
    if missing:
        raise AdapterError(f"{path}: the tokenizer lacks the prompt markers {', '.join(missing)}; retrain the adapter.")
    return AdapterBundle(path=path, model=None, tokenizer=tokenizer, heads=load_heads(path, meta), meta=meta)


def export_merged(adapter_dir: str | Path, out_dir: str | Path, model_ref: str | None = None,
                  dtype: str = "bfloat16") -> Path:
    """Write the adapter merged into its base as a Hugging Face checkpoint SGLang serves
    (`--model-path OUT`): weights (merged in float32, then saved in `dtype`), config,
    generation config, the adapter's tokenizer (prompt markers included) and
    `persona_agents_export.json`, which the step compares with its adapter."""
    import torch

    from .. import __version__
    from ..multihead.artifacts import load_adapter

    out = Path(out_dir)
    bundle = load_adapter(adapter_dir, model_ref, "float32", merge=True, lean=False)
    model = bundle.model if dtype == "float32" else bundle.model.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    bundle.tokenizer.save_pretrained(out)
    record = {
        "adapter": str(Path(adapter_dir).resolve()),
        "adapter_digest": adapter_digest(adapter_dir),
        "base": bundle.meta["base"]["name"],
        "hidden_size": bundle.heads.config.hidden_size,
        "vocab_size": len(bundle.tokenizer),
        "prompt_format_version": bundle.prompt_version,
        "dtype": dtype,
        "persona_agents_version": __version__,
    }
    (out / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m persona_agents.engines.sglang_client",
        description="Tools for serving a persona-agents adapter with SGLang (engine: sglang).")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write the adapter merged into its base, for --model-path")
    export.add_argument("adapter", help="the adapter folder (written by `persona-agents train`)")
    export.add_argument("out", help="the folder to write")
    export.add_argument("--model", default=None, help="the base model (default: the adapter's)")
    export.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    out = export_merged(args.adapter, args.out, args.model, args.dtype)
    print(f"wrote {out}\nserve it with: {launch_hint(str(out))}")
    return 0


if __name__ == "__main__":  # pragma: no cover - a command line
    raise SystemExit(main())
