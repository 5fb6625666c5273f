"""State store throughput: committed turns per second on a SQLite file, model excluded.

Each turn does what the manager does around the model: load the conversation (state,
recent history, flag history), then commit state + history line + flags + turn record
in one transaction. Players are spread over NPCs as in a game. Prints
`turn_commits_per_s=` (target at least 500).

    python bench/state_store.py [--quick] [--turns N] [--players N]

`--quick` (a smoke run that only shows the bench still works, not a figure to read): 200 turns.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from persona_agents.store import StateStore  # noqa: E402
from persona_agents.turn import Exchange, NpcState  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=3000)
    parser.add_argument("--players", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="200 turns (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.turns = 200
    npcs = ["blacksmith_village_center", "guard_city_gate", "merchant_traveling"]
    initial = NpcState(0.3, 0.0, "neutral", "not_started")
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(f"sqlite:///{tmp}/bench.db")
        started = time.perf_counter()
        for i in range(args.turns):
            player, npc = f"p{i % args.players}", npcs[i % len(npcs)]
            convo = store.load(player, npc, initial)
            state = NpcState(min(1.0, convo.state.trust + 0.001), convo.state.relationship, "neutral", "not_started")
            response = {"text": "Aye, I can mend that.", "deltas": {"trust": 0.001, "relationship": 0.0},
                        "flags": [{"name": "give_hint", "payload": {}}] if i % 5 == 0 else [],
                        "flags_rejected": [], "flag_probs": None, "state": state.to_dict(),
                        "meta": {"timings_ms": {"generate": 400.0}}}
            store.commit_turn(player, npc, convo.version, state, convo.turns + 1,
                              Exchange("Can you fix my sword?", response["text"]),
                              [("give_hint", {})] if i % 5 == 0 else [],
                              {"utterance": "Can you fix my sword?"}, response, request_id=f"r{i}")
        elapsed = time.perf_counter() - started
        assert store.count("turn_records") == args.turns
    print(f"turns={args.turns} players={args.players} seconds={elapsed:.2f} mode={'quick' if args.quick else 'full'}")
    print(f"turn_commits_per_s={args.turns / elapsed:.0f}")


if __name__ == "__main__":
    main()
