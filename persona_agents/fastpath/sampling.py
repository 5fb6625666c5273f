"""Choosing the next token, the way transformers `generate` does, one sequence at a time.

The order and the arithmetic follow transformers' logits processors, so greedy decoding
gives the reference path's tokens: repetition penalty over every token so far (prompt
included), then temperature, top-k (transformers' default 50) and top-p, then a draw.

Each sequence draws from its own `torch.Generator` seeded with the turn's seed, so a
turn's reply depends on its seed alone, not on which other turns shared its batch (the
reference path seeds the global generator under a lock instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


class TokenChooser:
    """Next-token choice for one sequence; remembers which tokens it has seen."""

    def __init__(self, settings: SamplingSettings, prompt_ids, seed: int, vocab_size: int):
        self.settings = settings
        self._seen = torch.zeros(vocab_size, dtype=torch.bool)
        self._seen[torch.as_tensor(list(prompt_ids), dtype=torch.long)] = True
        self._generator = None
        if not settings.greedy:
            self._generator = torch.Generator().manual_seed(int(seed))

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from one row of logits (the vocabulary may be wider than the
        tokenizer's; extra rows are never seen, as in the reference path)."""
        s = self.settings
        scores = logits.float().clone()
        if s.repetition_penalty != 1.0:
            seen = self._seen.nonzero().squeeze(1)
            picked = scores[seen]
            scores[seen] = torch.where(picked < 0, picked * s.repetition_penalty, picked / s.repetition_penalty)
        if s.greedy:
            token = int(scores.argmax())
        else:
            token = self._sample(scores)
        self._seen[token] = True
        return token

    def _sample(self, scores: torch.Tensor) -> int:
        s = self.settings
        scores = scores / s.temperature
        # Top-k first, then top-p among those k: the same distribution as filtering the
        # whole vocabulary (everything outside the k has probability 0 either way), without
        # sorting 49k logits on every token.
        k = s.top_k if 0 < s.top_k < scores.shape[0] else scores.shape[0]
        values, indices = torch.topk(scores, k)  # descending
        if s.top_p < 1.0:
            ascending = values.flip(0)
            remove = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - s.top_p)
            remove[-1] = False
            values = values.masked_fill(remove.flip(0), float("-inf"))
        choice = torch.multinomial(values.softmax(dim=-1), 1, generator=self._generator)
        return int(indices[choice])
