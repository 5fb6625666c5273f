"""Lore files (YAML and Markdown), their error messages, and the visibility rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from persona_agents.errors import LoreError, LoreFileError
from persona_agents.lore.entries import LoreFolder, load_lore_folder
from persona_agents.lore.scope import check_knowledge, hidden_reason, is_visible, visible_items

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
    for npc_id, loaded in sample_personas().items():
        check_knowledge(npc_id, loaded.persona.knowledge, collection)


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
    assert hidden_reason(items["w1"], "anna", knowledge(["other"]), None) == "file 'mixed' is not in the NPC's knowledge.lore"
    assert hidden_reason(items["mine"], "bert", thief, None) == "scope npc: known only by anna"
    assert hidden_reason(items["guild"], "anna", anna, None) == "scope faction: known only by faction(s) thieves"
    assert hidden_reason(items["later"], "anna", anna, "not_started") == (
        "known only at stage(s) in_progress; the quest stage is not_started")


def test_unknown_lore_file_in_knowledge_is_an_error(tmp_path):
    write_lore(tmp_path, "world", [WORLD])
    with pytest.raises(LoreError) as info:
        check_knowledge("anna", knowledge(["world", "wrold"]), load_lore_folder(tmp_path))
    assert "NPC 'anna' lists lore file(s) 'wrold' in knowledge.lore" in str(info.value)
    assert "Available: world." in str(info.value)
