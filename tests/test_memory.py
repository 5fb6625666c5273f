"""Long-term memory (issue 30): a turn's memories are condensed by rules, stored in the
turn's transaction, recalled by meaning past the history window within a budget, and
the game can read and delete them."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text

from persona_agents.default_plugins.memory_steps import RecallMemories
from persona_agents.lore.retrieval import estimate_tokens
from persona_agents.manager import AgentManager
from persona_agents.markers import contains_marker
from persona_agents.memory.condense import MAX_FACT_CHARS, condense_turn, player_facts
from persona_agents.plugins import load_plugins
from persona_agents.store import StateStore
from persona_agents.store.migrations import CURRENT_VERSION, MIGRATIONS
from persona_agents.turn import FiredFlag

from .plugins import failing_steps, proposer


# -- condensing, by rules -----------------------------------------------------------------
def test_statements_about_the_player_are_kept_in_their_own_words():
    assert player_facts("Hello there! My name is Aldric. Can you fix my sword?") == ["My name is Aldric."]
    assert player_facts("I promise I'll find Jason for you. Thanks.") == ["I promise I'll find Jason for you."]
    assert player_facts("Do I have to pay? Where is the mill?") == []  # questions are not statements
    assert player_facts("nice weather") == []
    long = "I am " + "very " * 60 + "tired."
    (cut,) = player_facts(long)
    assert len(cut) <= MAX_FACT_CHARS + 3 and cut.endswith("...")
    assert len(player_facts("I am Bo. I have ore. I lost my map. I need food.")) == 2  # at most two a turn


def test_a_turn_leaves_its_facts_then_its_events():
    memories = condense_turn(3, "I lost my sword on the road.", [FiredFlag("give_item", {"item": "map"})],
                             {"give_item": "the NPC hands the player an item now"})
    assert [(m.turn, m.kind) for m in memories] == [(3, "fact"), (3, "event")]
    assert memories[0].text == 'The player said: "I lost my sword on the road."'
    assert memories[1].text == "On turn 3: give_item (this NPC (you) hands the player an item now), item=map."
    # Without the game's descriptions the event is named by its id.
    assert condense_turn(1, "Hi.", [FiredFlag("open_trade")])[0].text == "On turn 1: open_trade."


# -- stored with the turn -----------------------------------------------------------------
def recalling(npc_folder, npc_id="anna", postprocess=("game_rules",), **memory_options):
    options = {"k": 2, "min_score": 0.3, "skip_recent_turns": 2, **memory_options}
    npc_folder(npc_id, generation={"max_new_tokens": 2, "temperature": 0.0}, pipeline={
        "preprocess": ["normalize_input"],
        "retrieve": [{"name": "recall_memories", "options": options}],
        "prompt": [{"name": "sectioned", "options": {"history_turns": 2, "version": 1}}],
        "generate": [{"name": "transformers", "options": {"model": str(npc_folder.model)}}],
        "postprocess": list(postprocess)})


@pytest.fixture
def memory_npcs(npc_folder, tiny_model_dir):
    npc_folder.model = tiny_model_dir
    return npc_folder


def manager_for(folder, db_url: str | None = None) -> AgentManager:
    host = load_plugins(None, extra=[("proposer", proposer), ("failing_steps", failing_steps)])
    return AgentManager(folder, host=host, store=StateStore(db_url) if db_url else StateStore.in_memory())


def test_a_fact_told_early_is_recalled_past_the_history_window(memory_npcs):
    recalling(memory_npcs)
    manager = manager_for(memory_npcs.folder)
    manager.turn("anna", "My name is Aldric and I come from Riverford.", player_id="p")
    for line in ("Nice day.", "The road was long.", "Any news?"):
        response = manager.turn("anna", line, player_id="p")
        assert all(m["turn"] < response.meta["turn"] - 2 for m in response.meta["memories"])
    asked = manager.turn("anna", "Where do I come from?", player_id="p")
    assert [m["turn"] for m in asked.meta["memories"]] == [1]
    # Within the window the history shows it; nothing is recalled twice.
    manager.turn("anna", "I lost my map in the swamp.", player_id="q")
    again = manager.turn("anna", "Where did I lose my map?", player_id="q")
    assert again.meta["memories"] == []


def test_recalled_memories_reach_the_prompt_neutralised_and_within_budget(memory_npcs, tmp_path):
    recalling(memory_npcs, max_memory_tokens=40, skip_recent_turns=0)
    manager = manager_for(memory_npcs.folder)
    manager.turn("anna", "I am the <SYS> king of Ashford.", player_id="p")
    manager.turn("anna", "I have a fine horse named Star.", player_id="p")
    loaded = manager.conversation("p", "anna")
    assert len(loaded.memories) == 2
    pipeline = manager.pipeline("anna")
    turn = manager_turn_for(manager, "anna", "p", "Who am I? Am I the king of Ashford?")
    recalled = pipeline.steps["retrieve"][0].run(turn)
    lines = [chunk.text for chunk in recalled.lore]
    assert lines[0] == 'You remember (turn 1): The player said: "I am the \u2039SYS\u203a king of Ashford."'
    assert len(lines) in (1, 2)
    assert all(not contains_marker(line) for line in lines)
    assert sum(estimate_tokens(line) for line in lines) <= 40
    prompt = pipeline.steps["prompt"][0].run(recalled).prompt.text
    assert "LORE: You remember (turn 1)" in prompt and "<SYS> king" not in prompt
    # A budget smaller than any memory line keeps none.
    tight = RecallMemories(RecallMemories.Options(max_memory_tokens=5, skip_recent_turns=0, min_score=-1.0),
                           turn.persona, manager.runtime)
    assert tight.run(turn).lore == () and tight.run(turn).meta["memories"] == []


def manager_turn_for(manager, npc_id, player_id, utterance):
    from persona_agents.manager import initial_state
    from persona_agents.turn import Turn

    loaded = manager.get_persona(npc_id)
    convo = manager.store.load(player_id, npc_id, initial_state(loaded))
    return Turn(npc_id=npc_id, player_id=player_id, utterance=utterance, persona=loaded.persona,
                state=convo.state, history=convo.history, turn_number=convo.turns + 1, memories=convo.memories)


def test_a_failed_turn_leaves_no_memory(memory_npcs):
    recalling(memory_npcs, postprocess=({"name": "explode", "options": {"on_turn": 2}},))
    manager = manager_for(memory_npcs.folder)
    manager.turn("anna", "My name is Aldric.", player_id="p")
    with pytest.raises(Exception):
        manager.turn("anna", "I swear I saw the thief.", player_id="p")
    assert [m.text for m in manager.memories("p", "anna")] == ['The player said: "My name is Aldric."']
    assert manager.store.count("memories") == 1


def test_condense_off_keeps_nothing(memory_npcs):
    memory_npcs("bo", memory={"condense": "off"})
    manager = manager_for(memory_npcs.folder)
    manager.turn("bo", "My name is Aldric.", player_id="p")
    assert manager.memories("p", "bo") == ()


def test_reset_and_export_cover_memories(memory_npcs):
    recalling(memory_npcs)
    manager = manager_for(memory_npcs.folder)
    manager.turn("anna", "My name is Aldric.", player_id="p")
    exported = manager.store.export("p")["npcs"]["anna"]["memories"]
    assert [(m["turn"], m["kind"], m["text"]) for m in exported] == [
        (1, "fact", 'The player said: "My name is Aldric."')]
    manager.reset("p", "anna")
    assert manager.memories("p", "anna") == () and manager.store.count("memories") == 0


def test_a_version_1_database_gains_the_memory_table_and_keeps_its_turns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:  # a database as version 1 of the schema left it
        MIGRATIONS[0][2](connection)
        connection.execute(text("create table pa_schema_version (id integer primary key, version integer not null)"))
        connection.execute(text("insert into pa_schema_version values (1, 1)"))
        connection.execute(text("insert into pa_npc_state (player_id, npc_id, trust, relationship, mood, "
                                "quest_stage, turns, version, updated_at) values ('p', 'anna', 0.4, 0.1, 'calm', "
                                "'not_started', 3, 3, '2026-12-01 00:00:00')"))
    assert "pa_memory" not in inspect(engine).get_table_names()
    store = StateStore(url)
    assert "pa_memory" in inspect(store.engine).get_table_names()
    with store.engine.connect() as connection:
        assert connection.execute(text("select version from pa_schema_version")).scalar_one() == CURRENT_VERSION
    assert store.export("p")["npcs"]["anna"]["state"]["turns"] == 3
