"""Per-player rate limit: a sliding window over the last `per_seconds` seconds.

Only turns count (`/v1/npcs/{id}/turns`, its stream, `/ask`): they are what costs model
time. The limit is per player (`player_id`, or the seed's `session_id`), so one busy
player cannot starve the others. A limit is written `N/sec`, `N/min` or `N/hour`
(`60/min`), or `off`.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass

_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+?)s?\s*$")


@dataclass(frozen=True)
class RateLimit:
    requests: int
    per_seconds: float

    def __str__(self) -> str:
        unit = {1: "sec", 60: "min", 3600: "hour"}.get(int(self.per_seconds), f"{self.per_seconds:g}s")
        return f"{self.requests}/{unit}"


def parse_rate_limit(spec: str | None) -> RateLimit | None:
    """'60/min' -> RateLimit(60, 60.0); 'off', '0' or None -> no limit."""
    if spec is None or spec.strip().lower() in ("off", "none", "0", ""):
        return None
    match = _SPEC.match(spec.lower())
    if not match or match.group(2) not in _UNITS or int(match.group(1)) < 1:
        raise ValueError(
            f"Invalid rate limit {spec!r}: write N/sec, N/min or N/hour with N >= 1 (e.g. 60/min), or 'off'.")
    return RateLimit(int(match.group(1)), float(_UNITS[match.group(2)]))


class RateLimited(Exception):
    """A player is over the limit; `retry_after` is in whole seconds."""

    def __init__(self, key: str, limit: RateLimit, retry_after: int, field: str = "player_id"):
        self.key, self.limit, self.retry_after, self.field = key, limit, retry_after, field
        super().__init__(f"rate limit {limit} exceeded for {key!r}")


class SlidingWindowLimiter:
    """Remembers the time of each player's requests within the window (thread-safe)."""

    def __init__(self, limit: RateLimit | None, clock=time.monotonic):
        self.limit = limit
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._calls = 0

    def hit(self, key: str, field: str = "player_id") -> None:
        """Count one request for `key` (the request's `field`), or raise RateLimited without counting it."""
        limit = self.limit
        if limit is None:
            return
        now = self._clock()
        horizon = now - limit.per_seconds
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= horizon:
                hits.popleft()
            if len(hits) >= limit.requests:
                retry = max(1, math.ceil(hits[0] + limit.per_seconds - now))
                raise RateLimited(key, limit, retry, field)
            hits.append(now)
            self._calls += 1
            if self._calls % 1024 == 0:  # forget idle players so memory stays bounded
                self._prune(horizon)

    def _prune(self, horizon: float) -> None:
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= horizon]:
            del self._hits[key]
