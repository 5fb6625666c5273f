"""Few-shot evidence for the state heads: the writers' example player lines, by meaning.

A persona's authored lines (`lines:`) carry example player lines (`examples`) and the
events the line goes with (`events`). How close the player's line comes to the examples
of each event is evidence the heads read beside the `<STATE>` vector (issue 26): an NPC
the model never saw is steered by a handful of examples its writer gave, with no
retraining, and a writer improves a new NPC by writing more of them.

For a vocabulary of E events the evidence is 2E + 2 numbers:

- for each event, the highest cosine similarity between the player's line and the
  examples of lines that go with that event (0 when the persona has none), then whether
  the persona has such examples at all (1/0);
- the same two for lines that fire nothing (small talk, refusals in words).

Sentences are embedded with the lore embedder (all-MiniLM-L6-v2 by default), already
loaded by the lore and authored-lines steps.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..persona import Persona


def evidence_size(num_events: int) -> int:
    return 2 * num_events + 2


def _key(text: str) -> str:
    return " ".join(text.lower().split())


class EventEvidence:
    """The example bank of one persona, for one event vocabulary."""

    def __init__(self, persona: Persona, events: Sequence[str], embedder):
        self.events = list(events)
        self.embedder = embedder
        texts: list[str] = []
        columns: list[int] = []  # event index, or len(events) for "no event"
        none = len(self.events)
        for line in persona.lines:
            targets = [self.events.index(e) for e in line.events if e in self.events] if line.events else [none]
            for example in line.examples:
                for column in targets:
                    texts.append(example)
                    columns.append(column)
        self.texts = texts
        self.keys = [_key(t) for t in texts]
        self.columns = np.array(columns, dtype=np.int64)
        self.vectors = embedder.encode(texts, batch_size=64) if texts else np.zeros((0, 1), dtype="float32")
        self.present = np.zeros(none + 1, dtype="float32")
        for column in set(columns):
            self.present[column] = 1.0

    def similarities(self, utterance: str, vector: np.ndarray | None = None,
                     exclude_same: bool = False) -> np.ndarray:
        """The player's line against every example, clipped to [0, 1]. `exclude_same`
        leaves out (scores 0) examples worded exactly as the line (training: a record whose
        player line is also an example would teach the heads to trust a perfect match that
        real players never give)."""
        if not len(self.texts):
            return np.zeros(0, dtype="float32")
        if vector is None:
            vector = self.embedder.encode([utterance])[0]
        sims = self.vectors @ vector
        if exclude_same:
            key = _key(utterance)
            sims = np.where(np.array([k == key for k in self.keys]), -1.0, sims)
        return np.clip(sims, 0.0, 1.0).astype("float32")

    def features(self, utterance: str, vector: np.ndarray | None = None, exclude_same: bool = False,
                 sims: np.ndarray | None = None) -> np.ndarray:
        """The 2E + 2 evidence numbers for one player line (`sims`: its `similarities`,
        when already computed)."""
        best = np.zeros(len(self.events) + 1, dtype="float32")
        if sims is None:
            sims = self.similarities(utterance, vector, exclude_same)
        if len(sims):
            np.maximum.at(best, self.columns, sims)
        return np.concatenate([best, self.present]).astype("float32")

    def top_two_means(self, sims: np.ndarray) -> np.ndarray:
        """(E + 1): for each event and for "no event", the mean of the line's two closest
        examples (the closest alone where there is one; 0 where none): a line close to two
        of a writer's examples is surer evidence than a line close to one (the event
        matcher reads it)."""
        means = np.zeros(len(self.events) + 1, dtype="float32")
        for column in np.unique(self.columns):
            top = np.sort(sims[self.columns == column])[::-1][:2]
            means[column] = float(top.mean())
        return means


def evidence_matrix(examples: Sequence, events: Sequence[str], embedder, exclude_same: bool = True,
                    without_lines: bool = False) -> np.ndarray:
    """(examples x 2E+2) evidence for labelled examples, one bank per persona.
    `without_lines`: all zeros, as for personas without authored lines (the "persona
    only" condition of the generalist measurements)."""
    rows = np.zeros((len(examples), evidence_size(len(events))), dtype="float32")
    if without_lines or not examples:
        return rows
    banks: dict[int, EventEvidence] = {}
    vectors = embedder.encode([e.turn.utterance for e in examples], batch_size=64)
    for i, example in enumerate(examples):
        persona = example.turn.persona
        bank = banks.get(id(persona))
        if bank is None:
            bank = banks[id(persona)] = EventEvidence(persona, events, embedder)
        rows[i] = bank.features(example.turn.utterance, vectors[i], exclude_same=exclude_same)
    return rows


def evidence_tensor(examples: Sequence, events: Sequence[str], embedder_ref: str = "embedded",
                    exclude_same: bool = False, without_lines: bool = False, embedder=None):
    """`evidence_matrix` as a torch tensor, with the embedder loaded by name unless given
    (training's heads refit and `eval` both call this)."""
    import torch

    from ..lore.embedder import load_embedder

    if embedder is None and not without_lines:
        embedder = load_embedder(embedder_ref)
    return torch.from_numpy(evidence_matrix(examples, events, embedder, exclude_same=exclude_same,
                                            without_lines=without_lines))
