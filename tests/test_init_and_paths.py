"""A game in its own folder (issue 27): `persona-agents init`, paths in personas resolved
against the game folder whatever the working directory, and `npcs validate` finding the
adapters, model folders and plugin steps that personas name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from persona_agents.cli import main
from persona_agents.cli_init import EXAMPLE_NPC
from persona_agents.errors import AdapterError
from persona_agents.game import DEFAULT_GAME, load_game
from persona_agents.manager import AgentManager
from persona_agents.runtime import Runtime, game_dir, resolve_model_ref

from .conftest import NPCS_DIR, cli_env

EXPECTED_FILES = (
    "README.md", "npcs/_game.yaml", "npcs/_defaults.yaml", f"npcs/{EXAMPLE_NPC}.yaml",
    f"npcs/lore/{EXAMPLE_NPC}.yaml", f"npcs/tests/{EXAMPLE_NPC}.yaml", "npcs/persona.schema.json",
    "plugins/README.md",
)


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "persona_agents", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def game(tmp_path) -> Path:
    """A freshly scaffolded game folder."""
    result = invoke("init", str(tmp_path / "game"))
    assert result.exit_code == 0, result.output
    return tmp_path / "game"


def edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


# -- init --------------------------------------------------------------------------------

def test_init_writes_the_game_folder(game):
    for name in EXPECTED_FILES:
        assert (game / name).is_file(), name
    # The game file is today's default game, written out with comments on adding events.
    assert load_game(game / "npcs") == DEFAULT_GAME
    text = (game / "npcs" / "_game.yaml").read_text()
    assert "# To add an event" in text and "rent_room:" in text
    for name, event in DEFAULT_GAME.events.items():
        assert f"  {name}:\n" in text and event.description in text
    defaults = yaml.safe_load((game / "npcs" / "_defaults.yaml").read_text())
    assert defaults["pipeline"]["generate"] == [{"name": "transformers", "options": {"model": "embedded"}}]
    assert defaults["pipeline"]["prompt"][0]["name"] == "chat_template"
    persona = yaml.safe_load((game / "npcs" / f"{EXAMPLE_NPC}.yaml").read_text())
    assert persona["flag_rules"] and persona["lines"] and persona["knowledge"]["lore"] == [EXAMPLE_NPC]
    assert json.loads((game / "npcs" / "persona.schema.json").read_text())["title"] == "persona-agents NPC persona"
    readme = (game / "README.md").read_text()
    assert "persona-agents run-dialogue --npc" in readme and "persona-agents test" in readme


def test_init_refuses_a_folder_that_is_not_empty_and_force_only_adds(game):
    (game / "README.md").write_text("my own notes\n")
    (game / "npcs" / f"{EXAMPLE_NPC}.yaml").unlink()
    refused = invoke("init", str(game))
    assert refused.exit_code == 1
    assert f"{game} is not empty" in refused.output and "--force" in refused.output
    assert "Traceback" not in refused.output
    assert not (game / "npcs" / f"{EXAMPLE_NPC}.yaml").exists()

    forced = invoke("init", str(game), "--force")
    assert forced.exit_code == 0, forced.output
    assert (game / "README.md").read_text() == "my own notes\n"  # never overwritten
    assert (game / "npcs" / f"{EXAMPLE_NPC}.yaml").is_file()
    assert f"kept  {game / 'README.md'} (exists)" in forced.output
    assert f"wrote {game / 'npcs' / EXAMPLE_NPC}.yaml" in forced.output


def test_init_refuses_a_file_and_accepts_an_empty_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    result = invoke("init", str(tmp_path / "file"))
    assert result.exit_code == 1 and "is not a folder" in result.output
    (tmp_path / "empty").mkdir()
    assert invoke("init", str(tmp_path / "empty")).exit_code == 0
    assert (tmp_path / "empty" / "npcs" / "_game.yaml").is_file()


def test_init_then_validate_from_another_folder(game, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("npcs", "validate", "--npcs-dir", str(game / "npcs"), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"OK: 1 persona file(s) valid in {game / 'npcs'}"


@pytest.mark.model
def test_init_then_test_runs_the_scaffolded_plan(game, tmp_path):
    result = cli("test", "--npcs-dir", str(game / "npcs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Odette greets a stranger" in result.stdout
    assert " 0 failed (1 plans" in result.stdout and "[FAIL]" not in result.stdout


# -- paths resolve against the game folder -----------------------------------------------

def test_runtime_resolves_relative_paths_against_the_game_folder(tmp_path, monkeypatch):
    npcs = tmp_path / "game" / "npcs"
    (tmp_path / "game" / "models" / "base").mkdir(parents=True)
    npcs.mkdir()
    runtime = Runtime(npcs_dir=npcs)
    assert runtime.game_dir == tmp_path / "game"
    assert runtime.path("adapters/mine") == tmp_path / "game" / "adapters" / "mine"
    assert runtime.path(str(tmp_path / "abs")) == tmp_path / "abs"  # absolute: as given
    assert runtime.model_ref("embedded") == "embedded"  # keywords: as given
    assert runtime.model_ref("embedded:smollm2-135m-instruct") == "embedded:smollm2-135m-instruct"
    assert runtime.model_ref("models/base") == str(tmp_path / "game" / "models" / "base")
    assert runtime.model_ref("./models/other") == str(tmp_path / "game" / "models" / "other")
    assert runtime.model_ref("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_ref("models/base", npcs) == runtime.model_ref("models/base")
    # `--npcs-dir .` inside npcs/: the game folder is still its parent, not npcs/ itself.
    monkeypatch.chdir(npcs)
    assert game_dir(".") == tmp_path / "game"
    assert Runtime(npcs_dir=Path(".")).path("adapters/mine") == tmp_path / "game" / "adapters" / "mine"


def test_relative_adapter_resolves_against_the_game_folder_from_inside_npcs(npc_folder, monkeypatch):
    npc_folder("anna", pipeline={"prompt": ["sectioned"],
                                 "generate": [{"name": "multihead", "options": {"adapter": "adapters/mine"}}]})
    monkeypatch.chdir(npc_folder.folder)
    expected = npc_folder.folder.parent / "adapters" / "mine"
    with pytest.raises(AdapterError, match=f"{expected} does not exist"):
        AgentManager(Path(".")).turn("anna", "Hello")


def test_relative_local_model_resolves_against_the_game_folder(npc_folder, tiny_model_dir, tmp_path, monkeypatch):
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "tiny")
    npc_folder("anna", pipeline={"prompt": ["chat_template"],
                                 "generate": [{"name": "transformers", "options": {"model": "models/tiny"}}]})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    response = AgentManager(npc_folder.folder).turn("anna", "Hello", seed=1)
    assert response.meta["model"] == str(tmp_path / "models" / "tiny")


@pytest.mark.model
def test_sample_game_runs_from_another_working_directory(tmp_path):
    result = cli("run-dialogue", "--npcs-dir", str(NPCS_DIR), "--npc", "blacksmith_village_center",
                 "--say", "hi", "--json", "--seed", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    turn = json.loads(result.stdout.strip().splitlines()[-1])
    assert turn["text"].strip() and turn["meta"]["adapter"] == "training/adapters/smollm2-npc"
    assert turn["meta"]["steps"]["generate"] == ["multihead"] and "state_heads" not in turn["meta"]


# -- npcs validate finds adapters, models and plugins -------------------------------------

def _use_multihead(adapter: str):
    def change(data):
        data["pipeline"]["prompt"] = ["sectioned"]
        data["pipeline"]["generate"] = [{"name": "multihead", "options": {"adapter": adapter}}]
    return change


def test_validate_names_a_missing_adapter_with_file_field_and_path(game):
    persona = game / "npcs" / f"{EXAMPLE_NPC}.yaml"
    edit(persona, _use_multihead("adapters/my-game"))
    result = invoke("npcs", "validate", "--npcs-dir", str(game / "npcs"))
    assert result.exit_code == 1
    assert (f"{persona}: pipeline.generate[0].options.adapter: adapter folder 'adapters/my-game' does not exist; "
            f"looked at {game / 'adapters' / 'my-game'}") in result.output
    assert "Traceback" not in result.output
    (game / "adapters" / "my-game").mkdir(parents=True)
    assert invoke("npcs", "validate", "--npcs-dir", str(game / "npcs")).exit_code == 0
    # One file, too; and an adapter set in _defaults.yaml says where it came from.
    assert invoke("npcs", "validate", str(persona)).exit_code == 0
    edit(game / "npcs" / "_defaults.yaml", _use_multihead("adapters/gone"))
    edit(persona, lambda data: data.pop("pipeline"))
    result = invoke("npcs", "validate", str(persona))
    assert result.exit_code == 1
    assert (f"{persona}: pipeline.generate[0].options.adapter: adapter folder 'adapters/gone' (from _defaults.yaml) "
            f"does not exist; looked at {game / 'adapters' / 'gone'}") in result.output


def test_validate_checks_the_default_adapter_of_the_multihead_step(game):
    persona = game / "npcs" / f"{EXAMPLE_NPC}.yaml"
    edit(persona, lambda data: data["pipeline"].update(prompt=["sectioned"], generate=["multihead"]))
    result = invoke("npcs", "validate", "--npcs-dir", str(game / "npcs"))
    assert result.exit_code == 1
    assert "options.adapter: adapter folder 'training/adapters/smollm2-npc' (the step's default) does not exist; " \
           f"looked at {game / 'training' / 'adapters' / 'smollm2-npc'}" in result.output


def test_validate_checks_local_model_paths_but_not_model_ids(game, tmp_path, monkeypatch):
    persona = game / "npcs" / f"{EXAMPLE_NPC}.yaml"

    def model(ref):
        edit(persona, lambda data: data["pipeline"].update(
            generate=[{"name": "transformers", "options": {"model": ref}}]))
        return invoke("npcs", "validate", "--npcs-dir", str(game / "npcs"))

    result = model("./models/base")
    assert result.exit_code == 1
    assert (f"{persona}: pipeline.generate[0].options.model: model path './models/base' does not exist; "
            f"looked at {game / 'models' / 'base'}") in result.output
    assert model("HuggingFaceTB/SmolLM2-135M-Instruct").exit_code == 0  # a model id: not a path
    # A folder found only from the working directory no longer resolves there: said so.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints" / "base").mkdir(parents=True)
    result = model("checkpoints/base")
    assert result.exit_code == 1
    assert "options.model: model 'checkpoints/base' is not in the game folder; " \
           f"looked at {game / 'checkpoints' / 'base'}" in result.output
    (game / "checkpoints" / "base").mkdir(parents=True)
    assert model("checkpoints/base").exit_code == 0


def test_validate_names_a_step_no_plugin_registers_and_where_plugins_were_looked_for(game):
    persona = game / "npcs" / f"{EXAMPLE_NPC}.yaml"
    edit(persona, lambda data: data["pipeline"].update(postprocess=["game_rules", "shout"]))
    result = invoke("npcs", "validate", "--npcs-dir", str(game / "npcs"))
    assert result.exit_code == 1
    line = next(line for line in result.output.splitlines() if "pipeline.postprocess[1]" in line)
    assert str(persona) in line and "Unknown postprocess step 'shout'" in line
    assert f"local plugins were looked for in {game / 'plugins'}/*.py (no *.py files there)" in line
    assert result.output.count("pipeline.postprocess[1]") == 1
    # The game's own plugins folder is where it is found, whatever the working directory.
    (game / "plugins" / "shouting.py").write_text(
        "from persona_agents.hookspecs import hookimpl\n"
        "from persona_agents.steps import Step\n\n"
        "class Shout(Step):\n"
        "    name = 'shout'\n"
        "    stage = 'postprocess'\n\n"
        "    def run(self, turn):\n"
        "        return turn.replace(reply=turn.reply.upper())\n\n"
        "@hookimpl\n"
        "def register_steps(register):\n"
        "    register(Shout)\n")
    result = invoke("npcs", "validate", "--npcs-dir", str(game / "npcs"))
    assert result.exit_code == 0, result.output


def test_validate_reports_paths_with_other_problems_at_once(game):
    persona = game / "npcs" / f"{EXAMPLE_NPC}.yaml"

    def change(data):
        _use_multihead("adapters/missing")(data)
        data["flag_rules"]["rent_room"] = {}
    edit(persona, change)
    result = invoke("npcs", "validate", "--npcs-dir", str(game / "npcs"))
    assert result.exit_code == 1
    assert "flag_rules: unknown flag(s) 'rent_room'" in result.output
    assert "options.adapter: adapter folder 'adapters/missing' does not exist" in result.output


def test_the_sample_game_validates_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("npcs", "validate", "--npcs-dir", str(NPCS_DIR))
    assert result.exit_code == 0, result.output
