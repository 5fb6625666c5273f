"""What sectioned prompt version 2 costs a turn next to version 1 (issue 25's target: a
turn's time at most 1.3x today's for the same reply length).

Version 2 (persona_agents/prompt_format.py) shows the persona's events and example lines
and writes the game's decision before the reply, so its prompts are longer (about 450
tokens against 310 for the sample NPCs). It opens with what is the same on every turn of
an NPC, which the fast engine keeps (`prefix_len`, the prefix cache), and the decision is
a continuation of the same cache. In one run, on the shipped adapter's weights and the
fast engine as the `multihead` step configures it, for real validation turns of the
sample NPCs, alternating turn by turn:

- v1: the version 1 prompt, then `--new-tokens` decode steps (forced: no end token);
- v2: the version 2 prompt with its NPC's prefix already cached (a second turn with that
  NPC), the gold decision's tokens run after the prompt pass, then the same decode steps;
- v2_cold: the same without the prefix cache (an NPC's first turn).

The shipped adapter is version 1: its tokenizer splits version 2's five new markers into
plain tokens (a few more tokens than a version 2 adapter's, so v2 is measured a little
slow). The weights are the same size whatever the version, so the times are the times a
version 2 adapter would take.

Prints `name=value` lines: median seconds of each kind, `v2_ratio=` (v2 / v1, target
<= 1.3), `v2_cold_ratio=`, the median prompt tokens of each and the cached prefix's.

    python bench/prompt_v2_cost.py [--quick] [--turns 12] [--new-tokens 24]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastpath_support import REPO, fast_engine, load_bundle  # noqa: E402
from run_info import git_head, loadavg  # noqa: E402


def prompts(tokenizer, count: int) -> list[tuple[list[int], list[int], list[int], int]]:
    """(v1 ids, v2 ids up to <STATE>, decision ids, prefix length) of validation turns,
    spread over the sample NPCs."""
    from persona_agents.game import load_game
    from persona_agents.multihead.collator import encode_prompt, gold_decision
    from persona_agents.multihead.data import load_examples, load_personas_for_data
    from persona_agents.prompt_format import render_sectioned

    npcs = REPO / "npcs"
    game = load_game(npcs)
    descriptions = {name: spec.description for name, spec in game.events.items()}
    examples = load_examples([REPO / "training/data/validation.jsonl"], list(game.events),
                             personas=load_personas_for_data(npcs))
    step = max(1, len(examples) // count)
    rag = "<RAG>"
    out = []
    for example in examples[::step][:count]:
        v1 = encode_prompt(tokenizer, render_sectioned(example.turn, 4, 1))
        text = render_sectioned(example.turn, 4, 2, descriptions)
        v2 = encode_prompt(tokenizer, text)
        prefix = len(encode_prompt(tokenizer, text[: text.index(rag)]))
        decision = tokenizer(gold_decision(example), add_special_tokens=False)["input_ids"]
        out.append((v1, v2, decision, prefix))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--quick", action="store_true", help="3 turns of 8 tokens: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.turns, args.new_tokens = 3, 8
    from persona_agents.fastpath.engine import GenerationJob

    bundle = load_bundle()
    engine = fast_engine(bundle)
    turns = prompts(bundle.tokenizer, args.turns)
    load_start = loadavg()

    def timed(job: GenerationJob) -> float:
        started = time.perf_counter()
        engine.generate(job)
        assert len(job.new_ids) == args.new_tokens
        return time.perf_counter() - started

    times: dict[str, list[float]] = {"v1": [], "v2": [], "v2_cold": []}
    for v1, v2, decision, prefix in [turns[0], *turns]:  # the first turn again: warm-up, not counted
        warm_up = len(times["v1"]) == 0 and not engine.prefix_misses
        engine._prefixes.clear()  # v2_cold: no NPC's prefix cached

        def continued(kept, decision=decision):
            return list(decision)

        cold = timed(GenerationJob(v2, args.new_tokens, keep_index=len(v2) - 1, prefix_len=prefix,
                                   after_prefill=continued))
        plain = timed(GenerationJob(v1, args.new_tokens, keep_index=len(v1) - 1))
        cached = timed(GenerationJob(v2, args.new_tokens, keep_index=len(v2) - 1, prefix_len=prefix,
                                     after_prefill=continued))
        if not warm_up:
            times["v1"].append(plain)
            times["v2"].append(cached)
            times["v2_cold"].append(cold)
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"mode={'quick' if args.quick else 'full'} turns={len(times['v1'])} new_tokens={args.new_tokens} "
          f"cpus={os.cpu_count()} commit={git_head()} loadavg_start={load_start} loadavg_end={loadavg()}")
    print(f"prompt_tokens_v1={statistics.median(len(t[0]) for t in turns):.0f} "
          f"prompt_tokens_v2={statistics.median(len(t[1]) + len(t[2]) for t in turns):.0f} "
          f"prefix_tokens_v2={statistics.median(t[3] for t in turns):.0f} "
          f"prefix_hits={engine.prefix_hits}")
    print(f"v1_s={med['v1']:.3f} v2_s={med['v2']:.3f} v2_cold_s={med['v2_cold']:.3f}")
    print(f"v2_ratio={med['v2'] / med['v1']:.2f} (target: <= 1.3, the NPC's prefix cached)")
    print(f"v2_cold_ratio={med['v2_cold'] / med['v1']:.2f} (an NPC's first turn: no prefix cached)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
