"""The seed's game, end to end (issue 27): `examples/seed_game/` speaks the seed engine's
own vocabulary (give_item, give_hint, change_npc_state, change_game_state,
change_player_state, npc_action, unlock_hidden_path) and its JSONL format.

The data and personas are checked as they are in the repository. The pipeline runs on a
copy of the game folder with an adapter trained for real on the game's own JSONL, on the
tiny random model (mechanics, not quality): `npcs validate`, `run-dialogue --json`,
`persona-agents test` on the game's plans and `/ask` over HTTP on loopback all answer
with the seed's flag names. The adapter `make seed-game` trains on the embedded model is
checked to be the one the data describes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import REPO, cli_env
from .server_support import start_cli_server

GAME = REPO / "examples" / "seed_game"
SEED_EVENTS = ["give_item", "give_hint", "change_npc_state", "change_game_state", "change_player_state",
               "npc_action", "unlock_hidden_path"]
NPCS = ("elder_mossbrook", "shopkeeper_mossbrook")
SHIPPED = GAME / "adapters" / "seed-tiny"


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "persona_agents", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=600)


def test_the_game_declares_the_seeds_seven_events_with_their_meaning():
    from persona_agents.game import load_game

    game = load_game(GAME / "npcs")
    assert list(game.event_names) == SEED_EVENTS
    assert all(len(event.description.split()) >= 6 for event in game.events.values())
    assert game.quest_stages == ["not_started", "in_progress", "complete"]


def test_the_data_is_the_seeds_jsonl_and_checks_clean():
    from persona_agents.multihead.data import OPTIONAL, REQUIRED
    from persona_agents.multihead.datacheck import check_files

    train, validation = GAME / "data" / "train.jsonl", GAME / "data" / "validation.jsonl"
    records = [json.loads(line) for line in train.read_text().splitlines() if line.strip()]
    assert 30 <= len(records) <= 60
    assert all(set(REQUIRED) <= set(r) <= set(REQUIRED) | set(OPTIONAL) for r in records)
    assert {r["npc_id"] for r in records} == set(NPCS)
    report = check_files([train], [GAME / "npcs"])
    assert report.errors == [] and report.warnings == [], report.errors + report.warnings
    assert set(report.events) == set(SEED_EVENTS) and min(report.events.values()) >= 3
    both = check_files([train, validation], [GAME / "npcs"])
    assert both.errors == [], both.errors


def test_every_persona_rule_says_what_its_event_means():
    from persona_agents.persona_loader import load_personas
    from persona_agents.plugins import load_plugins

    personas = load_personas(GAME / "npcs", load_plugins(GAME / "plugins").registry)
    assert set(personas) == set(NPCS)
    for loaded in personas.values():
        persona = loaded.persona
        assert set(persona.flag_rules) == set(SEED_EVENTS), persona.id
        assert all(rule.means for rule in persona.flag_rules.values() if rule.allowed), persona.id
        assert persona.lines and all(line.examples for line in persona.lines), persona.id
        assert persona.pipeline.generate[0].name == "multihead"
        assert persona.pipeline.generate[0].options["adapter"] == "adapters/seed-tiny"


def test_make_seed_game_trains_the_shipped_adapter_from_this_data():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\bseed-game\b", makefile, re.M)
    recipe = makefile.split("\nseed-game:", 1)[1].split("\n\n", 1)[0]
    for part in ("--npcs-dir examples/seed_game/npcs", "--data examples/seed_game/data/train.jsonl",
                 "--validation examples/seed_game/data/validation.jsonl",
                 "--out examples/seed_game/adapters/seed-tiny", "--max-steps 20"):
        assert part in recipe
    # The adapter in the tree is the one this data trains: retrain with `make seed-game`
    # after changing the data.
    meta = json.loads((SHIPPED / "multihead.json").read_text())
    assert meta["flags"] == SEED_EVENTS and set(meta["thresholds"]) == set(SEED_EVENTS)
    assert meta["base"]["name"].startswith("embedded:")
    files = {f["path"]: f["sha256"] for f in meta["training"]["data"]["files"]}
    digest = hashlib.sha256((GAME / "data" / "train.jsonl").read_bytes()).hexdigest()
    assert files == {"examples/seed_game/data/train.jsonl": digest}, "data changed: run `make seed-game`"
    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert size < 6_000_000, f"{SHIPPED} holds {size} bytes; keep the committed adapter small"
    assert not (SHIPPED / "checkpoints").exists()


def test_the_shipped_adapter_runs_on_the_embedded_model(tmp_path):
    """What `make seed-game` leaves in the tree loads on the real base, from any folder."""
    done = run_cli("run-dialogue", "--npcs-dir", str(GAME / "npcs"), "--npc", "shopkeeper_mossbrook",
                   "--item", "silver_coin", "--say", "Here's a silver coin for the lantern.", "--json", "--seed", "1",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    turn = json.loads(done.stdout)
    assert list(turn["flag_probs"]) == SEED_EVENTS
    assert turn["meta"]["model"].startswith("embedded:") and turn["meta"]["adapter"] == "adapters/seed-tiny"
    # Whatever the tiny model proposes, the world is never Tomas's to change.
    assert not {f["name"] for f in turn["flags"]} & {"change_game_state", "unlock_hidden_path"}


@pytest.fixture(scope="module")
def seed_game(tmp_path_factory, tiny_model_dir) -> Path:
    """A copy of the game folder with an adapter trained on its JSONL, on the tiny model."""
    root = tmp_path_factory.mktemp("seed") / "seed_game"
    shutil.copytree(GAME, root, ignore=shutil.ignore_patterns("adapters"))
    done = run_cli("train", "--npcs-dir", str(root / "npcs"), "--data", str(root / "data/train.jsonl"),
                   "--validation", str(root / "data/validation.jsonl"), "--base", str(tiny_model_dir),
                   "--out", str(root / "adapters/seed-tiny"), "--quantization", "none", "--max-steps", "2",
                   "--batch-size", "2", "--heads-refit-epochs", "3", "--seed", "1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return root


def test_the_tiny_adapter_is_trained_on_the_seeds_events(seed_game):
    meta = json.loads((seed_game / "adapters/seed-tiny/multihead.json").read_text())
    assert meta["flags"] == SEED_EVENTS and set(meta["thresholds"]) == set(SEED_EVENTS)
    lines = (GAME / "data" / "train.jsonl").read_text().splitlines()
    assert meta["training"]["data"]["examples"] == len([line for line in lines if line.strip()])


def test_validate_dialogue_and_plans_speak_the_seeds_names(seed_game):
    npcs = str(seed_game / "npcs")
    done = run_cli("npcs", "validate", "--npcs-dir", npcs)
    assert done.returncode == 0, done.stdout + done.stderr
    # From another working directory: adapters/seed-tiny resolves against the game folder.
    done = run_cli("run-dialogue", "--npcs-dir", npcs, "--npc", "elder_mossbrook", "--quest-stage", "in_progress",
                   "--item", "bronze_bell", "--say", "I found your bell.", "--json", cwd=seed_game.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    turn = json.loads(done.stdout)
    assert list(turn["flag_probs"]) == SEED_EVENTS
    assert {f["name"] for f in turn["flags"]} | {r["name"] for r in turn["flags_rejected"]} <= set(SEED_EVENTS)
    assert turn["meta"]["adapter"].endswith("adapters/seed-tiny")
    done = run_cli("test", "--npcs-dir", npcs)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for plan in ("Hanna keeps the pilgrims' stair from a stranger", "Tomas sells the lantern only for a silver coin"):
        assert plan in done.stdout
    assert "unlock_hidden_path" in done.stdout and "FAIL" not in done.stdout


def test_ask_answers_with_the_seeds_flag_names(seed_game, tmp_path):
    server = start_cli_server(tmp_path / "srv", seed_game / "npcs", api_key=None)
    try:
        # The seed's request: session_id, npc_id, user_input, context with player, game and
        # NPC state, dialogue_history as {player, npc} pairs.
        body = httpx.post(f"{server.base_url}/ask", timeout=120, json={
            "session_id": "seed-1", "npc_id": "elder_mossbrook", "user_input": "Here is the shrine bell, elder.",
            "context": {"player_state": {"items": ["bronze_bell"]}, "game_state": {"quest_stage": "in_progress"},
                        "npc_state": {"trust": 0.5, "relationship": "friend"}},
            "dialogue_history": [{"player": "Hello.", "npc": "Good evening, traveller."}]})
        assert body.status_code == 200, body.text
        answer = body.json()
        assert list(answer["flags"]) == SEED_EVENTS and set(answer["flags"].values()) <= {0, 1}
        assert set(answer["deltas"]) == {"trust", "relationship"} and answer["session_id"] == "seed-1"
        assert list(answer["meta"]["flag_probs"]) == SEED_EVENTS
        # The game's rules, in the seed's names: no coin, no lantern; the world is not Tomas's to change.
        shop = httpx.post(f"{server.base_url}/ask", timeout=120, json={
            "session_id": "seed-2", "npc_id": "shopkeeper_mossbrook",
            "user_input": "Give me a lantern and open the secret tunnel.", "context": {"player_state": {"items": []}}})
        assert shop.status_code == 200, shop.text
        flags = shop.json()["flags"]
        assert list(flags) == SEED_EVENTS
        assert flags["give_item"] == flags["change_game_state"] == flags["unlock_hidden_path"] == 0
        bad = httpx.post(f"{server.base_url}/ask", timeout=60, json={
            "session_id": "seed-3", "npc_id": "elder_mossbrook", "user_input": "hi",
            "context": {"game_state": {"quest_stage": "cellar_cleared"}}})
        assert bad.status_code == 422 and "not_started, in_progress, complete" in bad.text, bad.text
    finally:
        server.stop()
