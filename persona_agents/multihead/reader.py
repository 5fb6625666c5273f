"""An adapter's state heads as a game reads them (issue 28: the heads apart from the engine).

Any engine hands back the final hidden state at `<STATE>` (engines/contract.py); this
small component turns that one vector into what the game acts on: the deltas, every
declared event's probability, and the events whose probability reaches the adapter's
calibrated threshold. It runs on the CPU whatever device the model is on: one vector a
turn, a small MLP.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Collection, Mapping, Sequence

from persona_agents.turn import Deltas, Generation


class HeadsReader:
    def __init__(self, bundle, declared: Sequence[str], evidence_bank=None, matcher=None,
                 event_deltas: Mapping[str, Sequence[float]] | None = None):
        self.bundle = bundle  # persona_agents.multihead.artifacts.AdapterBundle (its heads and thresholds)
        #: The events this NPC's game declares, of those the adapter predicts (a generalist knows more).
        self.declared = list(declared)
        self._index = [bundle.flags.index(name) for name in self.declared]
        self._evidence_bank = evidence_bank  # EventEvidence, for heads that read few-shot evidence
        #: NpcMatcher (multihead/matcher.py): the events this NPC reads by meaning, not by head.
        self.matcher = matcher
        #: Each event's typical (trust, relationship) delta: the events that happen bound the
        #: heads' deltas (event_deltas.py).
        self.event_deltas = dict(event_deltas or {})

    def turn_inputs(self, utterance: str, npc_last_line: str = "") -> tuple[Any, dict[str, float] | None]:
        """What the heads and the matcher read besides `<STATE>` this turn: the few-shot
        evidence row (None for heads that do not read it) and the matcher's probabilities
        for its events (None without one). The player's line is embedded once for both
        where they read the same sentence model. Embeds: call it on the turn's thread."""
        bank, matcher = self._evidence_bank, self.matcher
        if bank is None and matcher is None:
            return None, None
        evidence, vectors = None, None
        if bank is not None:
            import torch

            texts = [utterance] + ([npc_last_line] if matcher is not None and npc_last_line
                                   and matcher.embedder is bank.embedder else [])
            vectors = bank.embedder.encode(texts)
            evidence = torch.from_numpy(bank.features(utterance, vectors[0]))[None]
        matched = None
        if matcher is not None:
            if vectors is None or bank is None or matcher.embedder is not bank.embedder:
                texts = [utterance] + ([npc_last_line] if npc_last_line else [])
                vectors = matcher.embedder.encode(texts)
            matched = matcher.probabilities(utterance, vectors[0], vectors[1] if len(vectors) > 1 else None)
        return evidence, matched

    def read(self, state_row, evidence=None) -> Any:
        """The heads' output (flag_probs, deltas) for one `<STATE>` row. Torch: run it on
        the compute thread."""
        return self.bundle.heads(state_row.reshape(1, -1).float().cpu(), evidence)

    def apply(self, generation: Generation, heads, matched: dict[str, float] | None = None,
              allowed: Collection[str] | None = None) -> Generation:
        """The generation with the heads' deltas, declared events' probabilities and the
        events at or above their thresholds. The events in `matched` (the matcher's
        probabilities) are decided by the matcher's thresholds instead (`threshold_for`), or,
        for those the matcher shares with the heads (`NpcMatcher.blended`), by both
        (`matcher.blend`, with the matcher's one threshold: the heads' thresholds already
        carry each event's calibration on the NPCs they know). The
        deltas are bounded by the events that fire and the persona's rules allow in this
        state (`allowed`; None: every event), as `event_deltas.deltas_after_events` says."""
        from persona_agents.multihead.event_deltas import deltas_after_events
        from persona_agents.multihead.matcher import blend

        probs = {name: round(float(heads.flag_probs[0][i]), 6) for name, i in zip(self.declared, self._index)}
        thresholds = dict(self.bundle.thresholds)
        for name, p in (matched or {}).items():
            assert self.matcher is not None
            if name in self.matcher.blended and name in probs:
                both, threshold = blend(probs[name], thresholds[name], p, self.matcher.threshold)
                probs[name], thresholds[name] = round(both, 6), threshold
            else:
                probs[name], thresholds[name] = p, self.matcher.threshold_for(name)
        flags = tuple(name for name, p in probs.items() if p >= thresholds[name])
        trust, relationship = (float(d) for d in heads.deltas[0])
        happening = [name for name in flags if allowed is None or name in allowed]
        trust, relationship = deltas_after_events(trust, relationship, happening, self.event_deltas)
        return dataclasses.replace(
            generation,
            deltas=Deltas(trust=round(trust, 4), relationship=round(relationship, 4)),
            flag_probs=probs,
            flags=flags,
        )
