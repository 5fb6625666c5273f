"""`transformers` (generate): the NPC's reply from any transformers causal LM.

The default model is the embedded SmolLM2-135M-Instruct (converted once into a cached
checkpoint; see persona_agents.models). The reply ends at the model's end-of-turn token
or at any prompt marker, and never contains markers. Sampling is seeded per turn, so
the same seed and the same conversation give the same reply.
"""

from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import Field

from persona_agents.hookspecs import hookimpl
from persona_agents.markers import neutralize, strip_markers
from persona_agents.models import EMBEDDED_MODEL
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


class TransformersGenerator(Step):
    name = "transformers"
    stage = "generate"
    description = "Generate the reply with a transformers causal LM (default: the embedded SmolLM2-135M-Instruct)."

    class Options(StepOptions):
        model: str = Field(EMBEDDED_MODEL, description="Hugging Face model id, local checkpoint path, or 'embedded'.")
        dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field("float32", description="Weights dtype.")

    def warm_up(self):
        self.loaded = self._load()
        tok = self.loaded.tokenizer
        self._special = tuple(dict.fromkeys([*tok.all_special_tokens, *tok.get_added_vocab()]))
        self._eos_ids = self._end_of_turn_ids(tok, self.loaded.model)
        # Building stop-string tables scans the whole vocabulary (about 40 ms here), so
        # build them once per set of markers rather than on every generate call.
        self._stop_criteria: dict[tuple[str, ...], object] = {}

    def _stopping_criteria(self, markers: tuple[str, ...]):
        from transformers import StoppingCriteriaList
        from transformers.generation.stopping_criteria import StopStringCriteria

        if markers not in self._stop_criteria:
            self._stop_criteria[markers] = StopStringCriteria(self.loaded.tokenizer, list(markers))
        return StoppingCriteriaList([self._stop_criteria[markers]])

    def _load(self):
        """The shared LoadedModel this step generates with."""
        return self.runtime.models.get(self.options.model, self.options.dtype)

    @staticmethod
    def _end_of_turn_ids(tok, model) -> list[int]:
        ids = model.generation_config.eos_token_id
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
                {"role": m["role"], "content": neutralize(m["content"], self._special) if m["role"] != "system" else m["content"]}
                for m in prompt.messages
            ]
            return tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
        return tok(prompt.text, return_tensors="pt")

    def generation_kwargs(self, turn) -> dict:
        """generate() arguments from the persona's settings (shared with subclasses)."""
        settings, prompt = self.persona.generation, turn.prompt
        tok = self.loaded.tokenizer
        kwargs = dict(
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.temperature > 0,
            repetition_penalty=settings.repetition_penalty,
            eos_token_id=self._eos_ids,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else self._eos_ids[0],
        )
        if settings.temperature > 0:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        if prompt.stop_markers:
            kwargs.update(stopping_criteria=self._stopping_criteria(tuple(prompt.stop_markers)))
        return kwargs

    def turn_seed(self, turn) -> int:
        seed = turn.seed if turn.seed is not None else self.persona.generation.seed
        return seed if seed is not None else random.SystemRandom().randrange(2**31)

    def generate_ids(self, turn, inputs, seed: int):
        """Run generate for one turn (seeded, streamed when a sink is set):
        (the new token ids, whatever `_generate` hands to `_finish`)."""
        import torch

        kwargs = self.generation_kwargs(turn)
        sink = current_sink()
        if sink is not None:
            kwargs["streamer"] = MarkerSafeStreamer(
                self.loaded.tokenizer, sink, (*turn.prompt.stop_markers, *self._special), inputs["input_ids"].shape[1]
            )
        with self.loaded.lock, torch.inference_mode():
            torch.manual_seed(seed)
            output, extra = self._generate(inputs, kwargs)
        sequences = output.sequences if hasattr(output, "sequences") else output
        return sequences[0, inputs["input_ids"].shape[1]:].tolist(), extra

    def run(self, turn):
        seed = self.turn_seed(turn)
        inputs = self._encode(turn.prompt)
        new_ids, extra = self.generate_ids(turn, inputs, seed)
        text, finished = self._clean(self.loaded.tokenizer, new_ids, turn.prompt.stop_markers)
        generation = Generation(text=text, model=self.loaded.name, new_tokens=len(new_ids), finished=finished)
        turn = turn.replace(generation=generation).with_meta(model=self.loaded.name, seed=seed, new_tokens=len(new_ids))
        return self._finish(turn, extra)

    def _generate(self, inputs, kwargs):
        """`model.generate` (under the model's lock): (output ids, anything `_finish` needs).
        Subclasses wrap it, e.g. to read a hidden state during the prefill."""
        return self.loaded.model.generate(**inputs, **kwargs), None

    def _finish(self, turn, extra):
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
