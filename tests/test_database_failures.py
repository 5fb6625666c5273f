"""What reaches the state database, and what a database failure looks like (issue 28):
values no database stores are refused at the API before any model work, a failure is a
StoreError (HTTP 503) with no password, SQL or player data in it, and a missing driver
says which package to install."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from persona_agents.server.schemas import AskRequest, TurnRequest
from persona_agents.store import StateStore
from persona_agents.store.store import StoreError
from persona_agents.turn import NpcState


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, math.nan], {"x": math.inf}, "a\x00b"])
def test_a_game_state_value_no_database_can_store_is_refused(value):
    with pytest.raises(ValidationError) as caught:
        TurnRequest(player_id="p", utterance="hi", game_state={"gold": value})
    error = caught.value.errors()[0]
    assert error["loc"][:2] == ("game_state", "gold")
    assert any(word in error["msg"] for word in ("NaN or Infinity", "NUL", "finite number"))


@pytest.mark.parametrize("field", ["quest_stage", "location", "utterance"])
def test_a_nul_character_in_a_request_string_is_refused(field):
    with pytest.raises(ValidationError) as caught:
        TurnRequest(**{"player_id": "p", "utterance": "hi", field: "in\x00progress"})
    assert caught.value.errors()[0]["loc"] == (field,)
    with pytest.raises(ValidationError):
        TurnRequest(player_id="p", utterance="hi", items=["ore\x00"])


def test_ask_refuses_nan_where_the_seed_sends_numbers():
    with pytest.raises(ValidationError):
        AskRequest.model_validate({"npc_id": "x", "utterance": "hi",
                                   "context": {"npc_state": {"trust": math.nan}}})


def test_a_missing_driver_names_the_package_and_hides_the_password():
    with pytest.raises(StoreError) as caught:
        StateStore("mysql+notadriver://gm:s3cret-pw@127.0.0.1/game")
    message = str(caught.value)
    assert "s3cret-pw" not in message and "driver" in message and "sqlite:///" in message


def test_an_unreachable_database_is_a_store_error_without_its_password():
    with pytest.raises(StoreError) as caught:
        StateStore("postgresql+psycopg://gm:s3cret-pw@127.0.0.1:1/game?connect_timeout=2")
    assert "s3cret-pw" not in str(caught.value) and "***" in str(caught.value)


def test_a_database_that_goes_away_is_a_store_error_on_every_read(postgres_server):
    from .postgres_support import PostgresServer

    own = PostgresServer()  # stopped below, so not the session's server
    try:
        store = StateStore(own.database())
        store.load("p", "n", NpcState(0.3, 0.0, "calm", "not_started"))
        own.stop()
        for read in (lambda: store.load("p", "n", NpcState(0.3, 0.0, "calm", "not_started")),
                     lambda: store.find_response("p", "n", "r1"), lambda: store.export("p"),
                     lambda: store.count("turn_records"), lambda: store.reset("p")):
            with pytest.raises(StoreError) as caught:
                read()
            assert "SELECT" not in str(caught.value) and "DELETE" not in str(caught.value)
    finally:
        own.stop()


OPEN = "import sys; from persona_agents.store import StateStore; StateStore(sys.argv[1]); print('opened')"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_replicas_opening_a_fresh_database_at_once_all_succeed(kind, tmp_path, request):
    import subprocess
    import sys

    url = (request.getfixturevalue("postgres_server").database() if kind == "postgresql"
           else f"sqlite:///{tmp_path / 'fresh.db'}")
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [err[-500:] for _, err in results if err]
    assert StateStore(url).count("turn_records") == 0
