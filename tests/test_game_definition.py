"""A studio's own game (issue 27): `_game.yaml` declares the events, stages and axes, and
personas, plans, training, adapters, `run-dialogue` and `/ask` all use those names.

The game here has three events of its own (rent_room, start_brawl, pay_tab) beside
quest_start / quest_complete, four quest stages and an extra state axis (reputation)
that the events move. Mechanics run on the tiny random
model: the adapter is trained for real (two steps), its heads answer in the game's
vocabulary, and the game's rules decide what fires.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from persona_agents.errors import PersonaFileError
from persona_agents.game import DEFAULT_GAME, load_game
from persona_agents.manager import next_state
from persona_agents.persona_loader import load_personas
from persona_agents.plugins import load_plugins
from persona_agents.turn import FiredFlag, NpcState

from .conftest import REPO, cli_env
from .server_support import start_cli_server

EVENTS = ["rent_room", "start_brawl", "pay_tab", "quest_start", "quest_complete"]
GAME = {
    "events": {
        "rent_room": {"description": "the innkeeper lets the player a room for the night", "payload": ["room"]},
        "start_brawl": {"description": "the innkeeper throws the first punch", "changes": {"reputation": -0.3}},
        "pay_tab": {"description": "the player's tab is settled and the innkeeper takes the coin",
                    "changes": {"reputation": 0.1}},
        "quest_start": {"description": "the innkeeper asks the player to clear the cellar", "sets_stage": "accepted"},
        "quest_complete": {"description": "the innkeeper thanks the player for the cleared cellar",
                           "sets_stage": "rewarded"},
    },
    "quest_stages": ["not_started", "accepted", "cellar_cleared", "rewarded"],
    "moods": ["neutral", "busy", "grateful"],
    "axes": {"trust": {"min": 0.0, "max": 1.0, "initial": 0.3},
             "relationship": {"min": -1.0, "max": 1.0, "initial": 0.0},
             "reputation": {"min": -1.0, "max": 1.0, "initial": 0.1, "description": "the player's name in town"}},
}


def persona(adapter: str = "adapters/tiny", **overrides) -> dict:
    data = {
        "id": "innkeeper",
        "name": "Marta",
        "role": "the innkeeper of the Red Stag.",
        "initial_state": {"trust": 0.3, "relationship": 0.0, "mood": "busy", "quest_stage": "not_started"},
        "flag_rules": {
            "rent_room": {"min_trust": 0.0, "payload": {"room": "attic"}, "means": "lets the attic room, to anyone"},
            "start_brawl": {"min_relationship": -0.2, "means": "never starts a fight with a friend"},
            "pay_tab": {"requires_items": ["coin_purse"]},
            "quest_start": {"stages": ["not_started"], "once": True},
            "quest_complete": {"stages": ["cellar_cleared"], "sets_mood": "grateful", "changes": {"reputation": 0.5}},
        },
        "lines": [
            {"id": "room", "text": "The attic's yours tonight.", "events": ["rent_room"],
             "examples": ["A room for the night?", "Got a bed free?", "need a room", "Can I sleep here?",
                          "Prithee, a chamber for the night."]},
            {"id": "hello", "text": "Welcome to the Red Stag.", "events": [],
             "examples": ["Hello.", "Good evening.", "hi there"]},
        ],
        "generation": {"max_new_tokens": 3, "seed": 1},
        "pipeline": {"prompt": [{"name": "sectioned", "options": {"history_turns": 2}}],
                     "generate": [{"name": "multihead", "options": {"adapter": adapter, "engine": "transformers"}}],
                     "postprocess": []},
    }
    data.update(overrides)
    return data


def record(utterance: str, flags: list[str], stage: str = "not_started", **extra) -> dict:
    return {"npc_id": "innkeeper", "tags": {"quest_stage": stage, "trust": 0.4, "relationship": 0.1, "reputation": 0.2},
            "context": [], "player_utterance": utterance, "response": "Aye, that I can do.",
            "delta": [0.0, 0.02], "flag": flags, **extra}


@pytest.fixture(scope="module")
def game_dir(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("studio-game")
    npcs = root / "npcs"
    (npcs / "tests").mkdir(parents=True)
    (npcs / "_game.yaml").write_text(yaml.safe_dump(GAME, sort_keys=False))
    (npcs / "innkeeper.yaml").write_text(yaml.safe_dump(persona()))
    records = [record("A room for the night?", ["rent_room"]), record("Fight me!", ["start_brawl"]),
               record("Any work?", ["quest_start"]), record("Cellar's clear.", ["quest_complete"], "cellar_cleared"),
               record("Here's my coin.", ["pay_tab"], player_state={"items": ["coin_purse"]}), record("Hello.", [])]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records * 2))
    done = subprocess.run(
        [sys.executable, "-m", "persona_agents", "train", "--npcs-dir", str(npcs), "--data", str(root / "train.jsonl"),
         "--validation", str(root / "train.jsonl"), "--base", str(tiny_model_dir), "--out", str(root / "adapters/tiny"),
         "--max-steps", "2", "--quantization", "none", "--no-retrieve-lore", "--heads-refit-epochs", "0",
         "--batch-size", "2", "--seed", "1"],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (npcs / "tests" / "innkeeper.yaml").write_text(yaml.safe_dump({"plans": [{
        "name": "cellar", "npc": "innkeeper", "start": {"axes": {"reputation": -0.4}},
        "turns": [{"say": "Any work for me?", "expect": {"no_flags": ["start_brawl"],
                                                          "state": {"axes": {"reputation": {"min": -1.0}}},
                                                          "deltas": {"reputation": {"direction": "any"}}}},
                  {"say": "The cellar is clear.", "set_stage": "cellar_cleared", "expect": {"no_flags": ["pay_tab"]}}],
    }]}))
    return root


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "persona_agents", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=600)


def test_the_adapter_is_trained_on_the_games_own_events(game_dir):
    meta = json.loads((game_dir / "adapters/tiny/multihead.json").read_text())
    assert meta["flags"] == EVENTS and set(meta["thresholds"]) == set(EVENTS)


def test_validate_dialogue_and_plans_speak_the_games_names(game_dir):
    npcs = str(game_dir / "npcs")
    done = run_cli("npcs", "validate", "--npcs-dir", npcs)
    assert done.returncode == 0, done.stdout + done.stderr
    # From another working directory: the adapter path resolves against the game folder.
    done = run_cli("run-dialogue", "--npcs-dir", npcs, "--npc", "innkeeper", "--say", "A room, please.", "--json",
                   cwd=game_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    turn = json.loads(done.stdout)
    assert list(turn["flag_probs"]) == EVENTS
    assert {f["name"] for f in turn["flags"]} | {r["name"] for r in turn["flags_rejected"]} <= set(EVENTS)
    # The extra axis: every turn reports it, moved only by the events that fired.
    fired = {f["name"] for f in turn["flags"]}
    expected = round(-0.3 * ("start_brawl" in fired) + 0.1 * ("pay_tab" in fired), 6)
    assert turn["deltas"]["axes"] == {"reputation": pytest.approx(expected)}
    assert turn["state"]["axes"] == {"reputation": pytest.approx(0.1 + expected)}
    done = run_cli("test", "--npcs-dir", npcs, "--show-prompt")
    out = done.stdout + done.stderr
    assert "unknown flag" not in out and "unknown quest stage" not in out and "not an extra axis" not in out, out
    assert "cellar" in done.stdout
    # The plan's start reached the prompt, and the state check ran on the axis.
    assert "quest_stage=not_started, reputation=-0.40" in out and "[PASS] turn 1: state reputation" in out, out
    assert "[PASS] turn 1: delta reputation" in out, out


def test_ask_returns_the_games_events(game_dir, tmp_path):
    server = start_cli_server(tmp_path / "srv", game_dir / "npcs", api_key=None)
    try:
        body = httpx.post(f"{server.base_url}/ask", json={"session_id": "s1", "npc_id": "innkeeper",
                                                          "user_input": "A room for the night?"}, timeout=120)
        assert body.status_code == 200, body.text
        assert list(body.json()["flags"]) == EVENTS
        bad = httpx.post(f"{server.base_url}/v1/npcs/innkeeper/turns",
                         json={"player_id": "p", "utterance": "hi", "quest_stage": "in_progress"}, timeout=60)
        assert bad.status_code == 422 and "cellar_cleared" in bad.text, bad.text
        turn = httpx.post(f"{server.base_url}/v1/npcs/innkeeper/turns",
                          json={"player_id": "p", "utterance": "A room?"}, timeout=120).json()
        assert set(turn["deltas"]["axes"]) == set(turn["state"]["axes"]) == {"reputation"}
        listed = httpx.get(f"{server.base_url}/v1/npcs", timeout=30).json()["npcs"][0]
        assert listed["initial_state"]["axes"] == {"reputation": 0.1}
        state = httpx.get(f"{server.base_url}/v1/players/p/npcs/innkeeper/state", timeout=30).json()["state"]
        assert state["axes"] == turn["state"]["axes"]
    finally:
        server.stop()


def test_a_rule_naming_an_undeclared_event_lists_the_declared_ones(tmp_path):
    npcs = tmp_path / "npcs"
    npcs.mkdir()
    (npcs / "_game.yaml").write_text(yaml.safe_dump(GAME, sort_keys=False))
    bad = persona("/nowhere")
    bad["flag_rules"] = {"give_item": {}, "rent_room": {"stages": ["in_progress"]}}
    bad["lines"] = [{"id": "brawl", "text": "Outside, now!", "events": ["brawl"]}]
    (npcs / "innkeeper.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(PersonaFileError) as info:
        load_personas(npcs, load_plugins(tmp_path / "plugins").registry)
    text = str(info.value)
    declared = "rent_room, start_brawl, pay_tab, quest_start, quest_complete"
    where = npcs / "_game.yaml"
    assert f"flag_rules: unknown flag(s) 'give_item'; valid flags: {declared} (declared in {where})" in text
    assert "flag_rules.rent_room.stages: unknown quest stage(s) 'in_progress'; valid quest stages: not_started, " \
           "accepted, cellar_cleared, rewarded" in text
    assert "lines[0].events: unknown flag(s) 'brawl'" in text


@pytest.mark.parametrize("change, message", [
    ({"axes": {"trust": {"min": 0, "max": 2, "initial": 0.3}, "relationship": {"min": -1, "max": 1, "initial": 0}}},
     "axes: trust: the range of a built-in axis is fixed at [0.0, 1.0]"),
    ({"axes": {"trust": {"min": 0, "max": 1, "initial": 0.3}, "relationship": {"min": -1, "max": 1, "initial": 0},
               "mood": {"min": 0, "max": 1, "initial": 0}}}, "must be snake_case and not one of mood"),
    ({"axes": {"trust": {"min": 0, "max": 1, "initial": 0.3}, "relationship": {"min": -1, "max": 1, "initial": 0},
               "fear": {"min": 0, "max": 1, "initial": 2}}}, "axes.fear: initial (2.0) must lie in"),
    ({"events": {"brawl": {"description": "x", "changes": {"fame": 0.1}}}},
     "events.brawl.changes: fame not an extra axis of this game; declared extra axes: reputation"),
    ({"events": {"quest_start": {"description": "x", "sets_stage": "begun"}}}, "sets_stage: 'begun' is not a declared"),
    ({"events": {"Rent Room": {"description": "x"}}}, "must be snake_case"),
    ({"events": {"rent_room": {"descripton": "x"}}}, "events.rent_room.descripton: unknown field"),
])
def test_game_file_errors_name_the_field(tmp_path, change, message):
    (tmp_path / "_game.yaml").write_text(yaml.safe_dump({**GAME, **change}, sort_keys=False))
    with pytest.raises(PersonaFileError) as info:
        load_game(tmp_path)
    assert str(tmp_path / "_game.yaml") in str(info.value) and message in str(info.value)


def test_without_a_game_file_the_default_eight_events_apply(tmp_path):
    assert load_game(tmp_path) is DEFAULT_GAME
    assert DEFAULT_GAME.events["quest_start"].sets_stage == "in_progress"


def test_stage_and_mood_moves_are_declared_not_coded(tmp_path):
    game = load_game_from(tmp_path)
    from persona_agents.persona import Persona
    from persona_agents.turn import Turn

    inn = Persona.model_validate(persona())
    state = NpcState(0.3, 0.0, "busy", "cellar_cleared")
    turn = Turn(npc_id="innkeeper", player_id="p", utterance="done", persona=inn, state=state,
                flags=(FiredFlag("quest_complete"),))
    after = next_state(state, turn, game)
    assert (after.quest_stage, after.mood) == ("rewarded", "grateful")
    started = next_state(NpcState(0.3, 0.0, "busy", "not_started"), turn.replace(flags=(FiredFlag("quest_start"),)),
        game)
    assert (started.quest_stage, started.mood) == ("accepted", "busy")
    # Moods that follow the feelings: the first rule whose bounds hold after the turn.
    moody = Persona.model_validate(persona(mood_rules=[{"mood": "busy", "max_relationship": -0.5},
                                                       {"mood": "grateful", "min_relationship": 0.5}]))
    from persona_agents.turn import Deltas

    cold = next_state(NpcState(0.3, -0.4, "neutral", "accepted"),
                      Turn(npc_id="innkeeper", player_id="p", utterance="you cheat", persona=moody,
                           state=NpcState(0.3, -0.4, "neutral", "accepted"), deltas=Deltas(0.0, -0.2)), game)
    assert cold.mood == "busy" and cold.relationship == pytest.approx(-0.6)
    warm = next_state(NpcState(0.3, 0.45, "neutral", "accepted"),
                      Turn(npc_id="innkeeper", player_id="p", utterance="thanks", persona=moody,
                           state=NpcState(0.3, 0.45, "neutral", "accepted"), deltas=Deltas(0.0, 0.1)), game)
    assert warm.mood == "grateful"


def load_game_from(folder: Path):
    (folder / "_game.yaml").write_text(yaml.safe_dump(GAME, sort_keys=False))
    return load_game(folder)


def test_heads_refit_continues_from_an_adapter_with_evidence(game_dir, tmp_path):
    """Issue 26's workflow: keep an adapter's LoRA, refit heads that read the writers'
    example lines; the step then passes each turn's evidence to them."""
    import shutil

    from persona_agents.multihead.artifacts import read_metadata

    adapter = tmp_path / "adapters" / "tiny"
    shutil.copytree(game_dir / "adapters" / "tiny", adapter)
    npcs = tmp_path / "npcs"
    shutil.copytree(game_dir / "npcs", npcs)
    done = run_cli("train", "--npcs-dir", str(npcs), "--data", str(game_dir / "train.jsonl"), "--out", str(adapter),
                   "--heads-only", "--heads-evidence", "--heads-refit-epochs", "5", "--no-retrieve-lore")
    assert done.returncode == 0, done.stderr[-3000:]
    meta = read_metadata(adapter)
    assert meta["heads"]["evidence_size"] == 2 * len(EVENTS) + 2 and meta["evidence"]["size"] == 12
    assert meta["flags"] == EVENTS
    done = run_cli("run-dialogue", "--npcs-dir", str(npcs), "--npc", "innkeeper", "--say", "Got a bed free?", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(json.loads(done.stdout)["flag_probs"]) == EVENTS


def test_evidence_is_the_nearest_example_per_event():
    import numpy as np

    from persona_agents.lore.embedder import load_embedder
    from persona_agents.multihead.evidence import EventEvidence
    from persona_agents.persona import Persona

    bank = EventEvidence(Persona.model_validate(persona()), EVENTS, load_embedder("embedded"))
    row = bank.features("Got a bed free?")
    assert row.shape == (2 * len(EVENTS) + 2,)
    assert row[EVENTS.index("rent_room")] == pytest.approx(1.0, abs=1e-4)
    assert row[EVENTS.index("start_brawl")] == 0.0  # no examples for it
    present = row[len(EVENTS) + 1:]
    assert list(present) == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # rent_room and "no event" have examples
    held_out = bank.features("Got a bed free?", exclude_same=True)
    assert 0.3 < held_out[EVENTS.index("rent_room")] < 0.99
    assert np.all(bank.features("The weather is grim.")[: len(EVENTS)] < 0.6)


# -- the game's own state axes --------------------------------------------------------------
def axes_manager(npc_folder, model: Path, db_url: str, proposed: list[str]):
    """A manager over the game with a stand-in that proposes `proposed` every turn."""
    from persona_agents.manager import AgentManager
    from persona_agents.store import StateStore

    from .plugins import proposer

    (npc_folder.folder / "_game.yaml").write_text(yaml.safe_dump(GAME, sort_keys=False))
    npc_folder("innkeeper", initial_state=persona()["initial_state"], flag_rules=persona()["flag_rules"],
               pipeline={"prompt": ["sectioned"],
                         "generate": [{"name": "transformers", "options": {"model": str(model)}}],
                         "postprocess": [{"name": "propose_flags", "options": {"flags": proposed}}]})
    return AgentManager(npc_folder.folder, host=load_plugins(None, extra=[("proposer", proposer)]),
                        store=StateStore(db_url))


def test_an_extra_axis_moves_only_as_the_fired_events_declare(npc_folder, tiny_model_dir, tmp_path):
    from persona_agents.turn import GameContext

    url = f"sqlite:///{tmp_path / 'state.db'}"
    manager = axes_manager(npc_folder, tiny_model_dir, url, ["start_brawl", "pay_tab"])
    assert manager.conversation("p", "innkeeper").state.axes == {"reputation": 0.1}  # the game's initial value
    first = manager.turn("innkeeper", "Outside, you cheat!", player_id="p", seed=1)
    # start_brawl fires (relationship 0.0 >= -0.2); pay_tab is refused (no coin purse): only -0.3 applies.
    assert [f.name for f in first.flags] == ["start_brawl"] and first.flags_rejected[0].name == "pay_tab"
    assert dict(first.deltas.axes) == {"reputation": pytest.approx(-0.3)}
    assert dict(first.state.axes) == {"reputation": pytest.approx(-0.2)}
    second = manager.turn("innkeeper", "Again!", player_id="p", seed=1, context=GameContext(items=("coin_purse",)))
    assert dict(second.deltas.axes) == {"reputation": pytest.approx(-0.2)}  # -0.3 + 0.1
    # Stored, and read back by another manager; the axis is in the prompt's state line.
    again = axes_manager(npc_folder, tiny_model_dir, url, ["start_brawl"] * 1)
    assert dict(again.conversation("p", "innkeeper").state.axes) == {"reputation": pytest.approx(-0.4)}
    for _ in range(3):  # bounded by the axis's range: -0.4 -> -0.7 -> -1.0 -> -1.0
        last = again.turn("innkeeper", "Brawl!", player_id="p", seed=1)
    assert last.state.axes["reputation"] == pytest.approx(-1.0) and last.deltas.axes["reputation"] == 0.0
    from persona_agents.prompt_format import render_sectioned, render_sectioned_v2
    from persona_agents.turn import Turn

    seen = Turn(npc_id="innkeeper", player_id="p", utterance="hi", persona=again.get_persona("innkeeper").persona,
                state=last.state)
    assert "quest_stage=not_started, reputation=-1.00" in render_sectioned(seen)
    assert "quest_stage=not_started, reputation=-1.00" in render_sectioned_v2(seen)
    exported = again.store.export("p")["npcs"]["innkeeper"]["state"]
    assert exported["axes"] == {"reputation": pytest.approx(-1.0)}


def test_a_game_without_extra_axes_keeps_its_response_shape(npc_folder, tiny_model_dir, tmp_path):
    from persona_agents.manager import AgentManager
    from persona_agents.store import StateStore

    npc_folder("anna")
    response = AgentManager(npc_folder.folder, store=StateStore(f"sqlite:///{tmp_path / 's.db'}")).turn(
        "anna", "hello", player_id="p", seed=1).to_dict()
    assert set(response["deltas"]) == {"trust", "relationship"}
    assert set(response["state"]) == {"trust", "relationship", "mood", "quest_stage"}


def test_a_persona_rule_changes_the_axis_its_own_way_and_names_only_declared_axes(tmp_path):
    from persona_agents.persona import Persona

    game = load_game_from(tmp_path)
    inn = Persona.model_validate(persona())
    # quest_complete: the persona's rule says +0.5 (the game's event says nothing); clipped at 1.0.
    assert game.axis_changes({"reputation": 0.8}, ["quest_complete"], inn.flag_rules) == {"reputation": 0.2}
    assert game.axis_changes({}, ["pay_tab", "rent_room"], inn.flag_rules) == {"reputation": 0.1}
    npcs = tmp_path / "npcs"
    npcs.mkdir()
    (npcs / "_game.yaml").write_text(yaml.safe_dump(GAME, sort_keys=False))
    bad = persona("/nowhere")
    bad["flag_rules"]["rent_room"]["changes"] = {"fame": 0.1}
    (npcs / "innkeeper.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(PersonaFileError) as info:
        load_personas(npcs, load_plugins(tmp_path / "plugins").registry)
    assert "flag_rules.rent_room.changes: 'fame' not an extra axis of the game; declared extra axes: reputation" \
        in str(info.value)


def test_a_plan_naming_an_undeclared_axis_lists_the_declared_ones(tmp_path):
    from persona_agents.testplans.loader import PlanFileError, load_plans

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"plans": [{"name": "p", "npc": "innkeeper", "start": {"axes": {"fame": 0.2}},
                                               "turns": [{"say": "hi", "expect": {
                                                   "state": {"axes": {"reputation": {"min": 0}, "honour": {"max": 1}}},
                                                   "deltas": {"reputation": {"direction": "up"},
                                                              "trst": {"direction": "up"}}}}]}]}))
    with pytest.raises(PlanFileError) as info:
        load_plans([plan], ["innkeeper"], EVENTS, GAME["quest_stages"], ["reputation"])
    text = str(info.value)
    assert "start.axes: 'fame' is not trust, relationship or an extra axis of the game; declared extra axes: " \
           "reputation" in text
    assert "turn 1: expect.state.axes: 'honour' is not" in text and "turn 1: expect.deltas: 'trst' is not" in text
    assert "'reputation'" not in text
    with pytest.raises(PlanFileError, match="declared extra axes: none"):  # a game without extra axes
        load_plans([plan], ["innkeeper"], EVENTS, GAME["quest_stages"])
