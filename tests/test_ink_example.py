"""The Ink example (examples/ink-story): a real Ink runtime (inkjs, from npm) plays an
authored scene around a turn the NPC generates through the HTTP API.

The NPC is on the tiny random model; a stand-in for its state heads (the `propose_flags`
test plugin) proposes give_item on every turn, and the game's rules let it fire only in
the quest stage `in_progress` with `iron_ore` in the player's items. Those come from the
story's VARs, so the event fires only where the story's variables reached the turn's
game context; the event then changes a story variable, and the authored branch after it
follows from that.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, persona_dict
from .server_support import TEST_PLUGINS, start_cli_server

EXAMPLE = REPO / "examples" / "ink-story"
NODE = shutil.which("node") or ("/usr/bin/node" if Path("/usr/bin/node").exists() else None)
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(NODE is None or NPM is None,
                                reason="Node.js 20+ with npm is not installed (the example runs inkjs in Node)")


@pytest.fixture(scope="module")
def example_dir() -> Path:
    """The example with its pinned inkjs installed (`npm ci` from package-lock.json once)."""
    if not (EXAMPLE / "node_modules" / "inkjs" / "package.json").is_file():
        result = subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, f"npm ci in {EXAMPLE} failed:\n{result.stdout}\n{result.stderr}"
    return EXAMPLE


@pytest.fixture(scope="module")
def forge_server(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ink-story")
    npcs = root / "npcs"
    npcs.mkdir()
    (root / "plugins").mkdir()
    shutil.copy(TEST_PLUGINS / "proposer.py", root / "plugins" / "proposer.py")
    brann = persona_dict(
        "brann", str(tiny_model_dir), name="Brann", location="village_square",
        flag_rules={"give_item": {"stages": ["in_progress"], "requires_items": ["iron_ore"],
                                  "payload": {"item": "repaired_sword"}}},
    )
    brann["pipeline"]["postprocess"] = [{"name": "propose_flags", "options": {"flags": ["give_item"], "trust": 0.1}},
                                        "game_rules"]
    (npcs / "brann.yaml").write_text(yaml.safe_dump(brann))
    server = start_cli_server(root, npcs)
    yield server
    server.stop()


def play(server, example: Path, player: str, *extra: str) -> str:
    result = subprocess.run(
        [NODE, str(example / "play.mjs"), "--url", server.base_url, "--key", server.api_key, "--npc", "brann",
         "--player", player, "--seed", "3", *extra],
        capture_output=True, text=True, timeout=120, cwd=example)
    print(result.stdout)  # shown with a failure
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_generated_turn_sets_a_story_variable_and_the_authored_branch_follows(forge_server, example_dir):
    out = play(forge_server, example_dir, "ink-ore")
    lines = out.splitlines()
    # 1. an authored line, then the player's choice and line
    assert "Brann: You again. Show me what you brought, then." in lines
    assert "> Hand over the iron ore" in lines
    assert "You: Here is the iron ore you asked for. Can you mend my sword now?" in lines
    # 2. the generated turn: the story's VARs are its game context; its event changes a VAR
    assert ('  [turn] context: quest_stage=in_progress, items=iron_ore, location=village_square, '
            'game_state={"visits":2}') in lines
    assert any(line.startswith("Brann (generated): ") for line in lines)
    assert '  [turn] events: give_item {"item":"repaired_sword"} | rejected: none | trust 0.40, ' \
           'relationship 0.00, quest in_progress' in lines
    assert "  [game] give_item(repaired_sword) from the turn: items = iron_ore,repaired_sword" in lines
    # 3. the authored branch that follows from the variable the event set
    assert "Brann: Hold it to the light. Not a crack in it. Keep it oiled." in lines
    assert "No ore, no sword" not in out
    assert lines.index("You: Here is the iron ore you asked for. Can you mend my sword now?") \
        < lines.index("Brann: Hold it to the light. Not a crack in it. Keep it oiled.")
    assert out.rstrip().endswith("done: 1 generated turn(s); items iron_ore,repaired_sword, trust 0.40")


def test_without_the_ore_the_rules_refuse_the_event_and_the_other_branch_plays(forge_server, example_dir):
    out = play(forge_server, example_dir, "ink-no-ore", "--set", "items=")
    assert "  [turn] context: quest_stage=in_progress, items=-, location=village_square" in out
    assert "rejected: give_item (missing_item)" in out
    assert "[game] give_item" not in out
    assert "Brann: No ore, no sword. The mine east of town has what I need." in out
    assert "Hold it to the light" not in out


def test_an_authored_command_reaches_the_same_game_command(forge_server, example_dir):
    out = play(forge_server, example_dir, "ink-dagger", "--choose", "2")
    assert "> Buy a dagger for twelve silver" in out
    assert "  [game] give_item(dagger) from the story: items = iron_ore,dagger" in out
    assert "generated" not in out.split("done:")[0].split("as ink-dagger")[1]
    assert out.rstrip().endswith("done: 0 generated turn(s); items iron_ore,dagger, trust 0.30")
