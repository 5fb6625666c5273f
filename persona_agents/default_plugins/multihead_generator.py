"""`multihead` (generate): the reply plus deltas and flags from a trained adapter, in one run.

It loads the base model with the adapter merged, the state heads and their calibrated
thresholds (`persona-agents train` writes them; see `persona_agents/multihead/`), once
per process, shared by every NPC naming the same adapter. It needs the `sectioned`
prompt: the heads read the hidden state at its `<STATE>` marker.

One generate call does everything. On the fast engine (the default) the prefill keeps
the `<STATE>` row of the final norm itself. On the transformers engine a forward hook on the decoder
stack (whose output is the final norm's) keeps the `<STATE>` position's hidden state during the prefill, the
first forward of `generate`, which covers the whole prompt. The heads (a small MLP) then
run on that one vector, so there is no second pass over prompt and reply.

The generation carries the deltas, every flag's probability, and the flags whose
probability reaches their threshold; the pipeline's postprocess steps (game rules) then
decide what the game applies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from pydantic import Field

from persona_agents.errors import StepError
from persona_agents.fastpath.compute import on_compute_thread
from persona_agents.hookspecs import hookimpl
from persona_agents.models import LoadedModel
from persona_agents.streaming import current_decider
from persona_agents.turn import Deltas, Generation

from .transformers_generator import EngineOptions, TransformersGenerator

DEFAULT_ADAPTER = "training/adapters/smollm2-npc"


class MultiHeadGenerator(TransformersGenerator):
    name = "multihead"
    stage = "generate"
    description = "Reply, deltas and flags from a fine-tuned adapter with state heads, in one generate call."

    class Options(EngineOptions):
        adapter: str = Field(DEFAULT_ADAPTER, description="Adapter folder written by `persona-agents train`; a "
                             "relative path is resolved against the project root (the NPC folder's parent).")
        model: str | None = Field(None, description="Base model; default: the base the adapter was trained on.")
        dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field("float32", description="Weights dtype.")

    def adapter_path(self) -> Path:
        path = Path(self.options.adapter).expanduser()
        return path if path.is_absolute() else Path(self.runtime.npcs_dir).parent / path

    def _load(self) -> LoadedModel:
        from persona_agents.multihead.artifacts import load_adapter

        prompt_steps = [spec.name for spec in self.persona.pipeline.prompt]
        if "chat_template" in prompt_steps:
            raise StepError(
                f"NPC '{self.persona.id}': the multihead generate step needs the sectioned prompt (its heads read "
                "the <STATE> marker), but pipeline.prompt is chat_template. Set `prompt: [sectioned]`.")
        path = self.adapter_path()
        # The fast engine needs no transformers model: a start without it is seconds faster.
        lean = self.options.engine != "transformers"
        key = ("multihead", str(path.resolve()), self.options.model, self.options.dtype, lean)

        def build():
            bundle = load_adapter(path, self.options.model, self.options.dtype, lean=lean)
            # `meta.model` names the base, as for the plain step; `meta.adapter` the adapter.
            return bundle, LoadedModel(name=bundle.meta["base"]["name"], model=bundle.model, tokenizer=bundle.tokenizer)

        self.bundle, loaded = self.runtime.models.shared(key, build)
        self._state_id = self.bundle.tokenizer.convert_tokens_to_ids(self.bundle.meta.get("state_token", "<STATE>"))
        self._decoder = loaded.model.get_decoder()
        return loaded

    def run(self, turn):
        if turn.prompt.format != "sectioned":
            raise StepError(
                f"NPC '{self.persona.id}': the multihead generate step needs the sectioned prompt format, got "
                f"'{turn.prompt.format}'. Set `prompt: [sectioned]` in the persona's pipeline.")
        return super().run(turn)

    def _state_index(self, inputs) -> int:
        found = (inputs["input_ids"][0] == self._state_id).nonzero()
        if len(found) == 0:
            raise StepError("The prompt has no <STATE> marker token; the sectioned prompt step renders one.")
        return int(found[-1])

    def _low_rank(self) -> dict:
        return self.bundle.low_rank

    def _fast_keep_index(self, inputs) -> int:
        return self._state_index(inputs)

    def _fast_after_prefill(self, turn):
        # Decide, then speak: the heads read the <STATE> row as soon as the prompt pass has
        # run; the pipeline's decider applies the game's rules, sends the decision out and
        # says whether the model's words are still needed.
        decider = current_decider()
        if decider is None:
            return None
        empty = Generation(text="", model=self.loaded.name, new_tokens=0, finished=True)

        def after(kept):
            provisional = self._finish(turn.replace(generation=empty), self.bundle.heads(kept[None]))
            return decider(provisional)

        return after

    def _fast_extra(self, job):
        # The fast engine kept the <STATE> row of its prefill's final norm: the same vector
        # the hook below captures on the reference path.
        return on_compute_thread(self.bundle.heads, job.kept[None])

    def _generate(self, inputs, kwargs):
        index = self._state_index(inputs)
        captured = []

        def keep_state(module, args, output):
            if not captured:  # the prefill: the first forward, over the whole prompt
                hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
                captured.append(hidden[0, index].clone())

        handle = self._decoder.register_forward_hook(keep_state)
        try:
            output = self.loaded.model.generate(**inputs, **kwargs)
        finally:
            handle.remove()
        return output, self.bundle.heads(captured[0][None])

    def _finish(self, turn, heads):
        flags, thresholds = self.bundle.flags, self.bundle.thresholds
        probs = [round(float(p), 6) for p in heads.flag_probs[0]]
        trust, relationship = (round(float(d), 4) for d in heads.deltas[0])
        generation = dataclasses.replace(
            turn.generation,
            deltas=Deltas(trust=trust, relationship=relationship),
            flag_probs=dict(zip(flags, probs)),
            flags=tuple(name for name, p in zip(flags, probs) if p >= thresholds[name]),
        )
        return turn.replace(generation=generation).with_meta(
            adapter=self.options.adapter, thresholds_version=self.bundle.meta.get("thresholds_version"))


@hookimpl
def register_steps(register):
    register(MultiHeadGenerator)
