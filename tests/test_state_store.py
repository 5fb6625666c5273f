"""Persistent state: atomic turns, idempotent requests, ordering, migrations, CLI."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import text

from persona_agents.errors import StepError
from persona_agents.manager import AgentManager
from persona_agents.plugins import load_plugins
from persona_agents.store import StateStore
from persona_agents.store.migrations import CURRENT_VERSION, SchemaVersionError
from persona_agents.turn import GameContext

from .conftest import cli_env
from .plugins import failing_steps, proposer


def pipeline_with(*postprocess):
    return {"preprocess": ["normalize_input"], "prompt": ["chat_template"], "generate": ["transformers"],
            "postprocess": list(postprocess)}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def db_url(request, tmp_path):
    """Each store test on a SQLite file and on a real PostgreSQL server (issue 28)."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_server").database()
    return f"sqlite:///{tmp_path / 'state.db'}"


def manager_for(folder, db_url):
    host = load_plugins(None, extra=[("proposer", proposer), ("failing_steps", failing_steps)])
    return AgentManager(folder, host=host, store=StateStore(db_url))


def test_turns_persist_across_managers(npc_folder, db_url):
    npc_folder("anna", pipeline=pipeline_with({"name": "propose_flags", "options": {"trust": 0.1}}, "game_rules"))
    first = manager_for(npc_folder.folder, db_url)
    first.turn("anna", "hello", player_id="p1", seed=1)
    again = manager_for(npc_folder.folder, db_url)
    response = again.turn("anna", "hello again", player_id="p1", seed=1)
    assert response.meta["turn"] == 2
    assert response.state.trust == pytest.approx(0.5)
    assert [e.player for e in again.conversation("p1", "anna").history] == ["hello", "hello again"]


def test_same_request_id_returns_the_stored_response_once(npc_folder, db_url):
    npc_folder("anna", pipeline=pipeline_with({"name": "propose_flags", "options": {"trust": 0.05}}, "game_rules"))
    manager = manager_for(npc_folder.folder, db_url)
    first = manager.turn("anna", "hi", player_id="p1", request_id="req-1")
    second = manager.turn("anna", "hi", player_id="p1", request_id="req-1")
    assert first.to_dict() == second.to_dict()
    assert manager.store.count("turn_records", "p1", "anna") == 1
    assert manager.conversation("p1", "anna").state.trust == pytest.approx(0.35)


def test_an_exception_inside_the_pipeline_leaves_the_store_as_before(npc_folder, db_url):
    npc_folder("anna", pipeline=pipeline_with({"name": "propose_flags",
                                               "options": {"trust": 0.1, "flags": ["give_hint"]}},
                                              "game_rules", {"name": "explode", "options": {"on_turn": 2}}),
               flag_rules={"give_hint": {}})
    manager = manager_for(npc_folder.folder, db_url)
    manager.turn("anna", "first", player_id="p1")
    before = manager.store.export("p1")
    with pytest.raises(StepError, match="postprocess step 'explode' failed: RuntimeError: boom"):
        manager.turn("anna", "second", player_id="p1")
    assert manager.store.export("p1") == before


def test_killing_the_process_mid_turn_leaves_the_store_as_before(npc_folder, db_url, tmp_path):
    marker = tmp_path / "hanging"
    npc_folder("anna", pipeline=pipeline_with({"name": "propose_flags", "options": {"trust": 0.1}}, "game_rules",
                                              {"name": "hang", "options": {"on_turn": 2, "marker": str(marker)}}))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for module in (proposer, failing_steps):
        shutil.copy(module.__file__, plugins)
    args = [sys.executable, "-m", "persona_agents", "run-dialogue", "--npc", "anna",
            "--npcs-dir", str(npc_folder.folder), "--player", "p1", "--db", db_url, "--json", "--say"]
    done = subprocess.run(args + ["first"], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before = StateStore(db_url).export("p1")
    proc = subprocess.Popen(args + ["second"], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "turn never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert StateStore(db_url).export("p1") == before
    assert before["npcs"]["anna"]["state"]["turns"] == 1


def test_concurrent_turns_for_one_player_are_serialised(npc_folder, db_url):
    pattern = [0.01, -0.004, 0.002, -0.003]
    npc_folder("anna", generation={"max_new_tokens": 1, "temperature": 0.0},
               pipeline={**pipeline_with({"name": "propose_flags", "options": {"trust_pattern": pattern}},
                                         "game_rules"),
                         "prompt": [{"name": "chat_template",
                                     "options": {"history_turns": 0, "include_examples": False}}]})
    manager = manager_for(npc_folder.folder, db_url)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(50):
                manager.turn("anna", f"line {n}-{i}", player_id="shared")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = manager.store.export("shared", "anna")["npcs"]["anna"]
    assert len(data["turn_records"]) == 400 and len(data["history"]) == 400
    assert [r["turn"] for r in data["turn_records"]] == list(range(1, 401))
    applied = sum(r["response"]["deltas"]["trust"] for r in data["turn_records"])
    assert data["state"]["trust"] == pytest.approx(0.3 + applied, abs=1e-6)
    assert 0.0 <= data["state"]["trust"] <= 1.0


def test_once_only_flags_are_remembered_across_turns(npc_folder, db_url):
    npc_folder("anna", pipeline=pipeline_with({"name": "propose_flags",
                                               "options": {"flags": ["give_item", "quest_start"]}}, "game_rules"),
               flag_rules={"give_item": {"once": True, "payload": {"item": "bread"}},
                           "quest_start": {"stages": ["not_started"]}})
    manager = manager_for(npc_folder.folder, db_url)
    first = manager.turn("anna", "please", player_id="p1")
    assert [f.to_dict() for f in first.flags] == [{"name": "give_item", "payload": {"item": "bread"}},
                                                  {"name": "quest_start", "payload": {}}]
    assert first.state.quest_stage == "in_progress"  # quest_start moved the stored stage
    second = manager.turn("anna", "again", player_id="p1")
    assert second.flags == ()
    assert {(r.name, r.reason) for r in second.flags_rejected} == {("give_item", "once_only"), ("quest_start", "stage")}
    # The game's stage wins over the stored one.
    third = manager.turn("anna", "again", player_id="p1", context=GameContext(quest_stage="not_started"))
    assert [f.name for f in third.flags] == ["quest_start"]


def test_schema_version_is_recorded_and_newer_databases_are_refused(db_url):
    store = StateStore(db_url)
    with store.engine.begin() as conn:
        assert conn.execute(text("select version from pa_schema_version")).scalar_one() == CURRENT_VERSION
        conn.execute(text("update pa_schema_version set version = 99"))
    with pytest.raises(SchemaVersionError, match="has schema version 99, newer than this persona-agents understands"):
        StateStore(db_url)


def test_a_version_3_database_gains_the_extra_axes_and_keeps_its_states(db_url):
    from persona_agents.turn import NpcState

    store = StateStore(db_url)
    with store.engine.begin() as conn:  # the state table as schema version 3 left it
        conn.execute(text("alter table pa_npc_state drop column axes"))
        conn.execute(text("update pa_schema_version set version = 3"))
    with store.engine.begin() as conn:
        conn.execute(text("insert into pa_npc_state (player_id, npc_id, trust, relationship, mood, quest_stage, "
                          "turns, version, updated_at) values ('p', 'anna', 0.4, 0.1, 'calm', 'not_started', 3, 3, "
                          "'2026-12-01 00:00:00')"))
    upgraded = StateStore(db_url)
    initial = NpcState(0.3, 0.0, "neutral", "not_started", axes={"reputation": 0.1})
    state = upgraded.load("p", "anna", initial).state
    assert (state.trust, state.mood, dict(state.axes)) == (0.4, "calm", {"reputation": 0.1})
    assert dict(upgraded.load("p", "anna", NpcState(0.3, 0.0, "neutral", "not_started")).state.axes) == {}


def test_state_cli_show_export_reset_and_continuing_a_conversation(npc_folder, db_url):
    npc_folder("anna")
    base = [sys.executable, "-m", "persona_agents"]
    talk = base + ["run-dialogue", "--npc", "anna", "--npcs-dir", str(npc_folder.folder), "--player", "p9",
                   "--db", db_url, "--json", "--say"]
    for line in ("one", "two"):
        result = subprocess.run(talk + [line], env=cli_env(), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["meta"]["turn"] == 2  # continued across runs
    show = subprocess.run(base + ["state", "show", "--player", "p9", "--db", db_url], env=cli_env(),
                          capture_output=True, text=True)
    assert show.stdout.startswith("anna: trust 0.30, relationship +0.00") and "turns 2" in show.stdout
    export = json.loads(subprocess.run(base + ["state", "export", "--player", "p9", "--npc", "anna", "--db", db_url],
                                       env=cli_env(), capture_output=True, text=True).stdout)
    assert [h["player"] for h in export["npcs"]["anna"]["history"]] == ["one", "two"]
    reset = subprocess.run(base + ["state", "reset", "--player", "p9", "--db", db_url], env=cli_env(),
                           capture_output=True, text=True)
    assert reset.stdout.strip() == "Reset 1 conversation(s) of player 'p9'."
    assert StateStore(db_url).export("p9") == {"player_id": "p9", "npcs": {}}
