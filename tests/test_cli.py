"""The `persona-agents` command: CliRunner for the quick commands, real subprocesses
for dialogue on the real embedded model."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from click.testing import CliRunner

from persona_agents.cli import main
from persona_agents.markers import contains_marker

from .conftest import NPCS_DIR, REPO, SAMPLE_NPC_IDS, cli_env
from .heads_support import check_state_outputs


def run_cli(*args: str, input: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "persona_agents", *args],
        cwd=REPO, env=cli_env(), input=input, capture_output=True, text=True, timeout=timeout,
    )


def test_npcs_validate_accepts_the_samples():
    result = CliRunner().invoke(main, ["npcs", "validate", "--npcs-dir", str(NPCS_DIR)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"OK: 6 persona file(s) valid in {NPCS_DIR}"


def test_npcs_validate_names_file_stage_and_available_steps(sample_npcs_copy):
    path = sample_npcs_copy / "guard_city_gate.yaml"
    data = yaml.safe_load(path.read_text())
    data["pipeline"] = {"retrieve": ["keyword_lor"]}
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["npcs", "validate", str(path)])
    assert result.exit_code == 1
    assert f"Unknown retrieve step 'keyword_lor' in {path} (pipeline.retrieve). Available: " in result.output
    assert "no_lore" in result.output and "Traceback" not in result.output


def test_npcs_list_and_show():
    runner = CliRunner()
    listed = runner.invoke(main, ["npcs", "list", "--npcs-dir", str(NPCS_DIR)])
    assert listed.exit_code == 0
    assert [line.split()[0] for line in listed.output.splitlines()] == sorted(SAMPLE_NPC_IDS)
    shown = runner.invoke(main, ["npcs", "show", "guard_city_gate", "--npcs-dir", str(NPCS_DIR)])
    assert shown.exit_code == 0
    body = yaml.safe_load(shown.output)
    assert body["id"] == "guard_city_gate" and body["pipeline"]["generate"][0]["name"] == "multihead"
    missing = runner.invoke(main, ["npcs", "show", "nobody", "--npcs-dir", str(NPCS_DIR)])
    assert missing.exit_code == 1 and "Unknown NPC 'nobody'" in missing.output and "guard_city_gate" in missing.output


def test_schema_steps_and_plugins_commands():
    runner = CliRunner()
    schema = json.loads(runner.invoke(main, ["schema"]).output)
    assert schema["title"] == "persona-agents NPC persona"
    steps = runner.invoke(main, ["steps", "--npcs-dir", str(NPCS_DIR)]).output
    assert "normalize_input    [normalize]" in steps and "catchphrase        [catchphrase]" in steps
    assert steps.index("preprocess:") < steps.index("retrieve:") < steps.index("prompt:") < steps.index("generate:")
    plugins = runner.invoke(main, ["plugins", "--npcs-dir", str(NPCS_DIR)]).output
    assert "catchphrase" in plugins and "built-in" in plugins


def test_run_dialogue_json_is_reproducible_with_a_seed():
    args = ["run-dialogue", "--npc", "blacksmith_village_center", "--say", "Can you fix my sword?", "--json",
            "--seed", "1"]
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.strip().splitlines()
    assert len(lines) == 1
    turn = json.loads(lines[0])
    assert {"text", "deltas", "flags", "state", "meta"} <= set(turn)
    assert turn["text"].strip() and not contains_marker(turn["text"])
    check_state_outputs(turn)
    assert turn["meta"]["model"].startswith("embedded:smollm2-135m-instruct")
    again = json.loads(second.stdout)
    assert again == {**turn, "meta": {**turn["meta"], "timings_ms": again["meta"]["timings_ms"]}}


def test_run_dialogue_unknown_npc_is_a_message_not_a_traceback():
    result = run_cli("run-dialogue", "--npc", "nobody", "--say", "hi")
    assert result.returncode == 1
    assert "Error: Unknown NPC 'nobody'" in result.stderr and "Traceback" not in result.stderr


def test_run_dialogue_too_long_line_names_the_limit():
    result = run_cli("run-dialogue", "--npc", "guard_city_gate", "--say", "a" * 600)
    assert result.returncode == 1
    assert "utterance: is 600 characters long; the limit is 500" in result.stderr
    assert "Traceback" not in result.stderr


def test_interactive_session_with_state_reset_and_quit():
    result = run_cli(
        "run-dialogue", "--npc", "hermit_forest", "--seed", "2",
        input="/state\nWho are you?\n/bogus\n/reset\n/quit\nnever read\n",
    )
    assert result.returncode == 0, result.stderr
    assert "state: {'trust':" in result.stdout
    assert "Maren: " in result.stdout and "state: trust" in result.stdout
    assert "Unknown command /bogus" in result.stderr and "Conversation reset." in result.stderr
    assert "never read" not in result.stdout


def test_run_dialogue_script_plays_every_line(tmp_path):
    script = tmp_path / "lines.txt"
    script.write_text("# a comment\nHello!\n\nWhat do you sell?\n")
    result = run_cli("run-dialogue", "--npc", "merchant_traveling", "--script", str(script), "--json", "--seed", "3")
    assert result.returncode == 0, result.stderr
    turns = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [t["meta"]["turn"] for t in turns] == [1, 2]


def test_train_min_precision_is_checked_before_any_model_loads(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("")
    typo = run_cli("train", "--data", str(data), "--out", str(tmp_path / "a"), "--min-precision", "end_conversaton=0.8")
    assert typo.returncode == 2
    assert "--min-precision" in typo.stderr and "'end_conversaton' is not in the flag vocabulary" in typo.stderr
    assert "end_conversation" in typo.stderr.split("Valid flags:")[1]
    for bad in ("end_conversation=1.5", "end_conversation", "end_conversation=high"):
        result = run_cli("train", "--data", str(data), "--out", str(tmp_path / "a"), "--min-precision", bad)
        assert result.returncode == 2 and "expected FLAG=P with P a precision in (0, 1]" in result.stderr, bad
    assert not (tmp_path / "a").exists()
