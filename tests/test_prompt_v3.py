"""Sectioned prompt version 3 on the real embedded model and the version 3 adapter (issue 29):
a turn of a conversation starts its prompt pass after what the last turn's prompt shares
with it (persona, then the conversation up to its newest exchange), and the turn is the
same as without the cache: identical greedy replies, heads within 1e-4."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from persona_agents.manager import AgentManager

from .conftest import REPO

pytestmark = pytest.mark.model

ADAPTER = REPO / "training" / "adapters" / "smollm2-npc-v3"
NPC = "blacksmith_village_center"
LINES = ["Good day, smith. Busy morning?", "This sword broke in half. Can you help?",
         "I have no ore. Where would I find some?", "Thank you. I will be back."]


def _game(root: Path, prefix_cache_tokens: int) -> Path:
    shutil.copytree(REPO / "npcs", root / "npcs")
    shutil.copytree(REPO / "plugins", root / "plugins")
    defaults = root / "npcs" / "_defaults.yaml"
    data = yaml.safe_load(defaults.read_text(encoding="utf-8"))
    data["generation"] = {**data.get("generation", {}), "temperature": 0.0, "max_new_tokens": 12}
    data["pipeline"]["generate"] = [{"name": "multihead", "options": {
        "adapter": str(ADAPTER), "engine": "fast", "decode_precision": "float32",
        "prefix_cache_tokens": prefix_cache_tokens}}]
    data["pipeline"]["postprocess"] = ["game_rules"]  # the model speaks every turn
    defaults.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return root / "npcs"


def test_a_conversation_reuses_the_last_turns_cache_and_changes_nothing(tmp_path):
    managers = {size: AgentManager(_game(tmp_path / str(size), size)) for size in (4096, 0)}
    for manager in managers.values():
        manager.warm_up(NPC)
    engine = managers[4096].pipeline(NPC).steps["generate"][0].engine.batch
    assert managers[4096].pipeline(NPC).steps["prompt"][0].version() == 3
    turns = {size: [] for size in managers}
    reused = []  # prompt tokens each cached turn took from the cache
    for number, line in enumerate(LINES, 1):
        before = engine.prefix_reused_tokens
        for size, manager in managers.items():
            turns[size].append(manager.turn(NPC, line, player_id="v3", seed=number))
        reused.append(engine.prefix_reused_tokens - before)
    for cached, plain in zip(turns[4096], turns[0]):
        assert cached.text == plain.text
        for name, p in plain.flag_probs.items():
            assert cached.flag_probs[name] == pytest.approx(p, abs=1e-4), name
        assert cached.deltas.trust == pytest.approx(plain.deltas.trust, abs=1e-4)
        assert cached.deltas.relationship == pytest.approx(plain.deltas.relationship, abs=1e-4)
    assert managers[0].pipeline(NPC).steps["generate"][0].engine.batch.prefix_reused_tokens == 0
    # Turn 1 computes the persona's part and keeps it; turn 2 reuses it; from turn 3 on the
    # conversation so far comes from the cache too, one exchange more each turn.
    assert reused[0] == 0 and reused[1] > 300
    assert reused[1] < reused[2] < reused[3]
