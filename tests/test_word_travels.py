"""Word that travels (issue 30): by the game's `word_travels` rules, what happened between
the player and one NPC becomes a `heard` memory of the NPCs the rule reaches, after a
delay in the player's turns, in the telling turn's transaction; no other NPC learns it."""

from __future__ import annotations

import pytest
import yaml

from persona_agents.errors import PersonaFileError
from persona_agents.game import GameDefinition, WordReach, WordRule
from persona_agents.manager import AgentManager
from persona_agents.memory.word import hearers, word_of_turn
from persona_agents.persona import Persona
from persona_agents.plugins import load_plugins
from persona_agents.store import StateStore
from persona_agents.turn import FiredFlag

from .plugins import failing_steps, proposer

DESCRIBED = {"give_item": {"description": "the NPC hands the player an item now", "payload": ["item"]},
             "open_trade": {"description": "the NPC opens its shop or a trade"}}


def persona(npc_id: str, **fields) -> Persona:
    return Persona.model_validate({"id": npc_id, "name": npc_id.title(), "role": "r",
                                   "pipeline": {"prompt": ["chat_template"], "generate": ["transformers"]},
                                   **fields})


PEOPLE = {"anna": persona("anna", location="forge"),
          "bo": persona("bo", knowledge={"factions": ["guild"]}),
          "cy": persona("cy", location="square"),
          "di": persona("di")}


def test_a_rule_reaches_listed_npcs_factions_and_places_never_the_teller():
    rule = WordRule(events=["give_item"], to=WordReach(npcs=["di"], factions=["guild"], locations=["forge"]))
    assert hearers(rule, "anna", PEOPLE) == ["bo", "di"]  # anna is at the forge but tells it
    assert hearers(rule, "cy", PEOPLE) == ["anna", "bo", "di"]


def test_events_and_statements_spread_as_the_rules_say():
    game = GameDefinition(events=DESCRIBED, word_travels=[
        WordRule(events=["give_item"], tellers=["anna"], to=WordReach(npcs=["bo"]), delay_turns=2),
        WordRule(facts=True, to=WordReach(npcs=["cy"]))])
    word = word_of_turn(game, PEOPLE, "anna", 4, "My name is Aldric. Nice forge.",
                        [FiredFlag("give_item", {"item": "map"}), FiredFlag("open_trade")])
    assert [(to, m.kind, m.source, m.turn, delay, m.text) for to, m, delay in word] == [
        ("bo", "heard", "anna", 4, 2,
         "Anna did give_item (Anna hands the player an item now), item=map for the player."),
        ("cy", "heard", "anna", 4, 0, 'The player told Anna: "My name is Aldric."'),
    ]
    assert word_of_turn(game, PEOPLE, "di", 1, "Hello.", [FiredFlag("give_item", {})]) == []  # not a teller


def test_a_rule_must_spread_something_and_name_declared_events():
    with pytest.raises(ValueError, match="nothing spreads"):
        GameDefinition(events=DESCRIBED, word_travels=[WordRule(to=WordReach(npcs=["bo"]))])
    with pytest.raises(ValueError, match=r"word_travels\.0\.events: give_gold not declared"):
        GameDefinition(events=DESCRIBED, word_travels=[WordRule(events=["give_gold"], to=WordReach())])


# -- through the manager and the store ------------------------------------------------------
def write_game(folder, word_travels):
    (folder / "_game.yaml").write_text(yaml.safe_dump({"events": DESCRIBED, "word_travels": word_travels}))


@pytest.fixture
def village(npc_folder):
    npc_folder("anna", knowledge={"factions": ["guild"]}, flag_rules={"give_item": {"payload": {"item": "map"}}},
               pipeline={"preprocess": ["normalize_input"], "prompt": ["chat_template"],
                         "generate": [{"name": "transformers", "options": {"model": str(npc_folder.model)}}],
                         "postprocess": [{"name": "propose_flags", "options": {"flags": ["give_item"]}},
                                         "game_rules"]})
    npc_folder("bo", knowledge={"factions": ["guild"]})
    npc_folder("cy")
    write_game(npc_folder.folder, [{"events": ["give_item"], "facts": True, "tellers": ["anna"],
                                    "to": {"factions": ["guild"]}, "delay_turns": 1}])
    host = load_plugins(None, extra=[("proposer", proposer), ("failing_steps", failing_steps)])
    return AgentManager(npc_folder.folder, host=host, store=StateStore.in_memory())


@pytest.fixture
def npc_folder(npc_folder, tiny_model_dir):
    npc_folder.model = tiny_model_dir
    return npc_folder


def test_word_reaches_the_faction_after_the_delay_and_no_one_else(village):
    village.turn("anna", "My name is Aldric.", player_id="p")
    # On its way: stored (the game sees it), not yet known to bo's turns.
    pending = village.memories("p", "bo")
    assert [(m.kind, m.source, m.visible_from) for m in pending] == [("heard", "anna", 2), ("heard", "anna", 2)]
    assert village.conversation("p", "bo").memories == ()
    village.turn("cy", "Hello there.", player_id="p")  # one more turn of the player's, with anyone
    heard = village.conversation("p", "bo").memories
    assert sorted(m.text for m in heard) == [
        "Anna did give_item (Anna hands the player an item now), item=map for the player.",
        'The player told Anna: "My name is Aldric."']
    assert village.memories("p", "cy") == ()  # not of the guild
    assert all(m.kind != "heard" for m in village.memories("p", "anna"))  # the teller does not hear itself
    assert village.memories("q", "bo") == ()  # another player's story is theirs
    shown = village.store.export("p")
    assert set(shown["heard_only"]) == {"bo"}  # bo never talked with p, and knows of them


def test_a_failed_turn_sends_no_word(village, npc_folder):
    npc_folder("anna", knowledge={"factions": ["guild"]}, pipeline={
        "preprocess": ["normalize_input"], "prompt": ["chat_template"],
        "generate": [{"name": "transformers", "options": {"model": str(npc_folder.model)}}],
        "postprocess": [{"name": "explode", "options": {"on_turn": 1}}]})
    host = load_plugins(None, extra=[("proposer", proposer), ("failing_steps", failing_steps)])
    manager = AgentManager(npc_folder.folder, host=host, store=StateStore.in_memory())
    with pytest.raises(Exception):
        manager.turn("anna", "My name is Aldric.", player_id="p")
    assert manager.store.count("memories") == 0


def test_a_rule_naming_an_unknown_npc_is_refused_with_the_file_and_field(npc_folder):
    npc_folder("anna")
    write_game(npc_folder.folder, [{"events": ["give_item"], "to": {"npcs": ["hale"]}}])
    with pytest.raises(PersonaFileError) as caught:
        AgentManager(npc_folder.folder)
    assert "_game.yaml: word_travels.0.to.npcs: unknown NPC 'hale'; available: anna" in str(caught.value)


def test_a_plan_turn_may_talk_to_another_npc_that_must_exist(tmp_path):
    from persona_agents.testplans.loader import PlanFileError, load_plans

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"name": "walks over", "npc": "anna", "turns": [
        {"say": "Hello."}, {"say": "Hi, Bo.", "npc": "bo", "expect": {"memories": {"recalled": [1]}}}]}))
    (loaded,) = load_plans([plan], ["anna", "bo"])
    assert [t.npc for t in loaded.plan.turns] == [None, "bo"]
    with pytest.raises(PlanFileError, match=r"turn 2: npc: unknown NPC 'bo'; available: anna"):
        load_plans([plan], ["anna"])


def test_a_scene_turn_in_a_plan_names_npcs_present_and_expects_who_answers(tmp_path):
    from persona_agents.testplans.loader import PlanFileError, load_plans

    plan = tmp_path / "plan.yaml"
    turns = [{"say": "Bo, hello.", "scene": ["anna", "bo"], "expect": {"speakers": ["bo"], "speaker_reason":
                                                                          "addressed"}}]
    plan.write_text(yaml.safe_dump({"name": "square", "npc": "anna", "turns": turns}))
    (loaded,) = load_plans([plan], ["anna", "bo"])
    assert loaded.plan.turns[0].scene == ["anna", "bo"]
    bad = [{"say": "Hi.", "scene": ["anna", "cy"], "expect": {"deltas": {"trust": {"direction": "up"}}}},
           {"say": "Hi.", "expect": {"speakers": ["anna"]}}]
    plan.write_text(yaml.safe_dump({"name": "square", "npc": "anna", "turns": bad}))
    with pytest.raises(PlanFileError) as caught:
        load_plans([plan], ["anna", "bo"])
    message = str(caught.value)
    assert "turn 1: scene: name NPCs present (ids; unknown: cy)" in message
    assert "turn 1: expect: deltas not for a scene turn" in message
    assert "turn 2: expect.speakers: only a scene turn" in message
