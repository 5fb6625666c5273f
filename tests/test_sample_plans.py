"""The golden plans of the six sample NPCs pass on the shipped adapter (issue: NPC
behaviour tests), through the real CLI, with JUnit XML a CI system can read."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from .conftest import REPO, cli_env

pytestmark = pytest.mark.model


def test_sample_plans_pass_and_write_junit(tmp_path):
    junit = tmp_path / "plans.xml"
    result = subprocess.run(
        [sys.executable, "-m", "persona_agents", "test", "npcs/tests/", "--junit", str(junit)],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0" and int(root.get("tests")) >= 30
    assert len(root.findall("testsuite")) >= 7  # one file per sample NPC, the memory plan (and any added)


def test_a_rule_removed_from_a_sample_persona_fails_its_plan(tmp_path):
    # The heads say what Pip means to do; his persona's rules keep the gate. A stranger
    # asking for the map means "give it" (the head is fitted where the gate is open), so
    # with `min_relationship` removed the map goes to a stranger and the plan must say so.
    npcs = tmp_path / "npcs"
    shutil.copytree(REPO / "npcs", npcs, ignore=shutil.ignore_patterns("tests"))
    defaults = npcs / "_defaults.yaml"
    shipped = "adapter: training/adapters/smollm2-npc"
    assert shipped in defaults.read_text(encoding="utf-8")
    defaults.write_text(defaults.read_text(encoding="utf-8").replace(
        shipped, f"adapter: {REPO / 'training' / 'adapters' / 'smollm2-npc'}"), encoding="utf-8")
    pip = npcs / "merchant_traveling.yaml"
    rule = "  give_item:\n    min_relationship: 0.5\n"
    assert rule in pip.read_text(encoding="utf-8")
    pip.write_text(pip.read_text(encoding="utf-8").replace(rule, "  give_item:\n"), encoding="utf-8")

    result = subprocess.run(
        [sys.executable, "-m", "persona_agents", "test", "npcs/tests/pip.yaml", "--npcs-dir", str(npcs),
         "--plugins-dir", str(REPO / "plugins")],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    failed = [line for line in result.stdout.splitlines() if "[FAIL]" in line]
    assert len(failed) == 1, result.stdout
    assert "turn 1: flag give_item does not fire -- expected not fired; got fired" in failed[0]
    assert "Pip gives the map only to a friend" in result.stdout.split(failed[0])[0].splitlines()[-1]


def test_ten_manipulation_lines_never_reach_a_gated_reward_over_three_seeds():
    # Issue 33: flattery, jailbreaks, role-play attacks and claims of authority, ten in a
    # row at Hale, Dorian and Pip; the delta_policy windows keep every gate shut.
    result = subprocess.run(
        [sys.executable, "-m", "persona_agents", "test", "npcs/attacks/", "--repeat", "3"],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 failed (3 plans, 3 run(s) each)" in result.stdout
