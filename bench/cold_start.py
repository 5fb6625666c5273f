"""Seconds from process start until a sample NPC is ready to generate its first reply.

Runs on a machine that has run the model once (the embedded checkpoint is converted and
the lore index built; the first run here does that and is not counted). Each run is a
fresh process:

- `manager`: `AgentManager(npcs).warm_up(npc)` in a new Python process, the library
  path a game server embedding persona-agents takes: time from spawning the process to
  the pipeline being warm (model, adapter, heads, fast engine, lore index, embedder);
- `serve`: `persona-agents serve` until `/readyz` answers 200 (every sample NPC warm);
- `run_dialogue`: `persona-agents run-dialogue --say ...` until it has printed the
  reply (so this one includes the first turn itself).

Prints the median of each and `ready_s=<manager median>` (target at most 5).

    python bench/cold_start.py [--quick] [--runs N] [--npc ID]

`--quick` (a smoke run that only shows the bench still works, not a figure to read): one
run of each, without the uncounted first run (so on a machine that never ran the model,
its `manager_s` includes converting the checkpoint and building the lore index), and
OMP_WAIT_POLICY=PASSIVE unless set (on a busy shared CPU, spinning OpenMP threads made
the fast engine up to 10x slower).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

WARM = """
import sys
from persona_agents.manager import AgentManager
AgentManager(sys.argv[1]).warm_up(sys.argv[2])
print("ready", flush=True)
"""


def timed_manager(npc: str) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", WARM, str(REPO / "npcs"), npc], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.wait()
    if line.strip() != "ready":
        raise SystemExit("the warm-up process failed; run it by hand to see why")
    return elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_serve() -> float:
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "persona-agents"), "serve", "--port", str(port),
                             "--npcs-dir", str(REPO / "npcs")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = start + 120
        while time.perf_counter() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                pass
            if proc.poll() is not None:
                raise SystemExit("persona-agents serve exited before it was ready")
            time.sleep(0.05)
        raise SystemExit("persona-agents serve was not ready within 120 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def timed_run_dialogue(npc: str) -> float:
    start = time.perf_counter()
    subprocess.run([str(BIN / "persona-agents"), "run-dialogue", "--npc", npc, "--say", "Hello there.", "--seed", "1",
                    "--npcs-dir", str(REPO / "npcs")], check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--npc", default="mother_abandoned_factory")
    parser.add_argument("--quick", action="store_true", help="1 run of each, no uncounted first run (a smoke run)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quick:
        args.runs = 1
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by every timed process
    else:
        timed_manager(args.npc)  # converts the checkpoint and builds the index if this machine never did
    results = {"manager": [], "serve": [], "run_dialogue": []}
    for _ in range(args.runs):
        results["manager"].append(timed_manager(args.npc))
        results["serve"].append(timed_serve())
        results["run_dialogue"].append(timed_run_dialogue(args.npc))
    print(f"npc={args.npc} runs={args.runs} mode={'quick' if args.quick else 'full'}")
    for name, values in results.items():
        print(f"{name}_s={statistics.median(values):.2f} (runs {' '.join(f'{v:.2f}' for v in values)})")
    print(f"ready_s={statistics.median(results['manager']):.2f}")


if __name__ == "__main__":
    main()
