"""Lore files (YAML and Markdown), their error messages, the game's quest stages, and the
visibility rule with its gates."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from persona_agents.errors import LoreError, LoreFileError
from persona_agents.lore.entries import LoreFolder, load_lore_folder
from persona_agents.lore.scope import LoreFacts, check_knowledge, hidden_reason, is_visible, visible_items

from .conftest import NPCS_DIR, SAMPLE_NPC_IDS
from .lore_support import sample_personas, write_lore

WORLD = {"id": "w1", "text": "Ashford is a river town.", "scope": "world"}


def knowledge(lore=(), factions=()):
    return SimpleNamespace(lore=list(lore), factions=list(factions))


def problems_of(folder) -> str:
    with pytest.raises(LoreFileError) as info:
        load_lore_folder(folder)
    return str(info.value)


# -- the sample lore -----------------------------------------------------------------
def test_sample_lore_loads_and_every_npc_has_private_and_gated_knowledge():
    collection = load_lore_folder(NPCS_DIR / "lore")
    assert len(collection.items) >= 40
    for npc_id in SAMPLE_NPC_IDS:
        private = [i for i in collection.items if i.entry.scope == "npc" and npc_id in i.entry.known_by]
        assert private, f"{npc_id} has no private lore"
    gated = {i.id for i in collection.items if i.entry.stages}
    assert {"silvia_brother_hideout", "dorian_jason_hideout"} <= gated
    assert {i.id for i in collection.gated} == {
        "dorian_jason_alive", "dorian_jason_hideout", "dorian_why_jason_hides", "dorian_jasons_letter",
        "pip_map_details"}
    for npc_id, loaded in sample_personas().items():
        check_knowledge(npc_id, loaded.persona.knowledge, collection)


def test_sample_secrets_are_gated_like_the_flags_that_reveal_them():
    """world.md: Dorian reveals that Jason is alive (npc_main_story) and hands over his
    letter (give_item) from trust 0.5; Pip gives the map to a friend (relationship 0.5).
    The lore of each secret opens exactly where the persona's rule lets its flag fire."""
    by_id = load_lore_folder(NPCS_DIR / "lore").by_id
    dorian = sample_personas()["uncle_hideout"].persona.flag_rules
    pip = sample_personas()["merchant_traveling"].persona.flag_rules
    for entry_id in ("dorian_jason_alive", "dorian_jason_hideout", "dorian_why_jason_hides"):
        assert by_id[entry_id].entry.min_trust == dorian["npc_main_story"].min_trust == 0.5
    assert by_id["dorian_jasons_letter"].entry.min_trust == dorian["give_item"].min_trust == 0.5
    assert by_id["pip_map_details"].entry.min_relationship == pip["give_item"].min_relationship == 0.5
    # Maren's rule for the grove has no state condition (the riddle is judged in the
    # conversation), so no entry of hers is gated on state.
    maren = sample_personas()["hermit_forest"].persona.flag_rules["unlock_hidden_path"]
    gates = (maren.min_trust, maren.min_relationship, maren.requires_items, maren.requires_actions)
    assert gates == (None, None, [], [])
    assert not [i for i in load_lore_folder(NPCS_DIR / "lore").gated if i.source == "maren"]


# -- YAML ----------------------------------------------------------------------------
def test_yaml_errors_name_file_entry_and_field(tmp_path):
    path = write_lore(tmp_path, "bad", [
        WORLD,
        {"id": "n1", "text": "A secret.", "scope": "npc"},
        {"id": "n2", "text": "x", "scope": "everyone"},
        {"id": "n3", "text": "x", "scope": "world", "colour": "red"},
        {"id": "n4", "text": "x", "scope": "world", "stages": []},
        {"id": "n5", "text": "x", "scope": "world", "known_by": ["brann"]},
        {"id": "bad id", "text": "x", "scope": "world"},
        {"text": "no id", "scope": "world"},
        "just a string",
    ])
    message = problems_of(tmp_path)
    assert f"{path}: entries[1] (n1): scope 'npc' needs `known_by`" in message
    assert f"{path}: entries[2] (n2): scope: Input should be 'world', 'faction' or 'npc'" in message
    assert f"{path}: entries[3] (n3): colour: unknown field 'colour'; valid fields: id, text, scope" in message
    assert f"{path}: entries[4] (n4): `stages: []` would hide the entry at every stage" in message
    assert f"{path}: entries[5] (n5): scope 'world' is known to every NPC" in message
    assert "entries[6] (bad id): id: 'bad id' is not a valid id" in message
    assert f"{path}: entries[7]: id: Field required" in message
    assert f"{path}: entries[8]: expected a mapping with id, text and scope, got str" in message
    assert message.startswith("8 problem(s) in lore files:")


def test_gate_fields_load_and_their_errors_name_the_field(tmp_path):
    path = write_lore(tmp_path, "gates", [
        {**WORLD, "min_trust": 0.6, "min_relationship": -0.2, "requires_items": ["city_pass"],
         "requires_actions": ["solved_riddle"]},
        {"id": "g1", "text": "x", "scope": "world", "min_trust": 1.5},
        {"id": "g2", "text": "x", "scope": "world", "min_relationship": -2},
        {"id": "g3", "text": "x", "scope": "world", "requires_items": [""]},
        {"id": "g4", "text": "x", "scope": "world", "requires_actions": "solved_riddle"},
        {"id": "g5", "text": "x", "scope": "world", "min_trust": "high"},
    ])
    message = problems_of(tmp_path)
    assert f"{path}: entries[1] (g1): min_trust: Input should be less than or equal to 1" in message
    assert f"{path}: entries[2] (g2): min_relationship: Input should be greater than or equal to -1" in message
    assert f"{path}: entries[3] (g3): requires_items: names must not be empty" in message
    assert f"{path}: entries[4] (g4): requires_actions: Input should be a valid list" in message
    assert f"{path}: entries[5] (g5): min_trust: Input should be a valid number" in message
    assert message.startswith("5 problem(s) in lore files:")
    write_lore(tmp_path, "gates", [{**WORLD, "min_trust": 0.6, "min_relationship": -0.2,
                                    "requires_items": ["city_pass"], "requires_actions": ["solved_riddle"]}])
    (item,) = load_lore_folder(tmp_path).items
    entry = item.entry
    assert (entry.min_trust, entry.min_relationship, entry.requires_items, entry.requires_actions) == (
        0.6, -0.2, ["city_pass"], ["solved_riddle"])
    assert entry.gated


def test_stages_must_be_the_games_quest_stages(tmp_path):
    npcs = tmp_path / "npcs"
    path = write_lore(npcs / "lore", "quest", [
        {**WORLD, "stages": ["in_progress"]},
        {"id": "q1", "text": "x", "scope": "world", "stages": ["in_progress", "finished"]},
        {"id": "q2", "text": "x", "scope": "world", "stages": ["started", "done"]},
    ])
    message = problems_of(npcs / "lore")  # no _game.yaml: the default three stages
    assert f"{path}: entries[1] (q1): stages: 'finished' is not a declared quest stage; " \
           "declared quest stages: not_started, in_progress, complete" in message
    assert f"{path}: entries[2] (q2): stages: 'started', 'done' are not declared quest stages; " \
           "declared quest stages: not_started, in_progress, complete" in message
    assert message.startswith("2 problem(s) in lore files:")

    (npcs / "lore" / "intro.md").write_text("## m1\n```yaml\nscope: world\nstages: [started]\n```\nText.\n")
    game = npcs / "_game.yaml"
    game.write_text("events: {greet: {description: the NPC greets the player}}\n"
                    "quest_stages: [unmet, started, in_progress, done]\n")
    message = problems_of(npcs / "lore")
    assert f"{path}: entries[1] (q1): stages: 'finished' is not a declared quest stage; " \
           f"declared quest stages (in {game}): unmet, started, in_progress, done" in message
    assert "q2" not in message and "intro.md" not in message
    assert message.startswith("1 problem(s) in lore files:")

    # The folder reloads when the game changes, even if no lore file does.
    write_lore(npcs / "lore", "quest", [{**WORLD, "stages": ["in_progress"]}])
    folder = LoreFolder(npcs / "lore")
    assert len(folder.current().items) == 2
    game.write_text("events: {greet: {description: the NPC greets the player}}\nquest_stages: [unmet, done]\n")
    with pytest.raises(LoreFileError) as info:
        folder.current()
    assert f"{path}: entries[0] (w1): stages: 'in_progress' is not a declared quest stage; " \
           f"declared quest stages (in {game}): unmet, done" in str(info.value)
    assert "intro.md: line 1 (## m1): stages: 'started' is not a declared quest stage" in str(info.value)
    # Stages given explicitly win (a caller that already holds the game).
    assert len(load_lore_folder(npcs / "lore", stages=["in_progress", "started"]).items) == 2


def test_yaml_syntax_error_has_a_line_number(tmp_path):
    (tmp_path / "broken.yaml").write_text("entries:\n  - id: a\n    text: [unclosed\n")
    message = problems_of(tmp_path)
    assert f"{tmp_path / 'broken.yaml'}: line " in message and "invalid YAML" in message


def test_duplicate_ids_and_names_across_files_are_errors(tmp_path):
    write_lore(tmp_path, "one", [WORLD])
    write_lore(tmp_path, "two", [WORLD])
    write_lore(tmp_path, "three", [{**WORLD, "id": "w3"}])
    (tmp_path / "three.md").write_text("## other\n```yaml\nscope: world\n```\nText.\n")
    message = problems_of(tmp_path)
    assert f"{tmp_path / 'two.yaml'}: entry 'w1': the id is already used in {tmp_path / 'one.yaml'}" in message
    assert f"{tmp_path / 'three.yaml'}: the name 'three' is also used by {tmp_path / 'three.md'}" in message


def test_yaml_defaults_and_whitespace_normalised_text(tmp_path):
    write_lore(tmp_path, "guild", [{"id": "g1", "text": "The  password\n  is heron."}],
               defaults={"scope": "faction", "factions": ["thieves"]})
    (item,) = load_lore_folder(tmp_path).items
    assert item.entry.scope == "faction" and item.entry.factions == ["thieves"]
    assert item.text == "The password is heron." and item.source == "guild"


# -- Markdown ------------------------------------------------------------------------
MARKDOWN = """---
scope: npc
known_by: [hermit_forest]
---
# Maren's secrets

Notes for writers are ignored until the first entry.

## maren_well

```yaml
stages: [in_progress]
keywords: [well, "deep water"]
min_trust: 0.4
requires_items: [rope]
```

An old well behind the chapel
leads down to the tunnels.

## maren_owl
Maren's owl is called Pell.

```text
## not a heading inside a fence
```
"""


def test_markdown_entries_with_front_matter_and_yaml_blocks(tmp_path):
    (tmp_path / "maren_extra.md").write_text(MARKDOWN)
    well, owl = load_lore_folder(tmp_path).items
    assert well.id == "maren_well" and well.source == "maren_extra"
    assert well.entry.known_by == ["hermit_forest"] and well.entry.stages == ["in_progress"]
    assert well.entry.keywords == ["well", "deep water"]
    assert (well.entry.min_trust, well.entry.requires_items, well.entry.gated) == (0.4, ["rope"], True)
    assert not owl.entry.gated
    assert well.text == "An old well behind the chapel leads down to the tunnels."
    assert owl.entry.scope == "npc" and owl.text.startswith("Maren's owl is called Pell.")
    assert "not a heading inside a fence" in owl.text


def test_markdown_errors_name_file_line_and_entry(tmp_path):
    path = tmp_path / "bad.md"
    path.write_text(
        "## no_scope\nText.\n\n"                     # line 1
        "## bad_yaml\n```yaml\nscope: [oops\n```\nText.\n\n"  # line 4
        "## empty\n```yaml\nscope: world\n```\n\n"   # line 10
        "## with_text\n```yaml\nscope: world\ntext: nope\n```\nText.\n"  # line 15
    )
    message = problems_of(tmp_path)
    assert f"{path}: line 1 (## no_scope): scope: Field required" in message
    assert f"{path}: line 4 (## bad_yaml): line 6, column" in message and "invalid YAML" in message
    assert f"{path}: line 10 (## empty): the entry has no text" in message
    assert f"{path}: line 15 (## with_text): `text` cannot be set in the yaml block" in message


def test_folder_reloads_when_a_file_changes(tmp_path):
    path = write_lore(tmp_path, "world", [WORLD])
    folder = LoreFolder(tmp_path)
    first = folder.current()
    assert folder.current() is first  # unchanged files are not read again
    write_lore(tmp_path, "world", [{**WORLD, "text": "Ashford is a much larger river town."}])
    assert path.exists() and folder.current().by_id["w1"].text == "Ashford is a much larger river town."


# -- scope ---------------------------------------------------------------------------
def test_visibility_rule(tmp_path):
    write_lore(tmp_path, "mixed", [
        WORLD,
        {"id": "mine", "text": "x", "scope": "npc", "known_by": ["anna"]},
        {"id": "guild", "text": "x", "scope": "faction", "factions": ["thieves"]},
        {"id": "later", "text": "x", "scope": "world", "stages": ["in_progress"]},
    ])
    items = load_lore_folder(tmp_path).by_id
    anna = knowledge(["mixed"])
    thief = knowledge(["mixed"], ["thieves"])
    assert [i.id for i in visible_items(items.values(), "anna", anna, "not_started")] == ["w1", "mine"]
    assert [i.id for i in visible_items(items.values(), "bert", thief, "in_progress")] == ["w1", "guild", "later"]
    assert not is_visible(items["w1"], "anna", knowledge(["other"]), None)
    assert (hidden_reason(items["w1"], "anna", knowledge(["other"]), None)
            == "file 'mixed' is not in the NPC's knowledge.lore")
    assert hidden_reason(items["mine"], "bert", thief, None) == "scope npc: known only by anna"
    assert hidden_reason(items["guild"], "anna", anna, None) == "scope faction: known only by faction(s) thieves"
    assert hidden_reason(items["later"], "anna", anna, "not_started") == (
        "known only at stage(s) in_progress; the quest stage is not_started")


def test_gates_in_the_visibility_rule(tmp_path):
    write_lore(tmp_path, "gated", [
        {"id": "trusted", "text": "x", "scope": "world", "min_trust": 0.6},
        {"id": "friend", "text": "x", "scope": "world", "min_relationship": 0.5},
        {"id": "pass", "text": "x", "scope": "world", "requires_items": ["city_pass", "seal"]},
        {"id": "riddle", "text": "x", "scope": "world", "requires_actions": ["solved_riddle"]},
        {"id": "late_trusted", "text": "x", "scope": "npc", "known_by": ["anna"], "stages": ["complete"],
         "min_trust": 0.6},
    ])
    items = load_lore_folder(tmp_path).by_id
    anna = knowledge(["gated"])
    low = LoreFacts(stage="in_progress", trust=0.2, relationship=-0.1)
    assert hidden_reason(items["trusted"], "anna", anna, low) == "trust 0.20 < 0.60"
    assert hidden_reason(items["friend"], "anna", anna, low) == "relationship -0.10 < +0.50"
    assert hidden_reason(items["pass"], "anna", anna, LoreFacts(items=frozenset({"seal"}))) == "player lacks city_pass"
    assert hidden_reason(items["riddle"], "anna", anna, low) == "player has not done solved_riddle"
    # Knowledge, scope and stage are reported first, as before.
    assert hidden_reason(items["late_trusted"], "bert", anna, low) == "scope npc: known only by anna"
    assert hidden_reason(items["late_trusted"], "anna", anna, low).startswith("known only at stage(s) complete")
    # At the gate is enough (>=, as flag rules), and every gate must hold.
    at = LoreFacts(stage="complete", trust=0.6, relationship=0.5, items=frozenset({"city_pass", "seal", "rope"}),
                   actions=frozenset({"solved_riddle"}))
    assert [i.id for i in visible_items(items.values(), "anna", anna, at)] == list(items)
    assert [i.id for i in visible_items(items.values(), "anna", anna, low)] == []
    # A bare stage (the state unknown) keeps every state-gated entry hidden.
    assert hidden_reason(items["trusted"], "anna", anna, "in_progress") == "trust unknown; needs 0.60"
    assert hidden_reason(items["friend"], "anna", anna, None) == "relationship unknown; needs +0.50"
    assert not is_visible(items["riddle"], "anna", anna, "complete")


def test_unknown_lore_file_in_knowledge_is_an_error(tmp_path):
    write_lore(tmp_path, "world", [WORLD])
    with pytest.raises(LoreError) as info:
        check_knowledge("anna", knowledge(["world", "wrold"]), load_lore_folder(tmp_path))
    assert "NPC 'anna' lists lore file(s) 'wrold' in knowledge.lore" in str(info.value)
    assert "Available: world." in str(info.value)
