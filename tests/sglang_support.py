"""A loopback stand-in for an SGLang server (native HTTP API), for tests of `engine: sglang`.

`FakeSGLang` serves `/server_info`, `/model_info` and `/generate` from a responder, on
127.0.0.1 in a thread, and keeps every request it was sent. It refuses what SGLang
0.5.23's HTTP gate refuses (api/v1/api_types.py): unknown `sampling_params` keys, a
`return_hidden_states` that is not a boolean. Two responders:

- `Replay`: the recorded exchange in tests/data/sglang/exchange.json, answered by what
  the request asks for (a prompt pass with hidden states, the part before <STATE>, the
  reply, streamed or not);
- `ModelBacked`: a transformers model run here the way SGLang runs it (greedy; the
  decoder's output after its final norm as hidden states, one row per prompt token not
  found in a radix-like cache of earlier requests; `cached_tokens` counted the same way).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "sglang"
SEED = Path(__file__).resolve().parent.parent / "examples" / "seed_game"


def seed_game(root: Path, **options: Any) -> Path:
    """A copy of the seed game whose elder runs the recorded turn's settings on `options`."""
    import shutil

    import yaml

    shutil.copytree(SEED, root, symlinks=True)
    defaults = root / "npcs" / "_defaults.yaml"
    data = yaml.safe_load(defaults.read_text())
    data["generation"].update(temperature=0.0, max_new_tokens=16, repetition_penalty=1.0)
    data["pipeline"]["postprocess"] = ["game_rules"]
    data["pipeline"]["generate"][0]["options"].update(options)
    defaults.write_text(yaml.safe_dump(data, sort_keys=False))
    return root / "npcs"

#: SGLang 0.5.23, python/sglang/api/v1/api_types.py: `_FIELDS_SamplingParams` (unknown keys rejected).
SAMPLING_PARAMS_FIELDS = (
    "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k", "min_p",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens", "n", "json_schema", "regex",
    "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim",
    "stream_interval", "logit_bias", "sampling_seed", "custom_params", "beam_width", "watermark", "choice")


def recording() -> dict[str, Any]:
    return json.loads((DATA / "exchange.json").read_text(encoding="utf-8"))


def gate_error(body: dict) -> str | None:
    """What SGLang 0.5.23's JSON contract gate says of a /generate body (None: admitted)."""
    params = body.get("sampling_params") or {}
    for key in params:
        if key not in SAMPLING_PARAMS_FIELDS:
            return f"unknown field `{key}`, expected one of " + ", ".join(f"`{f}`" for f in SAMPLING_PARAMS_FIELDS)
    hidden = body.get("return_hidden_states")
    if hidden is not None and not isinstance(hidden, bool):
        return f"invalid type: string \"{hidden}\", expected a value or an array of values for BoolOrList"
    if not isinstance(body.get("input_ids"), list) or not all(isinstance(i, int) for i in body["input_ids"]):
        return "input_ids: expected a list of integers"
    return None


class FakeSGLang:
    """`url`, `requests` (method, path, body), `close()`; `responder.respond(method, path,
    body)` returns (status, JSON body) or (200, [SSE data payloads]) for a stream."""

    def __init__(self, responder):
        self.responder = responder
        self.requests: list[tuple[str, str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((method, self.path, body))
                if method == "POST" and self.path == "/generate":
                    error = gate_error(body)
                    if error is not None:
                        return self._json(400, {"error": error})
                status, payload = fake.responder.respond(method, self.path, body)
                if isinstance(payload, list):
                    self.send_response(status)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for item in payload:
                        data = item if isinstance(item, str) else json.dumps(item)
                        self.wfile.write(b"data: " + data.encode() + b"\n\n")
                    return None
                return self._json(status, payload)

            def _json(self, status: int, payload: Any):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def generate_requests(self) -> list[dict]:
        return [body for method, path, body in self.requests if path == "/generate"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _not_found(path: str):
    return 404, {"detail": "Not Found"}


class Replay:
    """The recorded exchange; `overrides` replaces answers by name (e.g. an error body)."""

    def __init__(self, data: dict[str, Any] | None = None, **overrides):
        self.data = data or recording()
        self.overrides = overrides

    def _recorded(self, name: str):
        if name in self.overrides:
            return self.overrides[name]
        entry = self.data["exchange"][name]
        return entry["response"]["status"], entry["response"]["body"]

    def respond(self, method: str, path: str, body: Any):
        if method == "GET" and path in ("/server_info", "/model_info"):
            return self._recorded(path.strip("/"))
        if method != "POST" or path != "/generate":
            return _not_found(path)
        if body.get("return_hidden_states"):
            return self._recorded("state_pass")
        if body.get("stream"):
            return self._recorded("reply_stream")
        if "stop_token_ids" in body["sampling_params"]:
            return self._recorded("reply")
        return self._recorded("before_state")


class ModelBacked:
    """SGLang's answers computed with a local transformers causal LM (greedy decoding)."""

    def __init__(self, model, version: str = "0.5.23", model_path: str = "/models/merged", eos_ids=()):
        self.model = model.eval()
        self.version = version
        self.model_path = model_path
        self.eos_ids = set(eos_ids)
        self.seen: list[list[int]] = []  # what a radix cache would hold: earlier requests' tokens
        self.lock = threading.Lock()

    def _cached(self, ids: list[int]) -> int:
        best = 0
        for seq in self.seen:
            n = 0
            for a, b in zip(seq, ids):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        return min(best, len(ids) - 1)  # the last prompt token is always computed

    def respond(self, method: str, path: str, body: Any):
        if method == "GET" and path == "/server_info":
            return 200, {"version": self.version, "enable_return_hidden_states": True,
                         "return_hidden_states_mode": "full", "disable_radix_cache": False,
                         "incremental_streaming_output": False, "model_path": self.model_path}
        if method == "GET" and path == "/model_info":
            return 200, {"model_path": self.model_path, "is_generation": True}
        if method != "POST" or path != "/generate":
            return _not_found(path)
        with self.lock:
            return self._generate(body)

    def _generate(self, body: dict):
        import torch

        ids, params = list(body["input_ids"]), body["sampling_params"]
        cached = self._cached(ids)
        decoder, lm_head = self.model.get_decoder(), self.model.get_output_embeddings()
        stops = set(params.get("stop_token_ids") or ()) | self.eos_ids
        out_ids: list[int] = []
        with torch.inference_mode():
            out = decoder(input_ids=torch.tensor([ids]), use_cache=True)
            hidden = out.last_hidden_state[0]
            name = "cache" if "cache" in out.keys() else "past_key_values"  # transformers 5 / 4.x
            cache = out[name]
            logits = lm_head(hidden[-1:])[0]
            finish: dict[str, Any] = {"type": "length", "length": params["max_new_tokens"]}
            while len(out_ids) < params["max_new_tokens"]:
                token = int(logits.argmax())
                out_ids.append(token)
                if token in stops:
                    finish = {"type": "stop", "matched": token}
                    break
                if len(out_ids) == params["max_new_tokens"]:
                    break
                step = decoder(input_ids=torch.tensor([[token]]), use_cache=True, **{name: cache})
                cache = step[name]
                logits = lm_head(step.last_hidden_state[0, -1:])[0]
        self.seen.append(ids + out_ids[:-1])
        meta: dict[str, Any] = {"id": f"req-{len(self.seen)}", "finish_reason": finish, "prompt_tokens": len(ids),
                                "weight_version": "default", "num_retractions": 0, "reasoning_tokens": 0,
                                "completion_tokens": len(out_ids), "cached_tokens": cached}
        if body.get("return_hidden_states"):
            meta["hidden_states"] = [hidden[cached:].tolist()]
        final = {**meta, "e2e_latency": 0.01}  # set once a request has finished
        if body.get("stream"):
            chunks = [{"text": None, "output_ids": out_ids[: i + 1], "meta_info": {**meta, "finish_reason": None,
                                                                                   "completion_tokens": i + 1}}
                      for i in range(len(out_ids) - 1)]
            chunks.append({"text": "", "output_ids": out_ids, "meta_info": final})
            return 200, [*chunks, "[DONE]"]
        return 200, {"text": "", "output_ids": out_ids, "meta_info": final}
