"""Fair scheduling of turns (issue 33): a player's turns queue behind each other, one
player cannot hold the turn pool, full queues answer 429 / 503 with Retry-After, and
health checks answer outside the turn pool. Times are generous bounds on sleeps, not
speed targets (those live in bench/fair_scheduling.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from persona_agents.server.scheduler import PlayerBusy, SchedulerSettings, ServerBusy, TurnScheduler


class Tracker:
    """Work that sleeps and records how many of each player's calls overlap."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.total_peak = 0

    def work(self, key: str, seconds: float) -> float:
        with self.lock:
            self.running[key] = self.running.get(key, 0) + 1
            self.peak[key] = max(self.peak.get(key, 0), self.running[key])
            self.total_peak = max(self.total_peak, sum(self.running.values()))
        time.sleep(seconds)
        with self.lock:
            self.running[key] -= 1
        return time.perf_counter()


def run(coro):
    return asyncio.run(coro)


def test_a_players_turns_run_one_after_another_and_the_table_empties():
    async def main():
        scheduler = TurnScheduler(SchedulerSettings(workers=4, per_player=1, player_queue=4))
        tracker = Tracker()
        tickets = [scheduler.admit("p1") for _ in range(5)]
        await asyncio.gather(*(t.run(tracker.work, "p1", 0.05) for t in tickets))
        return scheduler, tracker

    scheduler, tracker = run(main())
    assert tracker.peak["p1"] == 1
    assert scheduler.snapshot() == {"players": 0, "admitted": 0, "running": 0}


def test_a_player_over_its_queue_is_refused_with_retry_after():
    async def main():
        scheduler = TurnScheduler(SchedulerSettings(workers=4, per_player=1, player_queue=2))
        tickets = [scheduler.admit("p1", "session_id") for _ in range(3)]
        with pytest.raises(PlayerBusy) as info:
            scheduler.admit("p1", "session_id")
        assert info.value.field == "session_id" and info.value.retry_after >= 1
        scheduler.admit("p2").release()  # another player is not affected
        await asyncio.gather(*(t.run(time.sleep, 0.01) for t in tickets))
        scheduler.admit("p1").release()  # room again once they are done
        return scheduler

    assert run(main()).snapshot()["players"] == 0


def test_a_full_queue_is_refused_with_503():
    async def main():
        scheduler = TurnScheduler(SchedulerSettings(workers=1, per_player=1, player_queue=0, max_waiting=3))
        tickets = [scheduler.admit(f"p{i}") for i in range(3)]
        with pytest.raises(ServerBusy) as info:
            scheduler.admit("late")
        assert info.value.retry_after >= 1
        await asyncio.gather(*(t.run(time.sleep, 0.01) for t in tickets))

    run(main())


def test_one_player_flooding_cannot_hold_the_pool_from_another():
    # 20 turns of 0.2 s from p1 would take 4 s one after another; p2's turn, sent
    # after them, still gets a worker at once and ends in about its own time.
    async def main():
        scheduler = TurnScheduler(SchedulerSettings(workers=2, per_player=1, player_queue=100))
        tracker = Tracker()
        flood = [asyncio.create_task(scheduler.admit("p1").run(tracker.work, "p1", 0.2)) for _ in range(20)]
        await asyncio.sleep(0.05)
        sent = time.perf_counter()
        ended = await scheduler.admit("p2").run(tracker.work, "p2", 0.2)
        victim = ended - sent
        for task in flood:
            task.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
        return tracker, victim

    tracker, victim = run(main())
    assert tracker.peak["p1"] == 1 and tracker.total_peak <= 2
    assert victim < 1.0, f"the other player's 0.2 s turn took {victim:.2f} s"


def test_readiness_answers_while_the_turn_pool_is_full(tmp_path, tiny_model_dir):
    # A real server whose every turn worker is busy: /readyz and /healthz still answer
    # at once, and a player over its queue gets 429 with Retry-After.
    from persona_agents.manager import AgentManager
    from persona_agents.server import ServerSettings, create_app

    from .server_support import thread_server, write_tiny_npcs

    npcs = write_tiny_npcs(tmp_path / "npcs", tiny_model_dir)
    manager = AgentManager(npcs)
    release = threading.Event()
    original = manager.turn

    def slow_turn(*args, **kwargs):
        release.wait(30)
        return original(*args, **kwargs)

    manager.turn = slow_turn  # every turn holds its worker until released
    settings = ServerSettings(warm_up=False, scheduler=SchedulerSettings(workers=2, per_player=1, player_queue=1))
    with thread_server(create_app(manager, settings)) as base:
        with httpx.Client(base_url=base, timeout=60) as client:
            def turn(player):
                return client.post("/v1/npcs/guard/turns", json={"player_id": player, "utterance": "Hello.", "seed": 1})

            threads_out: list[httpx.Response] = []
            threads = [threading.Thread(target=lambda p=p: threads_out.append(turn(p))) for p in ("a", "b", "a")]
            for t in threads:
                t.start()
            time.sleep(0.5)  # two workers busy, a's second turn queued
            started = time.perf_counter()
            assert client.get("/readyz").status_code == 200
            assert client.get("/healthz").status_code == 200
            assert time.perf_counter() - started < 2.0
            busy = turn("a")  # a: one running, one queued: over its share
            assert busy.status_code == 429 and busy.json()["code"] == "player_busy"
            assert busy.headers["Retry-After"].isdigit() and busy.json()["field"] == "player_id"
            release.set()
            for t in threads:
                t.join(60)
            assert sorted(r.status_code for r in threads_out) == [200, 200, 200]
