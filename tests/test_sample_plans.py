"""The golden plans of the six sample NPCs pass on the shipped adapter (issue: NPC
behaviour tests), through the real CLI, with JUnit XML a CI system can read."""

from __future__ import annotations

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
    assert len(root.findall("testsuite")) == 6  # one file per sample NPC
