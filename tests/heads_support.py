"""Checks shared by tests that run the sample NPCs, with or without state heads."""

from __future__ import annotations

import json
from typing import Any, Mapping

from persona_agents.flags import DEFAULT_FLAGS

from .conftest import REPO


def thresholds(adapter: str) -> dict[str, float]:
    return json.loads((REPO / adapter / "multihead.json").read_text())["thresholds"]


def check_state_outputs(turn: Mapping[str, Any]) -> None:
    """No placeholder values: without heads, zero deltas, no flags and a note saying so;
    with heads, every flag's probability, and the flags proposed are exactly those that
    reached their calibrated threshold (fired, or rejected by the game's rules)."""
    meta = turn["meta"]
    if "state_heads" in meta:
        assert meta["state_heads"].startswith("no state heads loaded")
        assert turn["deltas"] == {"trust": 0.0, "relationship": 0.0}
        assert turn["flags"] == [] and turn["flag_probs"] is None
        return
    probs = turn["flag_probs"]
    assert list(probs) == list(DEFAULT_FLAGS)
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    limits = thresholds(meta["adapter"])
    proposed = {name for name, p in probs.items() if p >= limits[name]}
    fired = {f["name"] for f in turn["flags"]}
    rejected = {f["name"] for f in turn["flags_rejected"]}
    assert fired | rejected == proposed and not fired & rejected
    assert all(-1.0 <= v <= 1.0 for v in turn["deltas"].values())
