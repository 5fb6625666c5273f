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
    def __init__(self, bundle, declared: Sequence[str], evidence_bank=None):
        self.bundle = bundle  # persona_agents.multihead.artifacts.AdapterBundle (its heads and thresholds)
        #: The events this NPC's game declares, of those the adapter predicts (a generalist knows more).
        self.declared = list(declared)
        self._index = [bundle.flags.index(name) for name in self.declared]
        self._evidence_bank = evidence_bank  # EventEvidence, for heads that read few-shot evidence

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

    def apply(self, generation: Generation, heads) -> Generation:
        """The generation with the heads' deltas, declared events' probabilities and the
        events at or above their thresholds."""
        probs = [round(float(heads.flag_probs[0][i]), 6) for i in self._index]
        trust, relationship = (round(float(d), 4) for d in heads.deltas[0])
        thresholds = self.bundle.thresholds
        return dataclasses.replace(
            generation,
            deltas=Deltas(trust=trust, relationship=relationship),
            flag_probs=dict(zip(self.declared, probs)),
            flags=tuple(name for name, p in zip(self.declared, probs) if p >= thresholds[name]),
        )
