"""Fair scheduling of turns: one player cannot starve the others (issue 33).

Turns used to run in anyio's shared thread pool (40 threads) as they came: 45 turns
from one player held every thread, mostly waiting on that player's turn lock, and a
health check or another player's turn queued behind them for minutes. Now:

- **Per player**, at most `per_player` turns run at once (default 1: a player's turns
  queue behind each other, as the game plays them) and at most `player_queue` more wait;
  past that the turn is refused at once with 429 and `Retry-After`. Waiting happens on
  the event loop (an asyncio semaphore), never in a worker thread.
- **The turn pool** is its own: `workers` threads (default 8, the fast engine's batch),
  apart from the threads that serve health, readiness and state reads, so those answer
  whatever the turns do. Its waiters are served first come, first served.
- **A bounded queue**: at most `max_waiting` admitted turns wait for a worker; past that
  a turn is refused with 503 and `Retry-After`.

Admission (`admit`) is synchronous, so a stream is refused with a problem response
before it starts; the returned ticket's `run` does the waiting and the work.
"""

from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio
import anyio.to_thread


@dataclass(frozen=True)
class SchedulerSettings:
    workers: int = 8
    per_player: int = 1
    player_queue: int = 4
    max_waiting: int = 64
    #: Seconds a refused client is told to wait (Retry-After) when no better estimate exists.
    retry_after: int = 1


class PlayerBusy(Exception):
    """A player already has as many turns running and waiting as allowed (429)."""

    def __init__(self, key: str, field: str, limit: int, retry_after: int):
        self.key, self.field, self.limit, self.retry_after = key, field, limit, retry_after
        super().__init__(f"{field} {key!r} already has {limit} turns running or waiting")


class ServerBusy(Exception):
    """Too many turns wait for a worker (503)."""

    def __init__(self, waiting: int, retry_after: int):
        self.waiting, self.retry_after = waiting, retry_after
        super().__init__(f"{waiting} turns are waiting for a worker")


@dataclass
class _Player:
    semaphore: asyncio.Semaphore
    admitted: int = 0  # running or waiting


@dataclass(eq=False)
class Ticket:
    """One admitted turn; `run` must be awaited exactly once (it releases the admission)."""

    scheduler: "TurnScheduler"
    key: str
    released: bool = field(default=False)

    async def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            player = self.scheduler._players[self.key]
            async with player.semaphore:
                self.scheduler._queued_for_worker += 1
                try:
                    return await anyio.to_thread.run_sync(
                        functools.partial(func, *args, **kwargs), limiter=self.scheduler.limiter,
                        abandon_on_cancel=False,
                    )
                finally:
                    self.scheduler._queued_for_worker -= 1
        finally:
            self.release()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.scheduler._release(self.key)


class TurnScheduler:
    """Admission control and the turn pool; used from the event loop only (no locks needed)."""

    def __init__(self, settings: SchedulerSettings | None = None):
        self.settings = settings or SchedulerSettings()
        self._players: dict[str, _Player] = {}
        self._admitted = 0
        self._queued_for_worker = 0
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        # Created on first use, inside the running event loop.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.settings.workers)
        return self._limiter

    def admit(self, key: str, field: str = "player_id") -> Ticket:
        """A ticket for one turn of player `key`, or PlayerBusy / ServerBusy."""
        s = self.settings
        player = self._players.get(key)
        per_player_cap = s.per_player + s.player_queue
        if player is not None and player.admitted >= per_player_cap:
            raise PlayerBusy(key, field, per_player_cap, s.retry_after)
        waiting = self._admitted - self._running()
        if waiting >= s.max_waiting:
            raise ServerBusy(waiting, self._retry_estimate(waiting))
        if player is None:
            player = self._players[key] = _Player(asyncio.Semaphore(s.per_player))
        player.admitted += 1
        self._admitted += 1
        return Ticket(self, key)

    def _running(self) -> int:
        return int(self._limiter.borrowed_tokens) if self._limiter is not None else 0

    def _retry_estimate(self, waiting: int) -> int:
        # About one round of the pool per `workers` waiting turns; at least the setting.
        return max(self.settings.retry_after, math.ceil(waiting / max(1, self.settings.workers)))

    def _release(self, key: str) -> None:
        self._admitted -= 1
        player = self._players[key]
        player.admitted -= 1
        if player.admitted == 0:  # nothing of this player's left: forget it (bounded table)
            del self._players[key]

    def snapshot(self) -> dict[str, int]:
        """What /readyz and the tests report: players with turns, admitted, running."""
        return {"players": len(self._players), "admitted": self._admitted, "running": self._running()}
