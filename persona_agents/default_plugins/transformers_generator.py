"""`transformers` (generate): the NPC's reply from any transformers causal LM.

The default model is the embedded SmolLM2-135M-Instruct (converted once into a cached
checkpoint; see persona_agents.models). The reply ends at the model's end-of-turn token
or at any prompt marker, and never contains markers. Sampling is seeded per turn, so
the same seed and the same conversation give the same reply.

Two engines run the model (option `engine`; the contract: persona_agents/engines/contract.py):
- `fast` (what `auto` picks for llama-family float32 models): the lean decoder of
  `persona_agents.fastpath`, with quantized decode steps and continuous batching of
  concurrent turns on the process's compute thread;
- `transformers`: the model as transformers runs it, for every model transformers can
  load, on any device (what `auto` falls back to, saying why in the turn's meta);
  concurrent turns run as one batch (persona_agents/engines/transformers_engine.py).
With `decode_precision: float32` the fast engine's greedy replies are transformers'
tokens; int4/int8 decode steps change some words, measured in `bench/vs_llamacpp.py`.
The multihead step adds the state heads to the engine, and a third engine, `sglang`: a
remote SGLang server (multihead_generator.py).
"""

from __future__ import annotations

import random
import re
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from persona_agents.engines.contract import EngineRequest, EngineResult, Sampling
from persona_agents.errors import StepError
from persona_agents.fastpath.compute import on_compute_thread
from persona_agents.hookspecs import hookimpl
from persona_agents.markers import neutralize, strip_markers
from persona_agents.models import DEVICE_PATTERN, EMBEDDED_MODEL
from persona_agents.prompt_format import decides_first, render_decision
from persona_agents.steps import Step, StepOptions
from persona_agents.streaming import MarkerSafeStreamer, current_sink
from persona_agents.turn import Generation

NO_HEADS_NOTE = "no state heads loaded: deltas are zero and no flags fire"
_SENTENCE_END = re.compile(r"[.!?…](?:[\"')\]]*)(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """Cut an unfinished reply after its last complete sentence, if it has one."""
    ends = list(_SENTENCE_END.finditer(text))
    if ends and ends[-1].end() >= len(text) * 0.3:
        return text[: ends[-1].end()]
    return text


class EngineOptions(StepOptions):
    """Options of the generate steps that choose how the model runs (see the module docstring)."""

    engine: Literal["auto", "fast", "transformers"] = Field(
        "auto", description="`fast`: the lean decoder with batching (llama-family float32 models); "
        "`transformers`: transformers generate; `auto`: fast where the model allows, else transformers.")
    decode_precision: Literal["int4", "int8", "float32"] = Field(
        "int4", description="Fast engine: weights of single-sequence decode steps (float32 = the reference's "
        "greedy tokens; int4 = fastest; several sequences decode in int8 unless this is float32).")
    prefill_precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="Fast engine: weights of the prompt pass, which the state heads read "
        "(float32 = the reference's head outputs).")
    prefix_cache_tokens: int = Field(
        4096, ge=0, description="Fast engine: prompt prefix tokens whose cache is kept across turns, all NPCs of "
        "the model together (about 46 KB each for the embedded model); 0: none. Prompts that open with what is "
        "the same on every turn (sectioned version 2) skip that part of the prompt pass; version 3 also skips "
        "the conversation up to its newest exchange.")
    prefill_chunk: int = Field(
        128, ge=1, description="Fast engine: the prompt pass runs in pieces of this many tokens, so a long "
        "prompt does not hold up turns that arrive meanwhile (the shortest prompt goes first).")
    device: str = Field(
        "cpu", pattern=DEVICE_PATTERN, description="Where the model runs: `cpu`, `cuda`, `cuda:N`, `mps`, or "
        "`auto` (a GPU when there is one, else the CPU). The fast engine is CPU-only: off the CPU, `engine: auto` "
        "runs transformers.")
    load_in_4bit: bool = Field(
        False, description="Engine transformers on CUDA: load the base in 4-bit NF4 (bitsandbytes), about a "
        "quarter of the float32 memory.")

    @model_validator(mode="after")
    def _fast_runs_on_the_cpu(self):
        if self.engine == "fast" and self.device != "cpu":
            raise ValueError(f"engine 'fast' runs on the CPU only, but device is '{self.device}'. Use engine: "
                             "transformers (or auto) to run on a GPU, or device: cpu.")
        return self


class TransformersGenerator(Step):
    name = "transformers"
    stage = "generate"
    #: Whether the step writes the game's decision into a version 2 prompt itself.
    decides = False
    description = "Generate the reply with a transformers causal LM (default: the embedded SmolLM2-135M-Instruct)."

    class Options(EngineOptions):
        model: str = Field(EMBEDDED_MODEL, description="Hugging Face model id, local checkpoint path, or 'embedded'; "
                           "a relative path resolves against the game folder (the NPC folder's parent).")
        dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field("float32", description="Weights dtype.")

    #: Options that name files, by kind, for path resolution and `npcs validate`:
    #: "folder" is always a path that must exist; "model" is a path where it is one
    #: (absolute, ./ ../ ~, or existing under the game folder), else a model id or keyword.
    path_options: ClassVar[dict[str, str]] = {"model": "model"}

    def warm_up(self):
        # Loading runs on the compute thread, like generation (see fastpath/compute.py).
        self.loaded = on_compute_thread(self._load)
        tok = self.loaded.tokenizer
        self._special = tuple(dict.fromkeys([*tok.all_special_tokens, *tok.get_added_vocab()]))
        self._eos_ids = self._end_of_turn_ids(tok, self.loaded.model)
        self.engine, self.engine_note = self._build_engine()

    def token_counter(self):
        tok = self.loaded.tokenizer
        return lambda text: len(tok(text)["input_ids"])

    def _load(self):
        """The shared LoadedModel this step generates with."""
        return self.runtime.models.get(self.runtime.model_ref(self.options.model), self.options.dtype,
                                       self._device(), self.options.load_in_4bit)

    def _device(self) -> str:
        """The option `device` resolved on this machine (a clear error if it has no such device)."""
        from persona_agents.errors import ModelLoadError
        from persona_agents.models import resolve_device

        opts: EngineOptions = self.options  # type: ignore[assignment]  # this step's Options
        try:
            return resolve_device(opts.device, opts.load_in_4bit)
        except ModelLoadError as exc:
            raise StepError(f"NPC '{self.persona.id}': generate step '{self.name}': {exc}") from exc

    def _low_rank(self) -> dict:
        """LoRA factors merged into the loaded model (kept apart by quantized decode weights)."""
        return {}

    def _build_engine(self):
        """(the engine that runs this step's model, a note on why `auto` chose it or None).
        Engines are shared by every NPC on the same loaded model, so their turns batch."""
        from persona_agents.engines.fast import FastEngine
        from persona_agents.engines.transformers_engine import TransformersEngine

        batch, note = self._fast_engine()
        if batch is not None:
            return FastEngine(batch, self.loaded.tokenizer, self.options.decode_precision), None
        model = self.loaded.model
        engine = self.runtime.models.shared(("transformers-engine", id(model)), lambda: TransformersEngine(self.loaded))
        return engine, note

    def _fast_engine(self):
        """(the shared BatchEngine, None) for the fast engine, or (None, why not)."""
        if self.options.engine in ("transformers", "sglang"):
            return None, f"engine: {self.options.engine}"
        device = str(getattr(self.loaded.model, "device", "cpu"))
        if device != "cpu" or self.options.load_in_4bit:
            return None, f"the model runs on {device}{' in 4-bit' if self.options.load_in_4bit else ''}; " \
                "the fast engine is CPU float32 only: using transformers"
        from persona_agents.fastpath.decoder import supports

        reason = supports(self.loaded.model)
        if reason is not None:
            if self.options.engine == "fast":
                raise StepError(
                    f"NPC '{self.persona.id}': engine 'fast' cannot run model '{self.loaded.name}': {reason}. "
                    "Use `engine: auto` or `engine: transformers` (or dtype float32).")
            return None, f"fast engine unavailable ({reason}); using transformers"
        opts = self.options
        batch = "float32" if opts.decode_precision == "float32" else "int8"
        key = ("fast-engine", id(self.loaded.model), opts.decode_precision, opts.prefill_precision,
               opts.prefill_chunk, opts.prefix_cache_tokens)

        def build():
            from persona_agents.fastpath.decoder import LeanDecoder
            from persona_agents.fastpath.engine import BatchEngine

            decoder = LeanDecoder(self.loaded.model, opts.decode_precision, self._low_rank(),
                                  prefill_weights=opts.prefill_precision, batch_weights=batch)
            return BatchEngine(decoder, vocab_size=decoder.lm_head.shape[0], prefill_chunk=opts.prefill_chunk,
                               prefix_cache_tokens=opts.prefix_cache_tokens)

        # On the compute thread, where `_load` takes the registry's lock too: holding that
        # lock here while waiting for the compute thread could deadlock with another NPC's
        # warm-up running there.
        return on_compute_thread(self.runtime.models.shared, key, build), None

    @staticmethod
    def _end_of_turn_ids(tok, model) -> list[int]:
        # No local model where a remote engine runs it: the tokenizer's end tokens.
        ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
        for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
            tid = tok.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != tok.unk_token_id and tid not in ids:
                ids.append(tid)
        if tok.eos_token_id is not None and tok.eos_token_id not in ids:
            ids.append(tok.eos_token_id)
        return ids

    def _encode(self, prompt):
        tok = self.loaded.tokenizer
        if prompt.format == "chat":
            # Defence in depth: prompt steps already neutralised request text, but only this
            # step knows the model's own special tokens.
            messages = [
                {"role": m["role"],
                 "content": neutralize(m["content"], self._special) if m["role"] != "system" else m["content"]}
                for m in prompt.messages
            ]
            return tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
        text = prompt.text or ""
        if decides_first(prompt.version or 1) and not self.decides:
            # Versions 2 and 3 leave the decision to the step that decides; without one, none.
            text += render_decision()
        return tok(text, return_tensors="pt")

    def sampling(self) -> Sampling:
        """How this NPC's replies are drawn (its persona's generation settings)."""
        s = self.persona.generation
        return Sampling(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                        repetition_penalty=s.repetition_penalty)

    def turn_seed(self, turn) -> int:
        seed = turn.seed if turn.seed is not None else self.persona.generation.seed
        return seed if seed is not None else random.SystemRandom().randrange(2**31)

    def engine_request(self, turn, prompt_ids: list[int], seed: int, reading) -> EngineRequest:
        """The engine's request for this turn; steps with heads add the `<STATE>` position and
        the decision (`reading` is what `_begin` returned)."""
        return EngineRequest(prompt_ids=prompt_ids, sampling=self.sampling(), seed=seed, eos_ids=self._eos_ids,
                             stop_markers=tuple(turn.prompt.stop_markers))

    def _begin(self, turn):
        """Per-turn state a step with heads keeps from the request to `_finish`; None here."""
        return None

    def run(self, turn):
        seed = self.turn_seed(turn)
        prompt_ids = self._encode(turn.prompt)["input_ids"][0].tolist()
        reading = self._begin(turn)
        request = self.engine_request(turn, prompt_ids, seed, reading)
        sink, streamer = current_sink(), None
        if sink is not None:
            import torch

            streamer = MarkerSafeStreamer(self.loaded.tokenizer, sink, (*turn.prompt.stop_markers, *self._special), 0)
            request.on_ids = lambda ids: streamer.put(torch.tensor(ids))
        result = self.engine.run(request)
        if streamer is not None:
            streamer.end()
        new_ids = result.new_ids
        text, finished = self._clean(self.loaded.tokenizer, new_ids, turn.prompt.stop_markers)
        generation = Generation(text=text, model=self.loaded.name, new_tokens=len(new_ids), finished=finished)
        if not new_ids:  # the game decided first, and a writer's line fits: nothing was decoded
            turn = turn.with_meta(speech="skipped: a writer's line fits the decision")
        turn = turn.replace(generation=generation).with_meta(
            model=self.loaded.name, seed=seed, new_tokens=len(new_ids), engine=self.engine.name,
            **({"engine_note": self.engine_note} if self.engine_note and self.options.engine == "auto" else {}),
            **result.meta)
        return self._finish(turn, result, reading)

    def _finish(self, turn, result: EngineResult, reading):
        """The finished turn (its generation set); this step has no state heads, and says so."""
        return turn.with_meta(state_heads=NO_HEADS_NOTE)

    def _clean(self, tok, new_ids: list[int], stop_markers) -> tuple[str, bool]:
        finished = bool(new_ids) and new_ids[-1] in self._eos_ids
        raw = tok.decode(new_ids, skip_special_tokens=False)
        cut = len(raw)
        for marker in (*stop_markers, *self._special):
            pos = raw.find(marker)
            if 0 <= pos < cut:
                cut, finished = pos, True
        text = strip_markers(raw[:cut], self._special).strip()
        if not finished:
            text = trim_to_sentence(text)
        return text, finished


@hookimpl
def register_steps(register):
    register(TransformersGenerator)
