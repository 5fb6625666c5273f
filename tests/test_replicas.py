"""Replicas over one database (issue 28): two `persona-agents serve` processes share one
SQLite file or one real PostgreSQL database, and eight clients send each turn to either
one at random. Nothing is lost or doubled, each player's turns stay ordered across the
replicas (the store's version check), and a repeated `request_id` answered by the other
replica returns the stored response without running a new turn.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from persona_agents.store import StateStore

from .server_support import start_cli_server, write_tiny_npcs

CLIENTS = 8
TURNS_PER_CLIENT = 12
#: Fewer players than clients: the same player is often in flight on both replicas.
PLAYERS = [f"replica-player-{i}" for i in range(3)]
#: Retries of a 409 concurrent_turn (the server already retried 5 times inside the turn).
RETRIES = 5


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def shared_db(request, tmp_path):
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_server").database()
    return f"sqlite:///{tmp_path / 'shared.db'}"


@pytest.fixture
def replicas(shared_db, tmp_path, tiny_model_dir):
    npcs = write_tiny_npcs(tmp_path / "npcs", tiny_model_dir)
    servers = []
    try:
        for index in range(2):
            servers.append(start_cli_server(tmp_path / f"replica-{index}", npcs, db_url=shared_db,
                                            extra_args=("--player-queue", "16")))
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_two_replicas_keep_every_players_turns_ordered_and_answer_repeats_from_the_store(replicas, shared_db):
    def client_loop(index: int):
        rng = random.Random(index)
        answered, failures, retried = [], [], []
        clients = [server.client(timeout=120) for server in replicas]
        try:
            for n in range(TURNS_PER_CLIENT):
                side = rng.randrange(2)
                body = {"player_id": rng.choice(PLAYERS), "utterance": f"Client {index} says line {n}.",
                        "request_id": f"c{index}-t{n}", "items": ["iron_ore"], "quest_stage": "in_progress"}
                response = clients[side].post("/v1/npcs/smith/turns", json=body)
                for _ in range(RETRIES):
                    # What the API tells a game server to do when the other replica kept
                    # winning the race (409 concurrent_turn): send the same request again.
                    if response.status_code != 409 or response.json().get("code") != "concurrent_turn":
                        break
                    retried.append(body["request_id"])
                    response = clients[side].post("/v1/npcs/smith/turns", json=body)
                if response.status_code == 200:
                    answered.append((side, body, response.json()))
                else:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
        finally:
            for client in clients:
                client.close()
        return answered, failures, retried

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        results = list(pool.map(client_loop, range(CLIENTS)))
    failures = [f for _, fs, _ in results for f in fs]
    answered = [a for done, _, _ in results for a in done]
    print(f"\nreplicas: {len(answered)} turns answered, {sum(len(r) for *_, r in results)} retried after 409")
    assert failures == []
    assert len(answered) == CLIENTS * TURNS_PER_CLIENT
    assert {side for side, _, _ in answered} == {0, 1}  # both replicas served turns

    store = StateStore(shared_db)
    assert store.count("turn_records") == len(answered)
    for who in PLAYERS:
        data = store.export(who)["npcs"].get("smith")
        if data is None:
            continue
        records = data["turn_records"]
        # Ordered across replicas: turn numbers 1..N with no gap or repeat, and the state is
        # what the turns' deltas add up to (no update lost to the other replica).
        assert [r["turn"] for r in records] == list(range(1, len(records) + 1))
        applied = sum(r["response"]["deltas"]["trust"] for r in records)
        assert data["state"]["trust"] == pytest.approx(min(1.0, 0.3 + applied), abs=1e-6)

    # A repeated request sent to the other replica returns the stored response, runs nothing.
    for side, body, first in answered[:: max(1, len(answered) // 8)]:
        other = replicas[1 - side]
        with other.client(timeout=120) as client:
            again = client.post("/v1/npcs/smith/turns", json=body)
        assert again.status_code == 200, again.text
        assert again.json() == first
    assert store.count("turn_records") == len(answered)
