"""What long-term memory costs a turn (issue 30): the same conversation with and without
the `recall_memories` step, side by side, on a sample NPC and the embedded model.

Target: "Memory retrieval adds at most 10% to a turn's time."

Two managers over the sample NPCs share one runtime (the models load once): one with the
NPC's pipeline as shipped (faiss_lore, then recall_memories), one with recall_memories
taken out. The same script of player lines (facts told early, questions about them
later, small talk between) is played by each, turn by turn in alternating order, with the
same seeds; both store memories (condensing is part of every turn), only one recalls.
Turns past the history window (where there are memories to rank) are compared.

Prints `memory_turn_ratio=` (median turn with recall / without; target at most 1.10),
`recall_ms_median=` (the retrieve stage with recall minus without), how many memories
the NPC held at the end and how many turns recalled one.

    python bench/memory_recall.py [--quick] [--npc ID] [--turns N]

`--quick`: 8 turns (a smoke run; its ratio means little).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from run_info import git_head, loadavg  # noqa: E402

SCRIPT = [
    "Good morning.",
    "My name is Aldric, and I come from Riverford on the coast.",
    "I promised my sister I would bring our father's sword home.",
    "I lost my horse on the road near the mill.",
    "The weather is turning cold.",
    "Do you sell nails?",
    "Have you seen wolves near the village?",
    "Where did I say I come from?",
    "What did I promise my sister?",
    "Who taught you your trade?",
    "I saw a cloaked man at the old mill last night.",
    "Is the mayor a fair man?",
    "Do you remember my horse?",
    "The tavern ale here is thin.",
    "What is my name?",
    "Your hammer looks old.",
    "Did I tell you about the cloaked man?",
    "How long have you lived here?",
    "Remind me, what did I lose on the road?",
    "Farewell, smith.",
]
WINDOW = 4  # the sample NPCs' history_turns and recall_memories.skip_recent_turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npc", default="blacksmith_village_center")
    parser.add_argument("--turns", type=int, default=len(SCRIPT))
    parser.add_argument("--quick", action="store_true", help="8 turns (a smoke run)")
    args = parser.parse_args()
    turns = min(8 if args.quick else args.turns, len(SCRIPT))

    import torch

    from persona_agents.manager import AgentManager
    from persona_agents.runtime import Runtime

    torch.manual_seed(0)
    npcs = REPO / "npcs"
    runtime = Runtime(npcs_dir=npcs)
    with_recall = AgentManager(npcs, runtime=runtime)
    without = AgentManager(npcs, runtime=runtime)
    steps = without.pipeline(args.npc).steps["retrieve"]
    if not any(step.name == "recall_memories" for step in with_recall.pipeline(args.npc).steps["retrieve"]):
        raise SystemExit(f"{args.npc}'s pipeline has no recall_memories step: nothing to compare")
    without.pipeline(args.npc).steps["retrieve"] = [step for step in steps if step.name != "recall_memories"]
    with_recall.warm_up(args.npc)
    without.warm_up(args.npc)
    load_start = loadavg()

    times: dict[str, list[float]] = {"with": [], "without": []}
    retrieve_ms: dict[str, list[float]] = {"with": [], "without": []}
    recalled_turns = 0
    for number, line in enumerate(SCRIPT[:turns], 1):
        order = (("with", with_recall), ("without", without))
        for name, manager in order if number % 2 else order[::-1]:
            started = time.perf_counter()
            response = manager.turn(args.npc, line, player_id="bench", seed=100 + number)
            elapsed = time.perf_counter() - started
            if number > WINDOW + 1:  # memories exist past the window from here on
                times[name].append(elapsed)
                retrieve_ms[name].append(response.meta["timings_ms"]["retrieve"])
            if name == "with" and response.meta.get("memories"):
                recalled_turns += 1
    held = len(with_recall.memories("bench", args.npc))

    median_with, median_without = statistics.median(times["with"]), statistics.median(times["without"])
    print(f"npc={args.npc} mode={'quick' if args.quick else 'full'} turns={turns} compared_turns={len(times['with'])} "
          f"commit={git_head()} cpus={os.cpu_count()}")
    print(f"loadavg_start={load_start} loadavg_end={loadavg()}")
    print(f"memories_held={held} turns_with_recall={recalled_turns}")
    print(f"turn_s_with_recall={median_with:.3f} turn_s_without={median_without:.3f}")
    recall_ms = statistics.median(retrieve_ms["with"]) - statistics.median(retrieve_ms["without"])
    print(f"recall_ms_median={recall_ms:.1f} (the retrieve stage with recall minus without)")
    print(f"memory_turn_ratio={median_with / median_without:.3f} (target: <= 1.10)")


if __name__ == "__main__":
    main()
