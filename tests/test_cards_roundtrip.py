"""Export then import of each sample NPC gives an equivalent persona (issue 31), tested
field by field, with the same lore entries (id, text, keywords, scope, stages, gates)
back in the same lore files; and the exported card imported into the sample game itself
leaves its lore files alone."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from click.testing import CliRunner

from persona_agents.cards.export import export_card
from persona_agents.cli import main
from persona_agents.lore.entries import load_lore_folder
from persona_agents.persona import Persona
from persona_agents.persona_loader import load_personas
from persona_agents.plugins import load_plugins

from .conftest import NPCS_DIR, PLUGINS_DIR, SAMPLE_NPC_IDS

#: Free text whose line breaks YAML folding decides: compared with whitespace normalised.
PROSE = {"role", "backstory", "speaking_style"}
V2_STRINGS = ("name", "description", "personality", "scenario", "first_mes", "mes_example", "creator_notes",
              "system_prompt", "post_history_instructions", "creator", "character_version")


@pytest.fixture(scope="module")
def samples():
    return load_personas(NPCS_DIR, load_plugins(PLUGINS_DIR).registry)


@pytest.fixture(scope="module")
def sample_lore():
    return load_lore_folder(NPCS_DIR / "lore")


def game_folder(root):
    """An empty game with the sample game's defaults and plugins."""
    npcs = root / "npcs"
    npcs.mkdir(parents=True)
    shutil.copy(NPCS_DIR / "_defaults.yaml", npcs / "_defaults.yaml")
    shutil.copytree(PLUGINS_DIR, root / "plugins")
    return npcs


@pytest.mark.parametrize("npc_id", SAMPLE_NPC_IDS)
def test_export_then_import_gives_an_equivalent_persona(tmp_path, npc_id, samples, sample_lore):
    card, warnings = export_card(npc_id, NPCS_DIR)
    assert card["spec"] == "chara_card_v2" and card["spec_version"] == "2.0"
    data = card["data"]
    for key in V2_STRINGS:
        assert isinstance(data[key], str), key
    assert isinstance(data["alternate_greetings"], list) and isinstance(data["tags"], list)
    original = samples[npc_id].persona
    assert data["name"] == original.name
    assert data["first_mes"] == original.example_lines[0].npc
    assert all(isinstance(e["keys"], list) and e["content"] for e in data["character_book"]["entries"])
    card_path = tmp_path / f"{npc_id}.card.json"
    card_path.write_text(json.dumps(card, indent=2))

    npcs = game_folder(tmp_path / "game")
    result = CliRunner().invoke(main, ["import", "card", str(card_path), "--npcs-dir", str(npcs)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output  # nothing of our own card is lost on the way
    imported = load_personas(npcs, load_plugins(tmp_path / "game" / "plugins").registry)[npc_id].persona

    for field in Persona.model_fields:
        ours, theirs = getattr(original, field), getattr(imported, field)
        if field in PROSE:
            assert " ".join(ours.split()) == " ".join(theirs.split()), field
        else:
            assert ours == theirs, field

    # the lore it may know, back in the files it came from, entry for entry
    lore = load_lore_folder(npcs / "lore")
    assert sorted(lore.sources) == sorted(original.knowledge.lore)
    for item in lore.items:
        assert item.entry == sample_lore.by_id[item.id].entry, item.id
        assert item.source == sample_lore.by_id[item.id].source
    known = {i.id for i in sample_lore.items if i.source in original.knowledge.lore
             and (i.entry.scope == "world" or npc_id in i.entry.known_by)}
    assert {item.id for item in lore.items} == known

    # the written persona says only what the game's defaults do not
    written = yaml.safe_load((npcs / f"{npc_id}.yaml").read_text())
    own = yaml.safe_load((NPCS_DIR / f"{npc_id}.yaml").read_text())
    assert set(written) <= set(own) | {"knowledge"}
    assert written.get("pipeline") == own.get("pipeline")


def test_a_sample_card_imported_into_its_own_game_leaves_the_lore_alone(tmp_path, sample_npcs_copy):
    npcs = sample_npcs_copy
    card, _ = export_card("blacksmith_village_center", NPCS_DIR)
    card_path = tmp_path / "brann.json"
    card_path.write_text(json.dumps(card))
    lore_before = {p.name: p.read_bytes() for p in (npcs / "lore").iterdir()}
    refused = CliRunner().invoke(main, ["import", "card", str(card_path), "--npcs-dir", str(npcs)])
    assert refused.exit_code == 1
    assert f"{npcs / 'blacksmith_village_center.yaml'}: exists; give --force to replace it" in refused.output
    assert "lore" not in refused.output.split("exist:")[1]  # the lore files hold these entries already
    result = CliRunner().invoke(main, ["import", "card", str(card_path), "--npcs-dir", str(npcs), "--force"])
    assert result.exit_code == 0, result.output
    assert f"Unchanged {npcs / 'lore' / 'world.yaml'}" in result.output
    assert f"Unchanged {npcs / 'lore' / 'brann.yaml'}" in result.output
    assert {p.name: p.read_bytes() for p in (npcs / "lore").iterdir()} == lore_before
    again = load_personas(npcs, load_plugins(npcs.parent / "plugins").registry)["blacksmith_village_center"]
    original = load_personas(NPCS_DIR, load_plugins(PLUGINS_DIR).registry)["blacksmith_village_center"]
    assert again.persona.model_dump(exclude={"backstory"}) == original.persona.model_dump(exclude={"backstory"})
