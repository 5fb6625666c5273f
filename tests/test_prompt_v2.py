"""Sectioned prompt version 2 end to end, on the seed game's adapter (trained on version
2, committed) and the real embedded model: the decision is written into the prompt after
the prompt pass, on both engines, and gives the same turn."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from persona_agents.manager import AgentManager
from persona_agents.turn import GameContext

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "examples" / "seed_game"

pytestmark = pytest.mark.model


def _seed_game_speaking(tmp_path: Path, engine: str) -> Path:
    """A copy of the seed game whose NPCs always speak (no writers' lines), greedily."""
    root = tmp_path / engine
    shutil.copytree(SEED, root, symlinks=True)
    defaults = root / "npcs" / "_defaults.yaml"
    data = yaml.safe_load(defaults.read_text())
    data["generation"].update(temperature=0.0, max_new_tokens=16)
    data["pipeline"]["postprocess"] = ["game_rules"]
    data["pipeline"]["generate"][0]["options"].update(engine=engine, decode_precision="float32")
    defaults.write_text(yaml.safe_dump(data, sort_keys=False))
    return root / "npcs"


def test_version_2_turns_decide_then_speak_alike_on_both_engines(tmp_path):
    turns = {}
    for engine in ("fast", "transformers"):
        manager = AgentManager(_seed_game_speaking(tmp_path, engine))
        turns[engine] = [
            manager.turn("elder_mossbrook", line, player_id="v2", seed=3, context=GameContext(quest_stage=stage))
            for line, stage in (("Hello, elder. Is all well in the village?", "not_started"),
                                ("Where should I look for it?", "in_progress"))]
        prompt = manager.pipeline("elder_mossbrook").steps["prompt"][0]
        assert prompt.version() == 2  # `auto` read the adapter's version
    for fast, reference in zip(turns["fast"], turns["transformers"]):
        assert fast.meta["engine"] == "fast" and reference.meta["engine"] == "transformers"
        assert fast.text and fast.text == reference.text  # (the tiny adapter is silent on some lines)
        assert [f.to_dict() for f in fast.flags] == [f.to_dict() for f in reference.flags]
        assert [r.name for r in fast.flags_rejected] == [r.name for r in reference.flags_rejected]
        assert fast.deltas.trust == pytest.approx(reference.deltas.trust, abs=1e-3)
        assert "<DECISION>" not in fast.text and "DECISION" not in fast.text


def test_a_prompt_of_the_wrong_version_for_the_adapter_is_a_clear_error(tmp_path):
    from persona_agents.errors import PersonaAgentsError

    npcs = _seed_game_speaking(tmp_path, "fast")
    defaults = npcs / "_defaults.yaml"
    data = yaml.safe_load(defaults.read_text())
    data["pipeline"]["prompt"] = [{"name": "sectioned", "options": {"history_turns": 4, "version": 1}}]
    defaults.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PersonaAgentsError, match=r"trained on sectioned prompt version 2.*`version: 2`"):
        AgentManager(npcs).turn("elder_mossbrook", "Hello.", player_id="v1", seed=1)


def test_grounded_mode_shows_the_fitting_lines_to_the_model_on_both_engines(tmp_path):
    shown = {}
    for engine in ("fast", "transformers"):
        npcs = _seed_game_speaking(tmp_path / "grounded", engine)
        defaults = npcs / "_defaults.yaml"
        data = yaml.safe_load(defaults.read_text())
        data["pipeline"]["postprocess"] = ["game_rules", {"name": "authored_lines", "options": {"mode": "grounded"}}]
        defaults.write_text(yaml.safe_dump(data, sort_keys=False))
        manager = AgentManager(npcs)
        step = manager.pipeline("elder_mossbrook").steps["generate"][0]
        written = []
        decision_ids = step._decision_ids
        step._decision_ids = lambda decision: written.append(decision) or decision_ids(decision)
        turn = manager.turn("elder_mossbrook", "Hello, elder. Is all well in the village?", player_id="g", seed=2,
                            context=GameContext(quest_stage="not_started"))
        assert turn.meta["new_tokens"] > 0  # the model wrote (a reply it left empty gets a line: reply_guard)
        assert turn.meta["reply_source"] == "model" or "empty" in turn.meta["reply_guard"]
        assert len(written) == 1 and written[0].lines, "a line fits: the model reads it"
        lines = {line.id: line.text.strip() for line in manager.get_persona("elder_mossbrook").persona.lines}
        assert list(written[0].lines) == [lines[i] for i in turn.meta["grounding_lines"]]
        shown[engine] = (turn.text, written[0].lines)
    assert shown["fast"] == shown["transformers"]
