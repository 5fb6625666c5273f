"""Examples -> token ids and targets, and batches of them.

A training sequence is the sectioned prompt (rendered by `render_sectioned`, tokenized
exactly as the generate step tokenizes it) + " " + the reply + the end token. Labels are
-100 on every prompt token, so the LM loss is on the reply (and its end) only. The index
of the prompt's `<STATE>` token is where the heads read. In prompt version 2 the game's
decision on the gold events (`gold_decision`: the persona's rules applied to them, with
their payloads and refusals, as inference applies them to the heads' proposals) sits
between `<STATE>` and `<NPC>`, so the reply learns to agree with what the game decided.

Too long for `max_length`? Older history turns are dropped first (the same choice
`history_turns` makes at inference), then the reply's tail; a prompt that does not fit
even without history is an error naming the record. When scoring (`strict=False`:
evaluation, calibration) such a record is kept whole instead, its sequence longer than
`max_length`: inference has no length limit, so a long validation turn must be scored,
not refused after an hour of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import TrainingDataError
from ..prompt_format import decides_first, decision_of_turn, render_sectioned
from .data import Example

STATE_TOKEN = "<STATE>"
#: Reply tokens that must fit beside the prompt before history is trimmed further.
_MIN_REPLY_TOKENS = 24


def marker_id(tokenizer, marker: str = STATE_TOKEN) -> int:
    token_id = tokenizer.convert_tokens_to_ids(marker)
    if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id or token_id is None:
        raise TrainingDataError([f"tokenizer: {marker} is not a token. Fix: add the prompt markers as special "
                                 "tokens (persona_agents.multihead.modeling.add_markers)"])
    return token_id


def end_token_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise TrainingDataError(["tokenizer: no end-of-sequence token. Fix: use a tokenizer with an eos token"])
    return tokenizer.eos_token_id


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt, exactly as the generate step encodes it."""
    return tokenizer(text)["input_ids"]


def gold_decision(example: Example) -> str:
    """Version 2's decision text for a training example: the persona's rules applied to
    the gold events (fired ones with their payloads, refused ones with their reasons),
    and the writers' lines it shows (grounding.py)."""
    from .grounding import decided_turn

    return decision_of_turn(decided_turn(example), example.grounding)


def render_training_prompt(example: Example, history_turns: int, version: int) -> str:
    """The prompt text a training sequence starts with (the reply follows)."""
    text = render_sectioned(example.turn, history_turns, version)
    return text + gold_decision(example) if decides_first(version) else text


def encode_example(example: Example, tokenizer, flags: Sequence[str], max_length: int,
                   history_turns: int, strict: bool = True, prompt_version: int = 1) -> dict[str, Any]:
    state_id = marker_id(tokenizer)
    reply = tokenizer(" " + example.response, add_special_tokens=False)["input_ids"] + [end_token_id(tokenizer)]
    prompt: list[int] = []
    for turns in range(min(history_turns, len(example.turn.history)), -1, -1):
        prompt = encode_prompt(tokenizer, render_training_prompt(example, turns, prompt_version))
        if len(prompt) + min(len(reply), _MIN_REPLY_TOKENS) <= max_length:
            break
    if len(prompt) >= max_length and strict:
        raise TrainingDataError([f"{example.source}: prompt: {len(prompt)} tokens even without history, "
                                 f"more than max_length {max_length}. Fix: raise --max-length or shorten the persona"])
    if len(prompt) < max_length:
        reply = reply[: max_length - len(prompt)]
    state_index = len(prompt) - 1 - prompt[::-1].index(state_id)
    return {
        "input_ids": prompt + reply,
        "labels": [-100] * len(prompt) + reply,
        "state_index": state_index,
        "delta": [float(example.delta[0]), float(example.delta[1])],
        "flags": [1.0 if name in example.flags else 0.0 for name in flags],
    }


class EncodedDataset(torch.utils.data.Dataset):
    """Examples encoded once up front (tokenizing is cheap next to a CPU training step)."""

    def __init__(self, examples: Sequence[Example], tokenizer, flags: Sequence[str], max_length: int,
                 history_turns: int, strict: bool = True, prompt_version: int = 1):
        self.examples = list(examples)
        self.features = [encode_example(e, tokenizer, flags, max_length, history_turns, strict, prompt_version)
                         for e in self.examples]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


@dataclass
class MultiHeadCollator:
    """Pads a list of encoded examples on the right into one batch of tensors."""

    pad_token_id: int

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids, attention, labels = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            input_ids.append(f["input_ids"] + [self.pad_token_id] * pad)
            attention.append([1] * len(f["input_ids"]) + [0] * pad)
            labels.append(f["labels"] + [-100] * pad)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "state_index": torch.tensor([f["state_index"] for f in features], dtype=torch.long),
            "delta": torch.tensor([f["delta"] for f in features], dtype=torch.float32),
            "flags": torch.tensor([f["flags"] for f in features], dtype=torch.float32),
        }
