"""Tokens per second with 8 concurrent turns against 1 at a time, on the fast engine.

Eight real sample-NPC prompts (validation turns rendered as the sectioned prompt with 4
earlier exchanges, as the shipped adapter sees them) each generate 48 tokens on the
engine the `multihead` step uses. Sequential: one turn at a time. Concurrent: all eight
submitted at once from eight threads, as the HTTP server's request threads do; they
share decode steps. The two alternate round by round.

Prints both rates, `batch8_tokens_per_s_ratio=<concurrent / sequential>` (target at
least 3), and where the time goes: the prefill (prompt pass, compute-bound, one prompt
at a time) and the decode steps (one step per token for all active turns).

    python bench/batching.py [--quick] [--rounds N] [--prompt-tokens N] [--concurrency N]

`--prompt-tokens 150` trims each prompt to 150 tokens (the issue's reference prompt).

`--quick` (a smoke run that only shows the bench still works, not a figure to read): 1
round, 8 new tokens, prompts trimmed to 64 tokens (still 8 concurrent turns), and
OMP_WAIT_POLICY=PASSIVE unless set (on a busy shared CPU, spinning OpenMP threads made the
fast engine's prompt pass up to 10x slower).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastpath_support import fast_engine, load_bundle, sample_prompts, state_index  # noqa: E402


class Timed:
    """Wraps the engine's prefill and decode calls to add up their time."""

    def __init__(self, decoder):
        self.prefill = self.decode = 0.0
        self.steps = 0
        for name in ("prefill", "decode"):
            original = getattr(decoder, name)

            def timed(*args, _original=original, _name=name, **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    setattr(self, _name, getattr(self, _name) + time.perf_counter() - start)
                    self.steps += _name == "decode"

            setattr(decoder, name, timed)

    def reset(self):
        self.prefill = self.decode = 0.0
        self.steps = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--prompt-tokens", type=int, default=0,
                        help="trim prompts to this many tokens (0: as rendered)")
    parser.add_argument("--quick", action="store_true", help="1 round, 8 new tokens, 64-token prompts (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.new_tokens, args.prompt_tokens = 1, 8, 64
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP

    from persona_agents.fastpath.engine import GenerationJob
    from persona_agents.fastpath.sampling import SamplingSettings

    bundle = load_bundle()
    tok = bundle.tokenizer
    prompts = sample_prompts(tok, args.concurrency)
    if args.prompt_tokens:
        prompts = [p if len(p) <= args.prompt_tokens else p[: args.prompt_tokens - 24] + p[-24:] for p in prompts]
    engine = fast_engine(bundle)
    timed = Timed(engine.decoder)

    def turn(prompt):
        sampling = SamplingSettings(temperature=0.7, top_p=0.9, repetition_penalty=1.15)
        job = GenerationJob(prompt, args.new_tokens, sampling,
                            seed=7, keep_index=state_index(tok, prompt))  # no eos: every turn writes all its tokens
        engine.generate(job)
        return len(job.new_ids)

    def sequential():
        start = time.perf_counter()
        tokens = sum(turn(p) for p in prompts)
        return tokens / (time.perf_counter() - start)

    def concurrent():
        counts: list[int] = []
        threads = [threading.Thread(target=lambda p=p: counts.append(turn(p))) for p in prompts]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - start)

    turn(prompts[0])  # warm-up
    rates = {"sequential": [], "concurrent": []}
    split = {}
    for _ in range(args.rounds):
        for name, run in (("sequential", sequential), ("concurrent", concurrent)):
            timed.reset()
            rates[name].append(run())
            split[name] = (timed.prefill, timed.decode, timed.steps)
    one, many = statistics.median(rates["sequential"]), statistics.median(rates["concurrent"])
    lengths = [len(p) for p in prompts]
    print(f"turns={len(prompts)} prompt_tokens={min(lengths)}-{max(lengths)} (mean {statistics.mean(lengths):.0f}) "
          f"new_tokens={args.new_tokens} rounds={args.rounds} mode={'quick' if args.quick else 'full'}")
    for name in ("sequential", "concurrent"):
        prefill, decode, steps = split[name]
        print(f"{name}: tokens_per_s={statistics.median(rates[name]):.1f} prefill_s={prefill:.2f} "
              f"decode_s={decode:.2f} decode_steps={steps} ms_per_step={decode / max(steps, 1) * 1e3:.1f}")
    print(f"max_turns_in_one_step={engine.max_active_seen}")
    print(f"batch{args.concurrency}_tokens_per_s_ratio={many / one:.2f}")


if __name__ == "__main__":
    main()
