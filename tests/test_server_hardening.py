"""Issue 33, "Hold up against hostile players": the turn-lock table stays bounded, ids are
validated alike on every route, API keys are compared as bytes, a reused request_id with
another request is a 409, and /docs works offline.

Fast and deterministic: an in-process app (TestClient) on NPCs whose prompt and generate
steps are a tiny echo plugin written here, so no model is loaded.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from persona_agents.errors import InputError, RequestIdConflictError
from persona_agents.manager import AgentManager
from persona_agents.server import ServerSettings, create_app
from persona_agents.store import StateStore
from persona_agents.turn import Exchange, NpcState

from .conftest import persona_dict
from .server_support import thread_server

PROBLEM = "application/problem+json"

ECHO_PLUGIN = '''
import time

from pydantic import Field

from persona_agents import hookimpl
from persona_agents.steps import Step, StepOptions
from persona_agents.turn import Generation, Prompt


class EchoPrompt(Step):
    name = "echo_prompt"
    stage = "prompt"

    def run(self, turn):
        return turn.replace(prompt=Prompt(format="sectioned", text=turn.utterance))


class EchoGenerate(Step):
    """Replies with the player's line; `delay` keeps a turn busy so overlaps would show."""

    name = "echo_generate"
    stage = "generate"

    class Options(StepOptions):
        delay: float = Field(0.0, ge=0)

    def __init__(self, *args):
        super().__init__(*args)
        self.runs = []  # (player, started, ended) of every run, committed or not

    def run(self, turn):
        started = time.monotonic()
        time.sleep(self.options.delay)
        generation = Generation(text=f"echo {turn.turn_number}: {turn.utterance}", model="echo",
                                new_tokens=1, finished=True)
        self.runs.append((turn.player_id, started, time.monotonic()))
        return turn.replace(generation=generation)


@hookimpl
def register_steps(register):
    register(EchoPrompt)
    register(EchoGenerate)
'''


def write_echo_npcs(root, delay: float = 0.0):
    npcs, plugins = root / "npcs", root / "plugins"
    npcs.mkdir()
    plugins.mkdir()
    (plugins / "echo_steps.py").write_text(ECHO_PLUGIN)
    for npc_id in ("echo", "slow"):
        data = persona_dict(npc_id, "unused")
        data["pipeline"] = {
            "preprocess": [{"name": "normalize_input", "options": {"max_chars": 50}}],
            "prompt": ["echo_prompt"],
            "generate": [{"name": "echo_generate", "options": {"delay": delay if npc_id == "slow" else 0.0}}],
        }
        (npcs / f"{npc_id}.yaml").write_text(yaml.safe_dump(data))
    return npcs, plugins


@pytest.fixture
def manager(tmp_path):
    npcs, plugins = write_echo_npcs(tmp_path, delay=0.05)
    return AgentManager(npcs, plugins_dir=plugins, store=StateStore(f"sqlite:///{tmp_path / 'state.db'}"))


def make_client(manager, **settings) -> TestClient:
    return TestClient(create_app(manager, ServerSettings(warm_up=False, **settings)))


@pytest.fixture
def client(manager):
    with make_client(manager) as c:
        yield c


def assert_problem(response: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["title"] and body["detail"]
    assert body["type"] == f"urn:persona-agents:problem:{code.replace('_', '-')}"
    if field is not None:
        assert body["field"] == field
        assert body["detail"].startswith(f"{field}:") or field in body["detail"]
    return body


def state_path(player_id: str, npc_id: str = "echo") -> str:
    return f"/v1/players/{quote(player_id, safe='')}/npcs/{npc_id}/state"


# -- 1. the turn-lock table is bounded -------------------------------------------------
def test_turn_lock_table_is_empty_after_many_turns_rejections_and_resets(manager):
    for i in range(300):
        who = f"p{i}"
        if i % 3 == 0:
            manager.turn("echo", "hello", player_id=who)
        elif i % 3 == 1:
            with pytest.raises(InputError):
                manager.turn("echo", "x" * 51, player_id=who)  # over normalize_input's 50
        manager.reset(who, "echo")
    assert manager._turn_locks == {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: manager.turn("echo", "hi", player_id=f"q{i % 20}"), range(60)))
    assert manager._turn_locks == {}
    assert manager.conversation("q0", "echo").turns == 3


def test_turn_lock_still_orders_one_player_and_npc(manager):
    key = ("p", "echo")
    holding, release, entered_second = threading.Event(), threading.Event(), threading.Event()

    def first():
        with manager._turn_lock(*key):
            holding.set()
            release.wait(5)

    def second():
        holding.wait(5)
        with manager._turn_lock(*key):
            entered_second.set()
            assert manager._turn_locks[key][1] == 1  # the first one has gone, the entry stays

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    holding.wait(5)
    deadline = time.monotonic() + 5
    while manager._turn_locks[key][1] < 2 and time.monotonic() < deadline:  # the second one waits
        time.sleep(0.01)
    assert manager._turn_locks[key][1] == 2
    assert not entered_second.wait(0.2), "the second holder got in while the first held the lock"
    release.set()
    for t in threads:
        t.join(5)
    assert entered_second.is_set() and manager._turn_locks == {}


def test_concurrent_turns_of_one_player_never_overlap(manager):
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: manager.turn("slow", f"line {i}", player_id="same"), range(4)))
    assert sorted(r.meta["turn"] for r in results) == [1, 2, 3, 4]
    runs = sorted(run[1:] for run in manager.pipeline("slow").steps["generate"][0].runs)
    # One model run per turn, one after another: no run was wasted on a lost commit race.
    assert len(runs) == 4
    assert all(end <= next_start for (_, end), (next_start, _) in zip(runs, runs[1:])), runs
    assert manager._turn_locks == {}


# -- 2. ids are validated alike on every route ----------------------------------------
@pytest.mark.parametrize("bad", ["a/b", "/", "..", ".", "p\x00", "p\x7f", "p\x85q"])
def test_an_id_that_cannot_be_a_path_segment_is_422_everywhere(client, manager, bad):
    turn = client.post("/v1/npcs/echo/turns", json={"player_id": bad, "utterance": "hi"})
    assert_problem(turn, 422, "invalid_request", "player_id")
    ask = client.post("/ask", json={"session_id": bad, "npc_id": "echo", "user_input": "hi"})
    assert_problem(ask, 422, "invalid_request", "session_id")
    rid = client.post("/v1/npcs/echo/turns", json={"player_id": "ok", "utterance": "hi", "request_id": bad})
    assert_problem(rid, 422, "invalid_request", "request_id")
    assert manager.store.count("turn_records") == 0


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """uvicorn in a thread: it decodes the path once, as deployed (TestClient decodes twice)."""
    root = tmp_path_factory.mktemp("ids")
    npcs, plugins = write_echo_npcs(root)
    manager = AgentManager(npcs, plugins_dir=plugins, store=StateStore(f"sqlite:///{root / 'state.db'}"))
    with thread_server(create_app(manager, ServerSettings(warm_up=False))) as base:
        with httpx.Client(base_url=base, timeout=30) as c:
            yield c


@pytest.mark.parametrize("who", ["guild:42", "a@b.c", "Zoë Ünal #7", "550e8400-e29b-41d4-a716-446655440000",
                                 "x?y=1&z%20#frag", ".hidden", "..x", "back\\slash"])
def test_ids_with_punctuation_work_end_to_end(real_server, who):
    client = real_server
    turn = client.post("/v1/npcs/echo/turns", json={"player_id": who, "utterance": "hi"})
    assert turn.status_code == 200, turn.text
    assert turn.json()["meta"]["player_id"] == who
    ask = client.post("/ask", json={"session_id": who, "npc_id": "echo", "user_input": "again"})
    assert ask.status_code == 200, ask.text
    stored = client.get(state_path(who))
    assert stored.status_code == 200, stored.text
    assert stored.json()["player_id"] == who and stored.json()["turns"] == 2
    assert [h["player"] for h in stored.json()["history"]] == ["hi", "again"]
    deleted = client.delete(state_path(who))
    assert deleted.status_code == 200 and deleted.json()["turns"] == 0


def test_the_docs_say_which_id_characters_are_allowed(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    for model, field in (("TurnRequest", "player_id"), ("AskRequest", "session_id")):
        description = schema[model]["properties"][field]["description"]
        assert "except `/`" in description and "control characters" in description


# -- 3. API keys are compared as bytes ---------------------------------------------------
UNICODE_KEY = "clé-секрет-🔑"


@pytest.fixture
def keyed(manager):
    with make_client(manager, api_key=UNICODE_KEY) as c:
        yield c


def test_a_non_ascii_api_key_authenticates_as_utf8_bytes(keyed):
    raw = UNICODE_KEY.encode("utf-8")
    for headers in ([(b"x-api-key", raw)], [(b"authorization", b"Bearer " + raw)],
                    [(b"authorization", b"bearer  " + raw + b" ")], [(b"x-api-key", b"\t" + raw + b" ")]):
        response = keyed.get("/v1/npcs", headers=headers)
        assert response.status_code == 200, (headers, response.text)
    turn = keyed.post("/v1/npcs/echo/turns", json={"player_id": "p", "utterance": "hi"},
                      headers=[(b"x-api-key", raw)])
    assert turn.status_code == 200, turn.text


@pytest.mark.parametrize("headers", [
    [],
    [(b"x-api-key", UNICODE_KEY.encode("utf-8")[:-1])],
    [(b"x-api-key", "clé-секрет-".encode("utf-8"))],
    [(b"x-api-key", "clé".encode("latin-1") + "-секрет-🔑".encode("utf-8"))],
    [(b"authorization", b"Basic " + UNICODE_KEY.encode("utf-8"))],
    [(b"x-api-key", b"test-key-0123456789")],
])
def test_a_wrong_or_missing_key_is_still_401(keyed, headers):
    body = assert_problem(keyed.get("/v1/npcs", headers=headers), 401, "unauthorized")
    assert body["detail"] == ("Wrong API key." if headers and headers[0][0] == b"x-api-key" else
                              "Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")


# -- 4. a reused request_id with another request is a 409 ---------------------------------
def test_repeating_a_request_id_replays_and_another_body_is_409(client, manager):
    body = {"player_id": "idem", "utterance": "Open the gate", "request_id": "req-1", "seed": 3,
            "items": ["key"], "game_state": {"day": 2, "weather": "rain"}}
    first = client.post("/v1/npcs/echo/turns", json=body)
    assert first.status_code == 200, first.text
    again = client.post("/v1/npcs/echo/turns", json=dict(body, game_state={"weather": "rain", "day": 2}))
    assert again.status_code == 200 and again.json() == first.json()
    for change in ({"utterance": "Close the gate"}, {"seed": 4}, {"items": []}, {"location": "gate"},
                   {"game_state": {"day": 3, "weather": "rain"}}):
        conflict = client.post("/v1/npcs/echo/turns", json={**body, **change})
        problem = assert_problem(conflict, 409, "request_id_conflict", "request_id")
        assert "req-1" in problem["detail"] and "new request_id" in problem["detail"]
        assert problem["title"] == "Conflict"
    assert manager.store.count("turn_records", player_id="idem") == 1
    assert client.get(state_path("idem")).json()["turns"] == 1
    # The id is per (player, NPC): another player may use it for another line.
    assert client.post("/v1/npcs/echo/turns", json={**body, "player_id": "other", "utterance": "x"}).status_code == 200


def test_ask_and_the_stream_answer_a_conflicting_request_id_with_409(client, manager):
    ask = {"session_id": "s1", "npc_id": "echo", "user_input": "hello", "request_id": "r"}
    first = client.post("/ask", json=ask)
    assert first.status_code == 200, first.text
    assert client.post("/ask", json=ask).json() == first.json()
    assert_problem(client.post("/ask", json={**ask, "user_input": "bye"}), 409, "request_id_conflict", "request_id")
    with client.stream("POST", "/v1/npcs/echo/turns/stream",
                       json={"player_id": "s1", "utterance": "bye", "request_id": "r"}) as streamed:
        text = "".join(streamed.iter_text())
    assert "event: error" in text and '"status": 409' in text and '"field": "request_id"' in text
    assert manager.store.count("turn_records", player_id="s1") == 1


def test_manager_replays_the_same_request_and_refuses_another(manager):
    first = manager.turn("echo", "hello", player_id="m", seed=5, request_id="a")
    second = manager.turn("echo", "more", player_id="m", seed=5, request_id="b")  # effective seed 6
    assert manager.turn("echo", "hello", player_id="m", seed=5, request_id="a") == first
    assert manager.turn("echo", "more", player_id="m", seed=5, request_id="b") == second  # client seed compared
    with pytest.raises(RequestIdConflictError) as info:
        manager.turn("echo", "more", player_id="m", seed=6, request_id="b")
    assert info.value.field == "request_id" and str(info.value).startswith("request_id:")
    with pytest.raises(RequestIdConflictError):
        manager.turn("echo", "more", player_id="m", request_id="b")
    with pytest.raises(RequestIdConflictError):
        manager.turn("echo", "something else", player_id="m", seed=5, request_id="a")
    assert manager.store.count("turn_records", player_id="m") == 2
    found = manager.store.find_request_and_response("m", "echo", "b")
    assert found is not None and found[0]["client"]["seed"] == 5 and found[0]["seed"] == 6
    assert found[1]["text"] == second.text
    assert manager.store.find_request_and_response("m", "echo", "zzz") is None


def test_the_original_utterance_is_compared_not_the_normalised_one(manager):
    first = manager.turn("echo", "  Hello\tthere  ", player_id="n", request_id="w")
    assert first.text == "echo 1: Hello there"
    assert manager.turn("echo", "  Hello\tthere  ", player_id="n", request_id="w") == first


def test_records_without_the_client_request_still_replay(manager):
    ctx = {"quest_stage": None, "location": None, "items": [], "actions": [], "game_state": {}}
    old_request = {"utterance": "hi there", "request_id": "old", "seed": 12, "context": ctx}
    response = {"text": "stored", "deltas": {"trust": 0.0, "relationship": 0.0}, "flags": [], "flag_probs": None,
                "flags_rejected": [], "state": {"trust": 0.3, "relationship": 0.0, "mood": "neutral",
                                                "quest_stage": "not_started"}, "meta": {"turn": 1}}
    manager.store.commit_turn("legacy", "echo", 0, NpcState(0.3, 0.0, "neutral", "not_started"), 1,
                              Exchange("hi there", "stored"), [], old_request, response, "old")
    assert manager.turn("echo", " hi  there", player_id="legacy", seed=10, request_id="old").text == "stored"
    with pytest.raises(RequestIdConflictError):
        manager.turn("echo", "bye", player_id="legacy", request_id="old")
    assert manager.store.count("turn_records", player_id="legacy") == 1


def test_a_request_committed_meanwhile_by_another_process_is_replayed_or_409(tmp_path):
    npcs, plugins = write_echo_npcs(tmp_path)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    winner = AgentManager(npcs, plugins_dir=plugins, store=StateStore(url))
    loser = AgentManager(npcs, plugins_dir=plugins, store=StateStore(url))
    first = winner.turn("echo", "hi", player_id="race", request_id="r1")

    real = loser.store.find_request_and_response
    calls = []

    def late_lookup(*args):  # the first look-up happened before the winner committed
        calls.append(args)
        return None if len(calls) == 1 else real(*args)

    loser.store.find_request_and_response = late_lookup
    assert loser.turn("echo", "hi", player_id="race", request_id="r1") == first  # via DuplicateRequestError
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(RequestIdConflictError):
        loser.turn("echo", "other", player_id="race", request_id="r1")
    assert winner.store.count("turn_records", player_id="race") == 1


# -- 5. /docs works offline ---------------------------------------------------------------
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets_without_a_key(keyed, page):
    html = keyed.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "http://" not in html.text and "https://" not in html.text and "cdn." not in html.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert any(a.endswith(".js") for a in assets)
    assert any(a.endswith(".css") for a in assets) or page == "/redoc"  # ReDoc's bundle holds its styles
    assert all(a.startswith("/docs/static/") for a in assets), assets
    for asset in assets:
        response = keyed.get(asset)  # no key: the docs' assets are open like the docs
        assert response.status_code == 200, asset
        assert len(response.content) > 1000
        kind = {"js": "javascript", "css": "text/css", "png": "image/png"}[asset.rsplit(".", 1)[1]]
        assert kind in response.headers["content-type"]
    assert "swagger" in html.text.lower() or "redoc" in html.text.lower()


def test_docs_routes_stay_out_of_the_schema_and_static_does_not_open_the_api(keyed):
    paths = keyed.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]
    assert keyed.get("/docs/oauth2-redirect").status_code == 200
    assert_problem(keyed.get("/docs/static/nope.js"), 404, "not_found")
    assert_problem(keyed.get("/docs/staticx"), 401, "unauthorized")
    assert_problem(keyed.get("/docs/static%2F..%2F..%2Fv1/npcs"), 404, "not_found")
