"""A bounded load test on loopback: 16 concurrent clients, mixed players and NPCs, for
PERSONA_AGENTS_LOAD_SECONDS (default 20 s here; the issue's 60 s run is in the report
and `PERSONA_AGENTS_LOAD_SECONDS=60 pytest tests/test_server_load.py` repeats it).

Zero failed requests, and the store holds exactly one turn record (and one history
line) per successful response: nothing lost, nothing doubled, and the turns of players
shared between clients stay ordered.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from persona_agents.store import StateStore

from .server_support import read_sse, start_cli_server, write_tiny_npcs

CLIENTS = 16
SECONDS = float(os.environ.get("PERSONA_AGENTS_LOAD_SECONDS", "20"))
#: More players than clients, drawn at random: the same player is often in flight twice.
PLAYERS = [f"load-player-{i}" for i in range(24)]


@pytest.fixture(scope="module")
def load_server(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("load-server")
    # 16 clients may all pick one player: room for all of them in that player's queue, so
    # every turn is served (the 429 for a flooding player is tested in test_scheduler.py).
    server = start_cli_server(root, write_tiny_npcs(root / "npcs", tiny_model_dir), rate_limit="off",
                              extra_args=("--player-queue", "16"))
    yield server
    server.stop()


def one_request(client, rng: random.Random) -> tuple[str, str | None]:
    """One turn of a random kind; (kind, failure or None)."""
    who, npc = rng.choice(PLAYERS), rng.choice(["smith", "guard"])
    context = {"items": ["iron_ore"], "quest_stage": "in_progress"} if rng.random() < 0.3 else {}
    roll = rng.random()
    if roll < 0.2:
        with client.stream("POST", f"/v1/npcs/{npc}/turns/stream",
                           json={"player_id": who, "utterance": "Tell me more.", **context}) as response:
            if response.status_code != 200:
                return "stream", f"stream {response.status_code}"
            kinds = [kind for kind, _, _ in read_sse(response)]
        return "stream", None if kinds and kinds[-1] == "final" else f"stream events {kinds}"
    if roll < 0.35:
        body = {"session_id": who, "npc_id": npc, "user_input": "Any news?",
                "context": {"player_state": {"items": context.get("items", [])},
                            "game_state": {"quest_stage": context.get("quest_stage", "not_started")}}}
        response = client.post("/ask", json=body)
        return "ask", None if response.status_code == 200 else f"ask {response.status_code}: {response.text[:200]}"
    response = client.post(f"/v1/npcs/{npc}/turns", json={"player_id": who, "utterance": "Hello!", **context})
    return "turn", None if response.status_code == 200 else f"turn {response.status_code}: {response.text[:200]}"


def test_sixteen_clients_lose_no_turn(load_server):
    deadline = time.monotonic() + SECONDS

    def client_loop(index: int):
        rng = random.Random(index)
        done, failures, latencies = 0, [], []
        with load_server.client(timeout=120) as client:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    kind, failure = one_request(client, rng)
                except Exception as exc:  # a transport error is a failed request too
                    failure = f"{type(exc).__name__}: {exc}"
                latencies.append(time.perf_counter() - started)
                if failure:
                    failures.append(failure)
                else:
                    done += 1
        return done, failures, latencies

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        results = list(pool.map(client_loop, range(CLIENTS)))
    elapsed = time.perf_counter() - started
    successes = sum(r[0] for r in results)
    failures = [f for r in results for f in r[1]]
    latencies = sorted(x for r in results for x in r[2])
    print(f"\nload: {CLIENTS} clients, {elapsed:.1f} s, {successes} turns ok, {len(failures)} failed, "
          f"{successes / elapsed:.1f} turns/s, latency p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p95 {latencies[int(len(latencies) * 0.95) - 1] * 1000:.0f} ms")
    assert failures == []
    assert successes >= CLIENTS
    store = StateStore(load_server.db_url)
    assert store.count("turn_records") == successes
    assert store.count("history") == successes
    # Per (player, NPC): the stored turn counter agrees with the records (no lost update).
    for who in PLAYERS:
        exported = store.export(who)["npcs"]
        for npc, entry in exported.items():
            numbers = [r["turn"] for r in entry["turn_records"]]
            assert numbers == list(range(1, entry["state"]["turns"] + 1)), (who, npc)
