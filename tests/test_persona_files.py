"""Persona schema, defaults, and the error messages writers see (text included)."""

from __future__ import annotations

import json

import pytest
import yaml

from persona_agents.errors import PersonaFileError
from persona_agents.persona import persona_json_schema
from persona_agents.persona_loader import deep_merge, load_persona_file, load_personas
from persona_agents.plugins import load_plugins

from .conftest import NPCS_DIR, PLUGINS_DIR, SAMPLE_NPC_IDS


@pytest.fixture(scope="module")
def registry():
    return load_plugins(PLUGINS_DIR).registry


def test_the_six_sample_npcs_load_with_their_fixed_ids(registry):
    personas = load_personas(NPCS_DIR, registry)
    assert sorted(personas) == sorted(SAMPLE_NPC_IDS)
    for npc_id, loaded in personas.items():
        assert loaded.path.name == f"{npc_id}.yaml"
        assert loaded.persona.backstory and loaded.persona.example_lines
        assert loaded.persona.knowledge.lore, f"{npc_id} lists no lore"


def test_every_lore_reference_names_a_lore_file(registry):
    stems = {p.stem for p in (NPCS_DIR / "lore").glob("*.yaml")}
    for loaded in load_personas(NPCS_DIR, registry).values():
        assert set(loaded.persona.knowledge.lore) <= stems, loaded.path


def test_defaults_merge_under_each_persona(npc_folder, registry):
    (npc_folder.folder / "_defaults.yaml").write_text(
        yaml.safe_dump({"generation": {"temperature": 0.2, "top_p": 0.5}, "language": "de"})
    )
    npc_folder("anna", generation={"max_new_tokens": 5})
    loaded = load_personas(npc_folder.folder, registry)["anna"]
    gen = loaded.persona.generation
    assert (gen.temperature, gen.top_p, gen.max_new_tokens) == (0.2, 0.5, 5)
    assert loaded.persona.language == "de"


def test_deep_merge_replaces_lists_and_merges_mappings():
    assert deep_merge({"a": {"x": 1, "y": [1]}, "b": 1}, {"a": {"y": [2]}}) == {"a": {"x": 1, "y": [2]}, "b": 1}


def test_broken_file_lists_every_problem_as_file_field_message(npc_folder, registry):
    path = npc_folder("anna", traits="not a list", initial_state={"trust": 1.5, "moood": "sad"}, favourite_colour="red")
    with pytest.raises(PersonaFileError) as info:
        load_personas(npc_folder.folder, registry)
    lines = info.value.problems
    hint = "(check the spelling; `persona-agents schema` lists the fields)"
    assert f"{path}: favourite_colour: unknown field {hint}" in lines
    assert f"{path}: initial_state.moood: unknown field {hint}" in lines
    assert any(line.startswith(f"{path}: initial_state.trust: Input should be less than or equal to 1")
               for line in lines)
    assert any(line.startswith(f"{path}: traits: Input should be a valid list") for line in lines)
    assert len(lines) == 4
    assert str(info.value).startswith("4 problem(s) in persona files:")


def test_invalid_yaml_names_the_line(npc_folder, registry):
    path = npc_folder.folder / "broken.yaml"
    path.write_text("id: broken\nname: [unclosed\n")
    with pytest.raises(PersonaFileError) as info:
        load_personas(npc_folder.folder, registry)
    assert info.value.problems[0].startswith(f"{path}: line 3, column 1: invalid YAML")


def test_unknown_step_names_stage_file_and_available_steps(npc_folder, registry):
    path = npc_folder("anna", pipeline={"retrieve": ["keyword_lor"], "prompt": ["chat_template"],
                                        "generate": ["transformers"]})
    with pytest.raises(PersonaFileError) as info:
        load_personas(npc_folder.folder, registry)
    assert info.value.problems == [
        f"{path}: pipeline.retrieve[0]: Unknown retrieve step 'keyword_lor' in {path} (pipeline.retrieve). "
        f"Available: {', '.join(registry.names('retrieve'))}."
    ]


def test_step_of_another_stage_says_where_it_belongs(npc_folder, registry):
    path = npc_folder("anna", pipeline={"preprocess": ["chat_template"], "prompt": ["chat_template"],
                                        "generate": ["transformers"]})
    with pytest.raises(PersonaFileError) as info:
        load_personas(npc_folder.folder, registry)
    assert info.value.problems[0].startswith(f"{path}: pipeline.preprocess[0]: Unknown preprocess step 'chat_template'")
    assert info.value.problems[0].endswith("('chat_template' is a prompt step.)")


def test_option_of_wrong_type_names_option_and_expected_type(npc_folder, registry):
    path = npc_folder("anna", pipeline={
        "preprocess": [{"name": "normalize_input", "options": {"max_chars": "lots"}}],
        "prompt": ["chat_template"], "generate": ["transformers"],
    })
    with pytest.raises(PersonaFileError) as info:
        load_personas(npc_folder.folder, registry)
    assert info.value.problems == [
        f"{path}: pipeline.preprocess[0].options.max_chars: option 'max_chars' of step 'normalize_input' expects int: "
        "Input should be a valid integer, unable to parse string as an integer (got 'lots')."
    ]


def test_unknown_option_lists_valid_options(npc_folder, registry):
    path = npc_folder("anna", pipeline={
        "preprocess": [{"name": "normalize_input", "options": {"max_len": 5}}],
        "prompt": ["chat_template"], "generate": ["transformers"],
    })
    with pytest.raises(PersonaFileError) as info:
        load_persona_file(path, registry)
    assert info.value.problems == [
        f"{path}: pipeline.preprocess[0].options.max_len: step 'normalize_input' has no option 'max_len'. "
        "Valid options: max_chars, collapse_whitespace."
    ]


def test_stage_cardinality_is_enforced(npc_folder, registry):
    path = npc_folder("anna", pipeline={"prompt": ["chat_template", "sectioned"], "generate": []})
    with pytest.raises(PersonaFileError) as info:
        load_personas(npc_folder.folder, registry)
    assert info.value.problems == [
        f"{path}: pipeline: stage 'prompt' takes exactly 1 step(s), got 2; "
        "stage 'generate' takes exactly 1 step(s), got 0"
    ]


def test_flag_rules_accept_only_the_vocabulary(npc_folder, registry):
    path = npc_folder("anna", flag_rules={"give_itme": {"requires_items": ["x"]}})
    with pytest.raises(PersonaFileError) as info:
        load_personas(npc_folder.folder, registry)
    assert info.value.problems[0].startswith(f"{path}: flag_rules: ")
    assert "unknown flag(s) 'give_itme'; valid flags: give_item, give_hint" in info.value.problems[0]


def test_duplicate_ids_name_both_files(npc_folder, registry):
    first = npc_folder("anna")
    second = npc_folder.folder / "anna_again.yaml"
    second.write_text(first.read_text())
    with pytest.raises(PersonaFileError) as info:
        load_personas(npc_folder.folder, registry)
    assert info.value.problems == [f"{second}: id: 'anna' is already used by {first}"]


def test_json_schema_describes_the_persona_fields():
    schema = persona_json_schema()
    assert schema["additionalProperties"] is False
    assert {"id", "name", "pipeline", "initial_state", "flag_rules", "generation"} <= set(schema["properties"])
    assert schema["required"] == ["id", "name", "role", "pipeline"]
    json.dumps(schema)  # serialisable


def test_shipped_schema_file_is_current():
    shipped = json.loads((NPCS_DIR / "persona.schema.json").read_text())
    assert shipped == persona_json_schema(), "run `make schema` after changing persona.py"
