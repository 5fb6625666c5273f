"""HTTP server throughput and time to first streamed piece, embedded model, loopback.

Starts `persona-agents serve` on the sample NPCs (a temporary SQLite file, no key, no
rate limit) on a free loopback port, waits for /readyz, then in one run:

- c1: `--turns-c1` turns one after another (each a new player, fixed seeds);
- c8: `--turns-c8` turns from 8 concurrent clients (the same seeds, new players);
- ttft: `--stream-turns` streamed turns one after another, timing the first `text` event
  from the moment the request is sent.

Prints `turns_per_s_c1=`, `turns_per_s_c8=`, `scaling_c8=` (c8 / c1) and
`ttft_ms_p50=`. Every turn runs the NPC's whole pipeline (lore retrieval included) and
commits to the store. On the fast engine concurrent turns share decode steps (their
prompt passes, compute-bound, do not); on the transformers engine generation is
serialised per model.

    python bench/server_throughput.py [--quick] [--npc ID] [--turns-c1 8] [--turns-c8 16]
                                      [--stream-turns 8] [--torch-threads N]
                                      [--conversation-turns N] [--prompt-version 1|3]

`--conversation-turns N`: each player says N lines in a row (c1: conversations one after
another; c8: each client plays its own conversation), so later turns carry history.
`--prompt-version 3`: the sample NPCs on the version 3 adapter
(`training/adapters/smollm2-npc-v3`), whose turns reuse the last turn's cache up to its
newest exchange (issue 29); the default, 1, is the sample NPCs as shipped.

It also prints `generate_share_c1=`: the generate stage's share of a c1 turn (the rest,
lore, rules, store and HTTP, is what concurrency can overlap for free).

`--quick` (a smoke run that only shows the bench still works, not a figure to read): 2
turns one after another, 8 from 8 concurrent clients, 2 streamed; 1 torch thread unless
--torch-threads is given, and OMP_WAIT_POLICY=PASSIVE unless set (on a busy shared CPU,
spinning OpenMP threads made the fast engine up to 10x slower).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.server_support import read_sse, start_cli_server  # noqa: E402

LINES = ["Good morning! Can you fix my sword?", "What news from the road?", "Have you seen anything strange lately?",
         "I need a favour.", "Tell me about this place.", "Who runs this town?", "Is it safe at night?",
         "What do you sell?"]


def turn(base: str, npc: str, player: str, i: int) -> tuple[float, int, float]:
    """(seconds, reply tokens decoded, seconds of the generate stage) of one turn."""
    body = {"player_id": player, "utterance": LINES[i % len(LINES)], "seed": 100 + i}
    started = time.perf_counter()
    response = httpx.post(f"{base}/v1/npcs/{npc}/turns", json=body, timeout=300)
    response.raise_for_status()
    meta = response.json()["meta"]
    return time.perf_counter() - started, meta["new_tokens"], meta["timings_ms"]["generate"] / 1000.0


def streamed_ttft(base: str, npc: str, player: str, i: int) -> tuple[float, float]:
    body = {"player_id": player, "utterance": LINES[i % len(LINES)], "seed": 100 + i}
    started = time.perf_counter()
    first = None
    with httpx.stream("POST", f"{base}/v1/npcs/{npc}/turns/stream", json=body, timeout=300) as response:
        response.raise_for_status()
        for kind, _, at in read_sse(response, started):
            if kind == "text" and first is None:
                first = at
            if kind == "error":
                raise RuntimeError(f"stream error: {_}")
            if kind == "final":
                return (first if first is not None else at), at
    raise RuntimeError("no final event")


def npcs_folder(tmp: Path, prompt_version: int) -> Path:
    """The sample NPCs as shipped, or a copy on the version 3 adapter."""
    if prompt_version == 1:
        return REPO / "npcs"
    import shutil

    import yaml

    shutil.copytree(REPO / "npcs", tmp / "game" / "npcs")
    shutil.copytree(REPO / "plugins", tmp / "game" / "plugins")
    defaults = tmp / "game" / "npcs" / "_defaults.yaml"
    data = yaml.safe_load(defaults.read_text(encoding="utf-8"))
    for step in data["pipeline"]["generate"]:
        step.setdefault("options", {})["adapter"] = str(REPO / "training" / "adapters" / "smollm2-npc-v3")
    defaults.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return tmp / "game" / "npcs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npc", default="blacksmith_village_center")
    parser.add_argument("--turns-c1", type=int, default=8)
    parser.add_argument("--turns-c8", type=int, default=16)
    parser.add_argument("--stream-turns", type=int, default=8)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="passed to `serve` (1 on a CPU shared with other busy processes)")
    parser.add_argument("--conversation-turns", type=int, default=1,
                        help="lines each player says in a row (1: every turn a new player)")
    parser.add_argument("--prompt-version", type=int, choices=(1, 3), default=1,
                        help="3: the sample NPCs on the version 3 adapter")
    parser.add_argument("--quick", action="store_true", help="2 c1 turns, 8 c8 turns, 2 streamed, 1 torch thread "
                        "unless --torch-threads is given (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.turns_c1, args.turns_c8, args.stream_turns = 2, 8, 2
        if args.torch_threads is None:
            args.torch_threads = 1  # a smoke run: never stalled by other work on a shared CPU
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the server process
    conv = max(1, args.conversation_turns)
    with tempfile.TemporaryDirectory() as tmp:
        extra = ("--torch-threads", str(args.torch_threads)) if args.torch_threads else ()
        server = start_cli_server(Path(tmp), npcs_folder(Path(tmp), args.prompt_version), api_key=None,
                                  rate_limit="off", ready_timeout=600, extra_args=extra)
        try:
            base, npc = server.base_url, args.npc
            turn(base, npc, "bench-warm", 0)  # first-call costs (stop-string tables, allocator) out of the figures

            started = time.perf_counter()
            c1 = [turn(base, npc, f"bench-c1-{i // conv}", i) for i in range(args.turns_c1)]
            c1_rate = args.turns_c1 / (time.perf_counter() - started)

            started = time.perf_counter()
            # Each client's turns are conversations of `conv` lines, one after another.
            groups = [list(range(start, min(start + conv, args.turns_c8))) for start in range(0, args.turns_c8, conv)]
            with ThreadPoolExecutor(max_workers=8) as pool:
                played = pool.map(lambda g: [turn(base, npc, f"bench-c8-{g[0]}", i) for i in g], groups)
                c8 = [result for group in played for result in group]
            c8_rate = args.turns_c8 / (time.perf_counter() - started)

            ttfts = [streamed_ttft(base, npc, f"bench-stream-{i}", i) for i in range(args.stream_turns)]
        finally:
            server.stop()
    print(f"npc={npc} prompt_version={args.prompt_version} conversation_turns={conv} "
          f"turns_c1={args.turns_c1} turns_c8={args.turns_c8} stream_turns={args.stream_turns} "
          f"torch_threads={args.torch_threads or 'default'} mode={'quick' if args.quick else 'full'}")
    print(f"new_tokens_mean_c1={statistics.mean(t for _, t, _ in c1):.1f} "
          f"new_tokens_mean_c8={statistics.mean(t for _, t, _ in c8):.1f}")
    print(f"latency_ms_p50_c1={statistics.median(s for s, _, _ in c1) * 1000:.0f} "
          f"latency_ms_p50_c8={statistics.median(s for s, _, _ in c8) * 1000:.0f}")
    # Where a c1 turn goes: the generate stage (prompt pass, decision, decode, on the
    # compute thread) against the whole request. Concurrency gains only what concurrent
    # turns share of that stage (decode steps; prompt chunks run one job at a time).
    share = sum(g for _, _, g in c1) / sum(s for s, _, _ in c1)
    print(f"generate_ms_mean_c1={statistics.mean(g for _, _, g in c1) * 1000:.0f} generate_share_c1={share:.2f}")
    print(f"stream_total_ms_p50={statistics.median(total for _, total in ttfts) * 1000:.0f}")
    print(f"turns_per_s_c1={c1_rate:.2f}")
    print(f"turns_per_s_c8={c8_rate:.2f}")
    print(f"scaling_c8={c8_rate / c1_rate:.2f}")
    print(f"ttft_ms_p50={statistics.median(first for first, _ in ttfts) * 1000:.0f}")


if __name__ == "__main__":
    main()
