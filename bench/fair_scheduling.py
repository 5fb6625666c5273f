"""One player flooding the server with turns vs another player's turn (issue 33), embedded model, loopback.

Target: "One player sending 45 concurrent turns delays another player's turn by at most 2x
its time alone; /readyz answers in under a second throughout."

Starts `persona-agents serve` on the sample NPCs (a temporary SQLite file, no key, rate
limit off so only the turn scheduler stands between the flood and the others, default
scheduler settings unless given) on a free loopback port, waits for /readyz, then in one run:

- alone: `--alone` ordinary turns of a victim, one after another (the same line and seed,
  each from a new victim player id, so each has the same prompt and reply): their median
  is the victim's time alone;
- burst: one abusive player fires `--abusive` turns at once (one thread each, released
  together); 0.5 s later the victim plays `--victim` ordinary turns one after another (as
  above); /readyz is polled every 100 ms from before the burst until the last abusive
  answer, and its slowest answer kept;
- sustained (not with --quick): the same, but each of the abusive threads sends again as
  soon as it has an answer (after `Retry-After` when refused), until the victim is done,
  so the flood lasts the victim's whole run.

Prints `victim_alone_s=`, `victim_under_abuse_s=`, `victim_delay_ratio=` (target <= 2.0),
`readyz_max_s=` (target < 1.0) and `abuser_statuses=` (answers by status and problem code,
e.g. `200:5,429/player_busy:40`), then the same `*_sustained` figures. Ratios are measured
side by side in one run; on a CPU shared with other work they are noisy.

    python bench/fair_scheduling.py [--quick] [--npc ID] [--abusive 45] [--victim 3] [--alone 3]
                                    [--no-sustained] [--torch-threads N] [--serve-args "--player-queue 4 ..."]

`--quick` (a smoke run, well under a minute on 2 cores): 12 abusive turns, 1 victim turn
alone and 1 under abuse, no sustained phase, one torch thread unless `--torch-threads`
says otherwise (and OMP_WAIT_POLICY=PASSIVE unless set). On a CPU shared with other busy
processes the server's default thread count (one per core) can stall every turn;
`--torch-threads 1` avoids that.
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from run_info import git_head, loadavg  # noqa: E402

from tests.server_support import start_cli_server  # noqa: E402

VICTIM = {"utterance": "Good morning! Can you fix my sword? The blade snapped on the road.", "seed": 7,
          "quest_stage": "in_progress", "location": "village_square", "items": ["iron_ore", "broken_sword"],
          "game_state": {"weather": "rain"}}
ABUSE_LINES = ["What do you sell?", "Tell me about this place.", "Is it safe at night?", "Who runs this town?",
               "Have you seen anything strange lately?", "I need a favour.", "What news from the road?"]






class ReadyzPoller:
    """GET /readyz every 100 ms in a thread; keeps the slowest answer and any non-200. It shares
    this process with the abusive threads, so its latencies are an upper bound."""

    def __init__(self, base: str):
        self.base = base
        self.latencies: list[float] = []
        self.statuses: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get(f"{self.base}/readyz").status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.latencies.append(time.perf_counter() - started)
                self.statuses[status] += 1
                self._stop.wait(max(0.0, 0.1 - (time.perf_counter() - started)))

    def __enter__(self) -> "ReadyzPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def max_s(self) -> float:
        return max(self.latencies) if self.latencies else float("nan")


def post_turn(base: str, npc: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}/v1/npcs/{npc}/turns", json=body, timeout=900)


def victim_turn(base: str, npc: str, player: str) -> tuple[float, str]:
    started = time.perf_counter()
    response = post_turn(base, npc, {**VICTIM, "player_id": player})
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"victim turn refused: {response.status_code} {response.text[:1000]}")
    meta = response.json()["meta"]
    # Decoded tokens and where the reply came from (`model`, or `authored`: a writer's line, no decoding).
    return seconds, f"{meta['new_tokens']}/{meta.get('reply_source', 'model')}"


def answer_kind(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "200"
    try:
        code = response.json().get("code")
    except ValueError:
        code = None
    return f"{response.status_code}/{code}" if code else str(response.status_code)


class Abuser:
    """`n` threads posting turns for one player; released together by a barrier."""

    def __init__(self, base: str, npc: str, player: str, n: int, sustained: bool):
        self.base, self.npc, self.player, self.n, self.sustained = base, npc, player, n, sustained
        self.answers: collections.Counter = collections.Counter()
        self.refused_s: list[float] = []
        self.turn_s: list[float] = []
        self.retry_after: set[str] = set()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(n + 1)
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        self.released_at = 0.0

    def _run(self, i: int) -> None:
        self._barrier.wait()
        sent = 0
        while True:
            body = {"player_id": self.player, "utterance": ABUSE_LINES[(i + sent) % len(ABUSE_LINES)],
                    "seed": 1000 + i * 100 + sent, "quest_stage": "not_started", "location": "village_square",
                    "items": ["coin_purse"]}
            sent += 1
            started = time.perf_counter()
            try:
                response = post_turn(self.base, self.npc, body)
            except httpx.HTTPError as exc:
                with self._lock:
                    self.answers[type(exc).__name__] += 1
                    self.errors.append(repr(exc))
                return
            seconds = time.perf_counter() - started
            kind = answer_kind(response)
            with self._lock:
                self.answers[kind] += 1
                if response.status_code == 200:
                    self.turn_s.append(seconds)
                else:
                    self.refused_s.append(seconds)
                    if "Retry-After" in response.headers:
                        self.retry_after.add(response.headers["Retry-After"])
                    if response.status_code >= 500:
                        self.errors.append(f"{kind}: {response.text[:300]}")
            if not self.sustained or self.stop.is_set():
                return
            if response.status_code != 200:
                try:
                    wait = float(response.headers.get("Retry-After", "1"))
                except ValueError:
                    wait = 1.0
                if self.stop.wait(wait):
                    return

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._barrier.wait()
        self.released_at = time.perf_counter()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def summary(self) -> str:
        return ",".join(f"{kind}:{count}" for kind, count in sorted(self.answers.items()))


def abuse_phase(base: str, npc: str, n_abusive: int, n_victim: int, sustained: bool, tag: str) -> dict[str, Any]:
    abuser = Abuser(base, npc, f"fs-abuser-{tag}", n_abusive, sustained)
    with ReadyzPoller(base) as poller:
        time.sleep(0.3)  # a few idle readiness answers first
        abuser.start()
        time.sleep(max(0.0, abuser.released_at + 0.5 - time.perf_counter()))
        victim = [victim_turn(base, npc, f"fs-victim-{tag}-{i}") for i in range(n_victim)]
        victim_done = time.perf_counter() - abuser.released_at
        abuser.join()
        flood_s = time.perf_counter() - abuser.released_at
    return {"victim": victim, "abuser": abuser, "poller": poller, "victim_done_s": victim_done, "flood_s": flood_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npc", default="blacksmith_village_center")
    parser.add_argument("--abusive", type=int, default=45, help="concurrent turns of the abusive player")
    parser.add_argument("--victim", type=int, default=3, help="victim turns under abuse (median)")
    parser.add_argument("--alone", type=int, default=3, help="victim turns alone (median)")
    parser.add_argument("--no-sustained", action="store_true", help="skip the sustained-flood phase")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="passed to `serve` (1 on a CPU shared with other busy processes)")
    parser.add_argument("--serve-args", default="",
                        help="more `serve` options, e.g. \"--player-queue 4 --turn-workers 8\" (default: none)")
    parser.add_argument("--quick", action="store_true", help="12 abusive turns, 1 victim turn alone and 1 under "
                        "abuse, no sustained phase, 1 torch thread unless --torch-threads is given")
    args = parser.parse_args()
    if args.quick:
        args.abusive, args.victim, args.alone, args.no_sustained = 12, 1, 1, True
        if args.torch_threads is None:
            args.torch_threads = 1  # a smoke run: never stalled by other work on a shared CPU
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the server process
    began = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        extra = (("--torch-threads", str(args.torch_threads)) if args.torch_threads else ()) + tuple(
            shlex.split(args.serve_args))
        server = start_cli_server(Path(tmp), REPO / "npcs", api_key=None, rate_limit="off", ready_timeout=600,
                                  extra_args=extra)
        base, npc = server.base_url, args.npc
        try:
            victim_turn(base, npc, "fs-warm")  # first-call costs out of the figures
            load_start = loadavg()
            with ReadyzPoller(base) as idle_poller:
                alone = [victim_turn(base, npc, f"fs-alone-{i}") for i in range(args.alone)]
            time.sleep(0.5)
            burst = abuse_phase(base, npc, args.abusive, args.victim, sustained=False, tag="burst")
            sustained = None
            if not args.no_sustained:
                time.sleep(0.5)
                sustained = abuse_phase(base, npc, args.abusive, args.victim, sustained=True, tag="sustained")
            load_end = loadavg()
        finally:
            server.stop()
        log = server.log()

    alone_s = statistics.median(s for s, _ in alone)
    print(f"npc={npc} mode={'quick' if args.quick else 'full'} abusive_turns={args.abusive} "
          f"victim_turns={args.victim} alone_turns={args.alone} torch_threads={args.torch_threads or 'default'} "
          f"serve_args={args.serve_args!r} cpus={os.cpu_count()} commit={git_head()}")
    print(f"loadavg_start={load_start} loadavg_end={load_end} (1/5/15 min; above {os.cpu_count()} the machine "
          f"is shared and the times are noisy)")
    print(f"victim_alone_s={alone_s:.2f} victim_alone_all_s={','.join(f'{s:.2f}' for s, _ in alone)} "
          f"victim_new_tokens_source={','.join(t for _, t in alone)}")
    print(f"readyz_max_s_alone={idle_poller.max_s:.3f}")
    fives = 0
    for name, phase in (("", burst), ("_sustained", sustained)):
        if phase is None:
            continue
        abuser, poller = phase["abuser"], phase["poller"]
        under = statistics.median(s for s, _ in phase["victim"])
        fives += sum(count for kind, count in abuser.answers.items() if kind[:1] == "5")
        readyz_bad = {k: v for k, v in poller.statuses.items() if k != 200}
        print(f"victim_under_abuse{name}_s={under:.2f} "
              f"victim_under_abuse{name}_all_s={','.join(f'{s:.2f}' for s, _ in phase['victim'])} "
              f"victim_under_abuse{name}_new_tokens_source={','.join(t for _, t in phase['victim'])}")
        print(f"victim_delay_ratio{name}={under / alone_s:.2f} (target: <= 2.0)")
        print(f"readyz_max_s{name}={poller.max_s:.3f} (target: < 1.0) readyz_polls{name}={len(poller.latencies)} "
              f"readyz_p50_ms{name}={statistics.median(poller.latencies) * 1000:.0f} "
              f"readyz_not_200{name}={','.join(f'{k}:{v}' for k, v in readyz_bad.items()) or 0}")
        print(f"abuser_statuses{name}={abuser.summary()}")
        print(f"abuser_turn_s{name}={','.join(f'{s:.1f}' for s in sorted(abuser.turn_s))} "
              f"abuser_refused_ms_max{name}={max(abuser.refused_s, default=0) * 1000:.0f} "
              f"abuser_retry_after{name}={','.join(sorted(abuser.retry_after)) or '-'} "
              f"flood_s{name}={phase['flood_s']:.1f} victim_done_after_s{name}={phase['victim_done_s']:.1f}")
        for error in abuser.errors[:5]:
            print(f"abuser error{name}: {error}", file=sys.stderr)
    tracebacks = log.count("Traceback")
    print(f"server_5xx={fives} server_log_tracebacks={tracebacks}")
    print(f"bench_s={time.perf_counter() - began:.0f}")
    if tracebacks or fives:
        print("server log (tail):\n" + log[-4000:], file=sys.stderr)
    return 1 if fives else 0


if __name__ == "__main__":
    sys.exit(main())
