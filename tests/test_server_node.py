"""The Node.js example client (examples/node-game-server) against the live server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO
from .server_support import shared_tiny_server

CLIENT = REPO / "examples" / "node-game-server" / "client.mjs"
NODE = shutil.which("node") or ("/usr/bin/node" if Path("/usr/bin/node").exists() else None)

pytestmark = pytest.mark.skipif(NODE is None, reason="node (20+) is not installed")


@pytest.fixture(scope="session")
def live(tmp_path_factory, tiny_model_dir):
    return shared_tiny_server(tmp_path_factory, tiny_model_dir)


def run_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NODE, str(CLIENT), *args], capture_output=True, text=True, timeout=180)


def test_node_client_plays_v1_stream_and_ask(live):
    result = run_client("--url", live.base_url, "--key", live.api_key, "--npc", "smith", "--player", "node-1",
                        "--seed", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("[v1] player:") == 3 and out.count("[stream] player:") == 1 and out.count("[ask] player:") == 2
    assert 'flags: give_item {"item":"sword"}' in out  # the third /v1 line carries the ore in the quest stage
    assert "rejected: give_item (stage)" in out
    assert "piece(s) streamed" in out and "| 0 piece(s)" not in out
    assert "[state] trust 0.70" in out and "turns 4" in out and "give_item@3" in out
    assert "flags: give_item | valid: true" in out
    assert out.rstrip().endswith("done: 6 turns")


def test_node_client_reports_a_wrong_key(live):
    result = run_client("--url", live.base_url, "--key", "wrong")
    assert result.returncode == 1
    assert "error: HTTP 401 unauthorized: Wrong API key." in result.stderr
