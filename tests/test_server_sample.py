"""The real server on the sample NPCs and the embedded model: what a game server sees.

A few turns only (the embedded model is slow on a shared CPU): a /v1 turn with lore,
a streamed turn that carries only the postprocessed text, and the seed's own
example record sent through /ask.
"""

from __future__ import annotations

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
    assert meta["model"].startswith("embedded:smollm2-135m-instruct")
    # Decided first: a writer's line that fits means no reply token was decoded.
    assert meta["new_tokens"] > 0 or (meta["reply_source"] == "authored" and meta["speech"].startswith("skipped"))
    assert meta["timings_ms"]["generate"] > 0 and meta["steps"]["generate"] == ["multihead"]
    assert all(chunk["id"] for chunk in meta.get("lore", []))
    assert 0.0 <= body["state"]["trust"] <= 1.0


def test_the_stream_carries_only_what_the_postprocess_steps_let_through(api):
    # The sample NPCs decide, then speak: the decision goes out after the prompt pass; they
    # say writers' lines (authored_lines may replace the model's words), so the text goes
    # out once, after postprocessing, never the discarded words.
    # Token-by-token streaming on the real model: tests/test_streaming.py.
    with api.stream("POST", "/v1/npcs/guard_city_gate/turns/stream",
                    json={"player_id": "sample-2", "utterance": "Good evening. May I pass?", "seed": 3}) as response:
        assert response.status_code == 200
        events = list(read_sse(response))
    kinds = [kind for kind, _, _ in events]
    assert kinds == ["decision", "text", "final"], kinds
    decision, text, final = (data for _, data, _ in events)
    assert text["text"] == final["text"] and final["meta"]["streamed"] == "after postprocess"
    # Decided before it spoke: what the game applies came first, and equals the turn's.
    assert decision == {"flags": final["flags"], "flags_rejected": final["flags_rejected"], "deltas": final["deltas"]}


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
