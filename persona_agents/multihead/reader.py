"""An adapter's state heads as a game reads them (issue 28: the heads apart from the engine).

Any engine hands back the final hidden state at `<STATE>` (engines/contract.py); this
small component turns that one vector into what the game acts on: the deltas, every
declared event's probability, and the events whose probability reaches the adapter's
calibrated threshold. It runs on the CPU whatever device the model is on: one vector a
turn, a small MLP.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from persona_agents.turn import Deltas, Generation


class HeadsReader:
    def __init__(self, bundle, declared: Sequence[str], evidence_bank=None, matcher=None):
        self.bundle = bundle  # persona_agents.multihead.artifacts.AdapterBundle (its heads and thresholds)
        #: The events this NPC's game declares, of those the adapter predicts (a generalist knows more).
        self.declared = list(declared)
        self._index = [bundle.flags.index(name) for name in self.declared]
        self._evidence_bank = evidence_bank  # EventEvidence, for heads that read few-shot evidence
        #: NpcMatcher (multihead/matcher.py): the events this NPC reads by meaning, not by head.
        self.matcher = matcher

    def match(self, utterance: str, npc_last_line: str = "") -> dict[str, float] | None:
        """The matcher's probabilities for its events this turn, or None without one.
        Embeds: call it on the turn's thread."""
        if self.matcher is None or not self.matcher.events:
            return None
        return self.matcher.probabilities(utterance, npc_last_line)

    def evidence(self, utterance: str):
        """The turn's few-shot evidence row (the player's line against the persona's example
        lines), or None for heads that do not read it. Embeds: call it on the turn's thread."""
        if self._evidence_bank is None:
            return None
        import torch

        return torch.from_numpy(self._evidence_bank.features(utterance))[None]

    def read(self, state_row, evidence=None) -> Any:
        """The heads' output (flag_probs, deltas) for one `<STATE>` row. Torch: run it on
        the compute thread."""
        return self.bundle.heads(state_row.reshape(1, -1).float().cpu(), evidence)

    def apply(self, generation: Generation, heads, matched: dict[str, float] | None = None) -> Generation:
        """The generation with the heads' deltas, declared events' probabilities and the
        events at or above their thresholds; the events in `matched` (the matcher's
        probabilities) are decided by the matcher's one threshold instead."""
        probs = {name: round(float(heads.flag_probs[0][i]), 6) for name, i in zip(self.declared, self._index)}
        thresholds = dict(self.bundle.thresholds)
        if matched:
            probs.update(matched)
            thresholds.update({name: self.matcher.threshold for name in matched})
        trust, relationship = (round(float(d), 4) for d in heads.deltas[0])
        return dataclasses.replace(
            generation,
            deltas=Deltas(trust=trust, relationship=relationship),
            flag_probs=probs,
            flags=tuple(name for name, p in probs.items() if p >= thresholds[name]),
        )
