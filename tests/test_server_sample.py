"""The real server on the sample NPCs and the embedded model: what a game server sees.

A few turns only (the embedded model is slow on a shared CPU): a /v1 turn with lore,
a streamed turn whose first piece comes well before the end, and the seed's own
example record sent through /ask.
"""

from __future__ import annotations

import time

import pytest

from persona_agents.flags import DEFAULT_FLAGS

from .conftest import NPCS_DIR, SAMPLE_NPC_IDS
from .server_support import read_sse, start_cli_server

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def sample_server(tmp_path_factory):
    # One thread per model computation: the suite often shares a small CPU with other work.
    server = start_cli_server(tmp_path_factory.mktemp("sample-server"), NPCS_DIR, ready_timeout=900,
                              extra_args=("--torch-threads", "1"))
    yield server
    server.stop()


@pytest.fixture
def api(sample_server):
    with sample_server.client(timeout=600) as client:
        yield client


def test_ready_with_every_sample_npc(api):
    ready = api.get("/readyz").json()
    assert ready["status"] == "ready" and ready["database"] == "ok"
    assert ready["npcs"] == {npc: "ready" for npc in SAMPLE_NPC_IDS}
    assert sorted(n["id"] for n in api.get("/v1/npcs").json()["npcs"]) == sorted(SAMPLE_NPC_IDS)


def test_a_turn_on_the_embedded_model(api):
    response = api.post("/v1/npcs/blacksmith_village_center/turns",
                        json={"player_id": "sample-1", "utterance": "Can you fix my sword?", "seed": 1,
                              "quest_stage": "not_started", "location": "village_square"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"].strip() and "<" not in body["text"]
    meta = body["meta"]
    assert meta["model"].startswith("embedded:smollm2-135m-instruct") and meta["new_tokens"] > 0
    assert meta["timings_ms"]["generate"] > 0 and meta["steps"]["generate"] == ["multihead"]
    assert all(chunk["id"] for chunk in meta.get("lore", []))
    assert 0.0 <= body["state"]["trust"] <= 1.0


def test_the_first_piece_arrives_long_before_the_reply_is_done(api):
    started = time.perf_counter()
    with api.stream("POST", "/v1/npcs/guard_city_gate/turns/stream",
                    json={"player_id": "sample-2", "utterance": "Good evening. May I pass?", "seed": 3}) as response:
        assert response.status_code == 200
        events = list(read_sse(response, started))
    kinds = [kind for kind, _, _ in events]
    assert kinds[-1] == "final" and kinds.count("text") >= 3, kinds
    first_piece_at, final_at = events[0][2], events[-1][2]
    assert kinds[0] == "text"
    # Pieces follow the tokens: the first one comes with the first tokens, before the
    # last piece and the final event. (With the adapter's short replies, retrieval and
    # the prompt's prefill take most of a turn, so a ratio of times would only test that.)
    last_piece_at = [at for kind, _, at in events if kind == "text"][-1]
    assert first_piece_at < last_piece_at < final_at, (first_piece_at, last_piece_at, final_at)
    streamed = "".join(data["text"] for kind, data, _ in events if kind == "text")
    final_text = events[-1][1]["text"]
    assert final_text and streamed.strip().startswith(final_text[:20])


def test_the_seed_example_through_ask(api):
    """SEED.md's example record, sent the way the seed's game server sent it."""
    body = {
        "session_id": "seed-session-1",
        "npc_id": "mother_abandoned_factory",
        "user_input": "What?... That sounds like a riddle...",
        "context": {
            "player_state": {"items": [], "actions": [], "position": "abandoned_factory", "reputation": "helpful"},
            "game_state": {"quest_stage": "complete", "location": "abandoned_factory"},
            "npc_state": {"relationship": "close_friend", "trust": 0.99, "mood": "hopeful", "style": "somber"},
        },
        "dialogue_history": [{"player": "Where is Jason's uncle?", "npc": "My brother is at his hideout..."}],
    }
    response = api.post("/ask", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert set(out) == {"session_id", "npc_output_text", "deltas", "flags", "valid", "meta"}
    assert out["session_id"] == "seed-session-1" and out["npc_output_text"].strip()
    assert set(out["deltas"]) == {"trust", "relationship"}
    assert set(out["flags"]) >= set(DEFAULT_FLAGS) and set(out["flags"].values()) <= {0, 1}
    assert out["valid"] is True
    assert out["meta"]["state"]["quest_stage"] == "complete"
    assert "dialogue_history" in out["meta"]["ignored_fields"]
