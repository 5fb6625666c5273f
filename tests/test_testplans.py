"""`persona-agents test`: golden plans, failure messages, repeats and JUnit XML."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml

from persona_agents.testplans.loader import PlanFileError, load_plans

from .conftest import cli_env
from .plugins import proposer

PLAN = {
    "plans": [{
        "name": "bread only for the baker's friend",
        "npc": "anna",
        "start": {"trust": 0.5},
        "turns": [
            {"say": "Give me bread.", "expect": {"no_flags": ["give_item"], "deltas": {"trust": {"direction": "up"}},
                                                  "state": {"trust": {"min": 0.55}}}},
            {"say": "Here is my bread token.", "gain_items": ["token"],
             "expect": {"flags": ["give_item"], "reply": {"not_matches": ["<NPC>"]}}},
        ],
    }]
}


@pytest.fixture
def world(npc_folder, tmp_path):
    def make(requires_items):
        npc_folder("anna", flag_rules={"give_item": {"requires_items": requires_items, "payload": {"item": "bread"}}},
                   pipeline={"prompt": ["chat_template"], "generate": ["transformers"], "postprocess": [
                       {"name": "propose_flags", "options": {"flags": ["give_item"], "trust": 0.1}}, "game_rules"]})
        plugins = tmp_path / "plugins"
        plugins.mkdir(exist_ok=True)
        shutil.copy(proposer.__file__, plugins)
        plans = tmp_path / "plans"
        plans.mkdir(exist_ok=True)
        (plans / "anna.yaml").write_text(yaml.safe_dump(PLAN))
        return npc_folder.folder, plans
    return make


def run_test_cli(npcs, plans, *extra):
    return subprocess.run([sys.executable, "-m", "persona_agents", "test", str(plans), "--npcs-dir", str(npcs), *extra],
                          env=cli_env(), capture_output=True, text=True, timeout=300)


def test_a_passing_plan_exits_zero_and_writes_junit(world, tmp_path):
    npcs, plans = world(["token"])
    junit = tmp_path / "out.xml"
    result = run_test_cli(npcs, plans, "--junit", str(junit), "--repeat", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[PASS] 2/2 turn 2: flag give_item fires" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "5 passed, 0 failed (1 plans, 2 run(s) each)"
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "5" and root.get("failures") == "0"
    cases = root.findall("./testsuite/testcase")
    assert {c.get("classname") for c in cases} == {"bread only for the baker's friend"}


def test_a_broken_persona_fails_naming_the_turn_and_the_flag(world, tmp_path):
    npcs, plans = world([])  # the rule that asked for the token was removed
    junit = tmp_path / "out.xml"
    result = run_test_cli(npcs, plans, "--junit", str(junit))
    assert result.returncode == 1
    assert "[FAIL] turn 1: flag give_item does not fire -- expected not fired; got fired; " \
           "no flag probabilities (no state heads loaded)" in result.stdout
    failures = ET.parse(junit).getroot().findall(".//failure")
    assert len(failures) == 1 and failures[0].get("message").startswith("expected not fired; got fired")


def test_plan_errors_name_file_plan_turn_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"plans": [{"name": "p1", "npc": "anna", "turns": [
        {"say": "hi"}, {"say": "x", "expect": {"flags": ["give_itm"], "delta": {}}}]}]}))
    with pytest.raises(PlanFileError) as info:
        load_plans([bad], ["anna"])
    assert info.value.problems == [f"{bad}: plan 'p1': turn 2: expect.delta: Extra inputs are not permitted"]
    bad.write_text(yaml.safe_dump({"name": "p2", "npc": "bob",
                                   "turns": [{"say": "x", "expect": {"flags": ["give_itm"]}}]}))
    with pytest.raises(PlanFileError) as info:
        load_plans([bad], ["anna"])
    assert info.value.problems == [
        f"{bad}: plan 'p2': npc: unknown NPC 'bob'; available: anna",
        f"{bad}: plan 'p2': turn 1: expect.flags: unknown flag 'give_itm'; valid flags: give_item, give_hint, "
        "npc_main_story, quest_start, quest_complete, unlock_hidden_path, open_trade, end_conversation",
    ]


def test_show_prompt_prints_each_turn_of_the_first_run(world):
    npcs, plans = world(["token"])
    result = run_test_cli(npcs, plans, "--show-prompt", "--repeat", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    headers = [line for line in out.splitlines() if line.startswith("===== ")]
    assert headers == [f"===== bread only for the baker's friend ({plans / 'anna.yaml'}), seed {n}, turn {n}"
                       for n in (1, 2)]  # the first run only, not the repeat
    first = out.split("===== ")[1]
    prompt = first.split("----- prompt (chat)\n")[1].split("----- reply\n")[0]
    assert "Give me bread." in prompt and "[user]" in prompt
    assert "flag probabilities: no flag probabilities (no state heads loaded)" in first
    second = out.split("===== ")[2]
    assert "flags fired: give_item;" in second and "state after: trust" in second
    assert out.strip().splitlines()[-1] == "5 passed, 0 failed (1 plans, 2 run(s) each)"
