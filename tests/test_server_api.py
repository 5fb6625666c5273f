"""The HTTP API on a real server (`persona-agents serve`, loopback, tiny model): every
endpoint, the stream, every error status, the API key and the rate limit."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from persona_agents.flags import DEFAULT_FLAGS
from persona_agents.store import StateStore

from .server_support import API_KEY, SHARED_RATE_LIMIT, read_sse, shared_tiny_server

PROBLEM = "application/problem+json"


@pytest.fixture(scope="session")
def live(tmp_path_factory, tiny_model_dir):
    return shared_tiny_server(tmp_path_factory, tiny_model_dir)


@pytest.fixture
def api(live):
    with live.client() as client:
        yield client


def player() -> str:
    return f"player-{uuid.uuid4().hex[:10]}"


def assert_problem(response: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["title"] and body["detail"]
    assert body["type"].startswith("urn:persona-agents:problem:")
    if field is not None:
        assert body["field"] == field
        assert field in body["detail"]
    assert "Traceback" not in response.text
    return body


def smith_turn(api, who: str, utterance: str = "Can you fix my sword?", **extra) -> httpx.Response:
    body = {"player_id": who, "utterance": utterance, "seed": 1, **extra}
    return api.post("/v1/npcs/smith/turns", json=body)


# -- health, docs, NPCs ----------------------------------------------------------------
def test_healthz_needs_no_key_and_readyz_reports_models_and_database(live):
    assert httpx.get(f"{live.base_url}/healthz").json() == {"status": "ok"}
    assert_problem(httpx.get(f"{live.base_url}/readyz"), 401, "unauthorized")
    ready = httpx.get(f"{live.base_url}/readyz", headers=live.headers)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "errors": {},
                            "npcs": {"broken": "ready", "guard": "ready", "smith": "ready"}}


def test_openapi_lists_every_endpoint_and_docs_are_served(live):
    schema = httpx.get(f"{live.base_url}/openapi.json").json()
    assert {path: sorted(ops) for path, ops in schema["paths"].items()} == {
        "/v1/npcs/{npc_id}/turns": ["post"],
        "/v1/npcs/{npc_id}/turns/stream": ["post"],
        "/v1/npcs": ["get"],
        "/v1/npcs/{npc_id}": ["get"],
        "/v1/players/{player_id}/npcs/{npc_id}/state": ["delete", "get"],
        "/v1/players/{player_id}/npcs/{npc_id}/memories": ["delete", "get"],
        "/v1/players/{player_id}/npcs/{npc_id}/memories/{memory_id}": ["delete"],
        "/v1/scenes/{scene_id}/turns": ["post"],
        "/v1/scenes/{scene_id}/turns/stream": ["post"],
        "/healthz": ["get"],
        "/readyz": ["get"],
        "/ask": ["post"],
    }
    turn = schema["paths"]["/v1/npcs/{npc_id}/turns"]["post"]
    assert turn["responses"]["422"]["content"] == {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    assert "Retry-After" in turn["responses"]["429"]["headers"]
    assert schema["components"]["schemas"]["TurnRequest"]["properties"]["utterance"]["maxLength"] == 4000
    assert set(schema["components"]["securitySchemes"]) == {"bearerAuth", "apiKeyHeader"}
    assert "security" not in schema["paths"]["/healthz"]["get"]
    docs = httpx.get(f"{live.base_url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_list_and_show_npcs(api):
    npcs = api.get("/v1/npcs").json()["npcs"]
    assert [n["id"] for n in npcs] == ["broken", "guard", "smith"]
    smith = api.get("/v1/npcs/smith").json()
    assert smith["flags"] == ["give_item"] and smith["location"] == "forge"
    assert smith["initial_state"] == {"trust": 0.3, "relationship": 0.0, "mood": "neutral",
                                      "quest_stage": "not_started"}
    assert smith["steps"]["postprocess"] == ["propose_flags", "game_rules"]
    assert smith["persona"]["flag_rules"]["give_item"]["payload"] == {"item": "sword"}
    missing = assert_problem(api.get("/v1/npcs/nobody"), 404, "unknown_npc", "npc_id")
    assert missing["available"] == ["broken", "guard", "smith"]


# -- turns and state -------------------------------------------------------------------
def test_turn_returns_reply_deltas_flags_and_state(api):
    who = player()
    first = smith_turn(api, who, items=["iron_ore"], quest_stage="in_progress", location="forge",
                       actions=["paid"], game_state={"weather": "rain", "day": 3})
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body) == {"text", "deltas", "flags", "flag_probs", "flags_rejected", "state", "meta"}
    assert isinstance(body["text"], str)
    assert body["deltas"] == {"trust": 0.1, "relationship": 0.0}
    assert body["flags"] == [{"name": "give_item", "payload": {"item": "sword"}}]
    assert body["flags_rejected"] == [] and body["flag_probs"] is None
    assert body["state"] == {"trust": 0.4, "relationship": 0.0, "mood": "neutral", "quest_stage": "in_progress"}
    meta = body["meta"]
    assert meta["npc_id"] == "smith" and meta["player_id"] == who and meta["turn"] == 1 and meta["seed"] == 1
    assert set(meta["timings_ms"]) == {"preprocess", "retrieve", "prompt", "generate", "postprocess"}
    # Without the item the game's rules refuse the flag, and say why.
    second = smith_turn(api, who, utterance="And now?").json()
    assert second["flags"] == []
    assert [(f["name"], f["reason"]) for f in second["flags_rejected"]] == [("give_item", "missing_item")]
    assert second["state"]["trust"] == pytest.approx(0.5) and second["meta"]["turn"] == 2


def test_state_get_and_delete(api):
    who = player()
    path = f"/v1/players/{who}/npcs/smith/state"
    fresh = api.get(path).json()
    assert fresh == {"player_id": who, "npc_id": "smith", "turns": 0, "flags_fired": [], "history": [],
                     "state": {"trust": 0.3, "relationship": 0.0, "mood": "neutral", "quest_stage": "not_started"}}
    smith_turn(api, who, items=["iron_ore"], quest_stage="in_progress")
    reply = smith_turn(api, who, utterance="Thanks!").json()["text"]
    stored = api.get(path).json()
    assert stored["turns"] == 2 and stored["flags_fired"] == [{"flag": "give_item", "turn": 1}]
    assert [h["player"] for h in stored["history"]] == ["Can you fix my sword?", "Thanks!"]
    assert stored["history"][1]["npc"] == reply
    assert stored["state"]["trust"] == pytest.approx(0.5)
    deleted = api.delete(path)
    assert deleted.status_code == 200 and deleted.json() == fresh
    assert api.get(path).json() == fresh
    assert_problem(api.get(f"/v1/players/{who}/npcs/nobody/state"), 404, "unknown_npc")
    assert_problem(api.delete(f"/v1/players/{who}/npcs/nobody/state"), 404, "unknown_npc")


def test_repeated_request_id_returns_the_stored_response(api, live):
    who = player()
    first = smith_turn(api, who, request_id="req-1").json()
    again = smith_turn(api, who, request_id="req-1").json()
    assert again == first
    # The same id with another request is refused, not answered with the first response.
    assert_problem(smith_turn(api, who, utterance="a different line", request_id="req-1"),
                   409, "request_id_conflict", "request_id")
    assert StateStore(live.db_url).count("turn_records", player_id=who) == 1


def test_same_player_turns_are_ordered_and_players_run_side_by_side(api, live):
    who, others = player(), [player() for _ in range(3)]
    jobs = [(who, f"line {i}") for i in range(5)] + [(o, "hello") for o in others]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: api.post("/v1/npcs/guard/turns",
                                                     json={"player_id": job[0], "utterance": job[1]}), jobs))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert sorted(r.json()["meta"]["turn"] for r in results[:5]) == [1, 2, 3, 4, 5]
    stored = api.get(f"/v1/players/{who}/npcs/guard/state").json()
    assert stored["turns"] == 5 and sorted(h["player"] for h in stored["history"]) == [f"line {i}" for i in range(5)]
    store = StateStore(live.db_url)
    assert [store.count("turn_records", player_id=p) for p in others] == [1, 1, 1]


# -- the stream ------------------------------------------------------------------------
def test_stream_sends_text_pieces_then_the_final_turn(api):
    who = player()
    started = time.perf_counter()
    with api.stream("POST", "/v1/npcs/smith/turns/stream",
                    json={"player_id": who, "utterance": "Tell me about the forge.", "seed": 5,
                          "items": ["iron_ore"], "quest_stage": "in_progress"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(read_sse(response, started))
    kinds = [kind for kind, _, _ in events]
    assert kinds[-1] == "final" and kinds.count("final") == 1 and "error" not in kinds
    assert kinds[0] == "text", "the first piece comes before the final event"
    pieces = [data["text"] for kind, data, _ in events if kind == "text"]
    assert all(p and "<" not in p for p in pieces)
    first_piece_at, final_at = events[0][2], events[-1][2]
    assert first_piece_at <= final_at
    final = events[-1][1]
    assert final["flags"] == [{"name": "give_item", "payload": {"item": "sword"}}]
    assert final["meta"]["turn"] == 1 and final["state"]["trust"] == pytest.approx(0.4)
    # One decision event, what the game applies, before the final one (this NPC has no
    # state heads to decide before it speaks, so it comes after the text).
    decisions = [data for kind, data, _ in events if kind == "decision"]
    assert kinds.count("decision") == 1 and kinds.index("decision") < kinds.index("final")
    assert decisions[0] == {"flags": final["flags"], "flags_rejected": final["flags_rejected"],
                            "deltas": final["deltas"]}
    assert api.get(f"/v1/players/{who}/npcs/smith/state").json()["turns"] == 1


def test_stream_reports_a_pipeline_error_as_an_error_event(api):
    who = player()
    with api.stream("POST", "/v1/npcs/smith/turns/stream", json={"player_id": who, "utterance": "x" * 300}) as response:
        assert response.status_code == 200
        events = list(read_sse(response))
    assert [kind for kind, _, _ in events] == ["error"]
    problem = events[0][1]
    assert problem["status"] == 422 and problem["code"] == "input_rejected" and problem["field"] == "utterance"
    assert "200" in problem["detail"]
    assert api.get(f"/v1/players/{who}/npcs/smith/state").json()["turns"] == 0


def test_stream_rejects_before_streaming(api, live):
    assert_problem(api.post("/v1/npcs/nobody/turns/stream", json={"player_id": "p", "utterance": "hi"}),
                   404, "unknown_npc")
    assert_problem(api.post("/v1/npcs/smith/turns/stream", json={"player_id": "p"}),
                   422, "invalid_request", "utterance")
    assert_problem(httpx.post(f"{live.base_url}/v1/npcs/smith/turns/stream",
                              json={"player_id": "p", "utterance": "hi"}),
                   401, "unauthorized")


# -- errors ----------------------------------------------------------------------------
def test_unknown_npc_is_404(api):
    body = assert_problem(api.post("/v1/npcs/nobody/turns", json={"player_id": "p", "utterance": "hi"}),
                          404, "unknown_npc", "npc_id")
    assert "nobody" in body["detail"] and body["available"] == ["broken", "guard", "smith"]
    assert_problem(api.get("/no/such/route"), 404, "not_found")


@pytest.mark.parametrize("body, field", [
    ({"player_id": "p"}, "utterance"),
    ({"utterance": "hi"}, "player_id"),
    ({"player_id": "p", "utterance": "hi", "items": "iron_ore"}, "items"),
    ({"player_id": "p", "utterance": "hi", "items": ["ok", 3]}, "items.1"),
    ({"player_id": "p", "utterance": "hi", "utterence": "typo"}, "utterence"),
    ({"player_id": "p", "utterance": ""}, "utterance"),
    ({"player_id": "p\x00", "utterance": "hi"}, "player_id"),
    ({"player_id": "p", "utterance": "hi", "seed": -1}, "seed"),
])
def test_invalid_body_is_422_naming_the_field(api, body, field):
    problem = assert_problem(api.post("/v1/npcs/smith/turns", json=body), 422, "invalid_request", field)
    assert field in [e["field"] for e in problem["errors"]]


def test_malformed_json_is_422(api):
    response = api.post("/v1/npcs/smith/turns", content=b'{"player_id": "p", ',
                        headers={"content-type": "application/json"})
    assert_problem(response, 422, "invalid_request", "body")


def test_too_long_utterance_is_422_and_too_large_body_413(api):
    who = player()
    over_npc_limit = assert_problem(smith_turn(api, who, utterance="a" * 201), 422, "input_rejected", "utterance")
    assert "limit is 200" in over_npc_limit["detail"]
    over_api_limit = assert_problem(smith_turn(api, who, utterance="a" * 4001), 422, "invalid_request", "utterance")
    assert over_api_limit["errors"][0]["type"] == "string_too_long"
    assert_problem(smith_turn(api, who, utterance="a" * 70_000), 413, "request_too_large")
    assert api.get(f"/v1/players/{who}/npcs/smith/state").json()["turns"] == 0


def test_api_key_is_required_everywhere_but_healthz(live):
    base = live.base_url
    for method, path in [("GET", "/v1/npcs"), ("GET", "/v1/npcs/smith"), ("GET", "/readyz"),
                         ("GET", "/v1/players/p/npcs/smith/state"), ("DELETE", "/v1/players/p/npcs/smith/state"),
                         ("POST", "/v1/npcs/smith/turns"), ("POST", "/v1/npcs/smith/turns/stream"), ("POST", "/ask")]:
        missing = httpx.request(method, base + path, json={})
        body = assert_problem(missing, 401, "unauthorized")
        assert "Missing API key" in body["detail"] and missing.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.request(method, base + path, json={}, headers={"Authorization": "Bearer not-the-key"})
        assert assert_problem(wrong, 401, "unauthorized")["detail"] == "Wrong API key."
    assert httpx.get(base + "/v1/npcs", headers={"X-API-Key": API_KEY}).status_code == 200
    assert httpx.get(base + "/v1/npcs", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.get(base + "/v1/npcs", headers={"X-API-Key": "nope"}).status_code == 401
    assert httpx.get(base + "/healthz").status_code == 200


def test_rate_limit_is_429_with_retry_after_per_player(api):
    limit = int(SHARED_RATE_LIMIT.split("/")[0])
    who = player()
    for _ in range(limit):
        assert api.post("/v1/npcs/guard/turns", json={"player_id": who, "utterance": "hi"}).status_code == 200
    over = api.post("/v1/npcs/guard/turns", json={"player_id": who, "utterance": "hi"})
    body = assert_problem(over, 429, "rate_limited", "player_id")
    assert 1 <= int(over.headers["retry-after"]) <= 60
    assert who in body["detail"]
    ask = api.post("/ask", json={"session_id": who, "npc_id": "guard", "user_input": "hi"})
    assert assert_problem(ask, 429, "rate_limited", "session_id")
    assert api.post("/v1/npcs/guard/turns", json={"player_id": player(), "utterance": "hi"}).status_code == 200
    assert api.get(f"/v1/players/{who}/npcs/guard/state").json()["turns"] == limit


def test_a_failing_step_is_a_generic_500_and_the_log_has_the_traceback(api, live):
    response = api.post("/v1/npcs/broken/turns", json={"player_id": player(), "utterance": "hi"})
    body = assert_problem(response, 500, "internal_error")
    assert "boom" not in response.text and "explode" not in response.text
    assert "server log" in body["detail"]
    deadline = time.monotonic() + 10
    while "boom inside the pipeline" not in live.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "boom inside the pipeline" in live.log() and "Traceback" in live.log()


# -- the seed's /ask -------------------------------------------------------------------
def seed_request(session: str, **overrides) -> dict:
    """The seed engine's request shape (SEED.md): what a game server written for it sends."""
    body = {
        "session_id": session,
        "npc_id": "smith",
        "user_input": "Can you fix my sword?",
        "context": {
            "player_state": {"items": ["iron_ore", {"id": "torch", "count": 1}], "actions": ["talked_to_guard"],
                             "position": "forge", "reputation": "helpful"},
            "game_state": {"quest_stage": "in_progress", "location": "forge", "weather": "rain"},
            "npc_state": {"trust": 0.99, "relationship": 0.5, "mood": "hopeful"},
        },
        "require": {"items": ["iron_ore"], "words": ["sword"]},
        "npc_config": {"temperature": 0.2},
        "dialogue_history": [{"player": "Hello.", "npc": "Morning."}],
    }
    body.update(overrides)
    return body


def test_ask_takes_and_returns_the_seed_shapes(api):
    session = player()
    response = api.post("/ask", json=seed_request(session))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"session_id", "npc_output_text", "deltas", "flags", "valid", "meta"}
    assert body["session_id"] == session and isinstance(body["npc_output_text"], str)
    assert body["deltas"] == {"trust": 0.1, "relationship": 0.0}
    assert body["flags"] == {name: int(name == "give_item") for name in DEFAULT_FLAGS}
    assert body["valid"] is bool(body["npc_output_text"].strip())
    meta = body["meta"]
    assert meta["flag_payloads"] == {"give_item": {"item": "sword"}} and meta["require_unmet"] == []
    assert meta["state"]["trust"] == pytest.approx(0.4) and meta["state"]["quest_stage"] == "in_progress"
    assert meta["ignored_fields"] == ["context.npc_state.trust", "context.npc_state.relationship",
                                      "context.npc_state.mood", "dialogue_history", "npc_config"]
    # session_id is the player: the same conversation is visible through /v1.
    stored = api.get(f"/v1/players/{session}/npcs/smith/state").json()
    assert stored["turns"] == 1 and stored["history"][0]["player"] == "Can you fix my sword?"
    assert stored["flags_fired"] == [{"flag": "give_item", "turn": 1}]


def test_ask_require_decides_valid(api):
    session = player()
    body = api.post("/ask", json=seed_request(session, require={"items": ["gold"], "words": ["dragon"],
                                                                "game_state": {"weather": "sun"},
                                                                "min_deltas": {"trust": 0.5}})).json()
    assert body["valid"] is False
    assert body["meta"]["require_unmet"] == [
        "words: none of dragon in user_input", "items: missing gold",
        "game_state.weather: is 'rain', required 'sun'", "min_deltas.trust: +0.10 < +0.50",
    ]
    minimal = api.post("/ask", json={"session_id": session, "npc_id": "guard", "user_input": "Hello"})
    assert minimal.status_code == 200 and minimal.json()["flags"] == {name: 0 for name in DEFAULT_FLAGS}


def test_ask_errors(api):
    assert_problem(api.post("/ask", json=seed_request(player(), npc_id="nobody")), 404, "unknown_npc", "npc_id")
    assert_problem(api.post("/ask", json={"session_id": "s", "npc_id": "smith"}), 422, "invalid_request", "user_input")
    bad_items = seed_request(player())
    bad_items["context"]["player_state"]["items"] = "iron_ore"
    assert_problem(api.post("/ask", json=bad_items), 422, "invalid_request", "context.player_state.items")
    assert_problem(api.post("/ask", json=seed_request(player(), user_input="y" * 250)),
                   422, "input_rejected", "user_input")


def test_a_client_that_leaves_mid_stream_still_gets_its_turn_stored(live):
    who = player()
    with httpx.Client(base_url=live.base_url, headers=live.headers, timeout=60) as client:
        body = {"player_id": who, "utterance": "Hi", "seed": 5}
        with client.stream("POST", "/v1/npcs/guard/turns/stream", json=body) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # the first line of the first event, then hang up
    with live.client() as api:
        deadline = time.monotonic() + 30
        while api.get(f"/v1/players/{who}/npcs/guard/state").json()["turns"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert api.get(f"/v1/players/{who}/npcs/guard/state").json()["turns"] == 1


# -- readiness with a model that cannot load (uvicorn in a thread, no key) --------------
def test_readyz_is_503_while_a_model_cannot_load_and_its_turns_are_503(tmp_path, tiny_model_dir):
    import yaml

    from persona_agents.manager import AgentManager
    from persona_agents.server import ServerSettings, create_app

    from .conftest import persona_dict
    from .server_support import thread_server

    folder = tmp_path / "npcs"
    folder.mkdir()
    (folder / "ok.yaml").write_text(yaml.safe_dump(persona_dict("ok", str(tiny_model_dir))))
    (folder / "ghost.yaml").write_text(yaml.safe_dump(persona_dict("ghost", str(tmp_path / "no-such-model"))))
    manager = AgentManager(folder, store=StateStore(f"sqlite:///{tmp_path / 'state.db'}"))
    with thread_server(create_app(manager, ServerSettings())) as base:
        deadline = time.monotonic() + 60
        while "loading" in (ready := httpx.get(f"{base}/readyz")).json()["npcs"].values():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "unavailable" and body["database"] == "ok"
        assert body["npcs"] == {"ghost": "error", "ok": "ready"} and "Cannot load model" in body["errors"]["ghost"]
        assert httpx.get(f"{base}/v1/npcs").status_code == 200  # no key configured on loopback
        failed = httpx.post(f"{base}/v1/npcs/ghost/turns", json={"player_id": "p", "utterance": "hi"})
        problem = assert_problem(failed, 503, "model_unavailable")
        assert str(tmp_path) not in problem["detail"]
        assert httpx.post(f"{base}/v1/npcs/ok/turns", json={"player_id": "p", "utterance": "hi"}).status_code == 200


# -- long-term memories (issue 30) -------------------------------------------------------
def test_memories_are_listed_and_forgotten_one_by_one_or_all(api):
    who = player()
    # smith: give_item fires with iron_ore in_progress, so the turn leaves a fact and an event.
    assert smith_turn(api, who, "My name is Aldric. Can you fix my sword?", items=["iron_ore"],
                      quest_stage="in_progress").status_code == 200
    listed = api.get(f"/v1/players/{who}/npcs/smith/memories")
    assert listed.status_code == 200, listed.text
    memories = listed.json()["memories"]
    assert [(m["turn"], m["kind"]) for m in memories] == [(1, "fact"), (1, "event")]
    assert memories[0]["text"] == 'The player said: "My name is Aldric."' and memories[0]["source"] is None
    assert memories[1]["text"].startswith("On turn 1: give_item (") and memories[1]["text"].endswith("item=sword.")

    gone = api.delete(f"/v1/players/{who}/npcs/smith/memories/{memories[0]['id']}")
    assert gone.status_code == 200 and gone.json()["removed"] == 1
    assert [m["id"] for m in api.get(f"/v1/players/{who}/npcs/smith/memories").json()["memories"]] == [
        memories[1]["id"]]
    assert_problem(api.delete(f"/v1/players/{who}/npcs/smith/memories/{memories[0]['id']}"), 404,
                   "memory_not_found", field="memory_id")
    assert api.delete(f"/v1/players/{who}/npcs/smith/memories").json()["removed"] == 1
    assert api.get(f"/v1/players/{who}/npcs/smith/memories").json()["memories"] == []
    # Forgetting touches neither the state nor the history.
    assert api.get(f"/v1/players/{who}/npcs/smith/state").json()["turns"] == 1
    assert_problem(api.get(f"/v1/players/{who}/npcs/nobody/memories"), 404, "unknown_npc", field="npc_id")
