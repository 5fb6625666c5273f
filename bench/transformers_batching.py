"""Tokens per second with 8 concurrent turns against 1 at a time, on the transformers engine.

The engine a GPU runs (issue 28): concurrent turns queue and run as one batch (one
left-padded prompt pass, then decode steps for all; persona_agents/engines/transformers_engine.py).
Eight real sample-NPC prompts (validation turns rendered as the sectioned prompt with 4
earlier exchanges), the shipped adapter merged into its base, greedy, each turn reading
its `<STATE>` row as the multihead step does. Sequential: one turn at a time. Concurrent:
all eight submitted at once from eight threads, as the HTTP server's request threads do.
The two alternate round by round.

Prints both rates, `transformers_batch8_ratio=<concurrent / sequential>`, the largest
batch the engine formed, and the device. On this project's 2-core CPU a step is bound by
compute, so the ratio says little about a GPU, where a decode step costs about the same
for one sequence or eight: run it there with `--device cuda --dtype bfloat16`.

    python bench/transformers_batching.py [--quick] [--rounds N] [--new-tokens N] [--device D] [--dtype T]

`--quick` (a smoke run that only shows the bench still works, not a figure to read): 1
round, 4 new tokens, prompts trimmed to 48 tokens.
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
from fastpath_support import ADAPTER, sample_prompts, state_index  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--quick", action="store_true", help="1 round, 4 new tokens, 48-token prompts (a smoke run)")
    args = parser.parse_args()
    prompt_tokens = 0
    if args.quick:
        args.rounds, args.new_tokens, prompt_tokens = 1, 4, 48
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP

    from persona_agents.engines.contract import EngineRequest, Sampling
    from persona_agents.engines.transformers_engine import TransformersEngine
    from persona_agents.fastpath.compute import on_compute_thread
    from persona_agents.models import LoadedModel, resolve_device
    from persona_agents.multihead.artifacts import load_adapter

    device = resolve_device(args.device)
    bundle = on_compute_thread(load_adapter, ADAPTER, None, args.dtype)
    if device != "cpu":
        bundle.model.to(device)
    tok = bundle.tokenizer
    prompts = sample_prompts(tok, args.concurrency)
    if prompt_tokens:
        prompts = [p[-prompt_tokens:] for p in prompts]  # the tail keeps <STATE>
    engine = TransformersEngine(LoadedModel("adapter", bundle.model, tok), max_batch=args.concurrency)
    # No end-of-turn token: every turn writes exactly --new-tokens, so both sides do the same work.
    requests = [EngineRequest(prompt_ids=p, sampling=Sampling(max_new_tokens=args.new_tokens,
                                                              repetition_penalty=1.15),
                              seed=0, eos_ids=[], state_index=state_index(tok, p)) for p in prompts]
    total_tokens = args.new_tokens * len(requests)

    def sequential() -> float:
        start = time.perf_counter()
        for r in requests:
            engine.run(r)
        return time.perf_counter() - start

    def concurrent() -> float:
        gate = threading.Barrier(len(requests) + 1)
        threads = [threading.Thread(target=lambda r=r: (gate.wait(), engine.run(r))) for r in requests]
        for t in threads:
            t.start()
        gate.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    engine.run(requests[0])  # warm-up
    times: dict[str, list[float]] = {"sequential": [], "concurrent": []}
    for i in range(args.rounds):
        order = (("sequential", sequential), ("concurrent", concurrent))
        for name, run in order if i % 2 == 0 else reversed(order):
            times[name].append(run())
    rates = {name: total_tokens / statistics.median(values) for name, values in times.items()}
    for name, rate in rates.items():
        print(f"{name:>10}: {rate:.1f} tokens/s ({', '.join(f'{v:.2f}' for v in times[name])} s per round)")
    print(f"device={device} dtype={args.dtype} mode={'quick' if args.quick else 'full'} turns={len(requests)} "
          f"new_tokens={args.new_tokens} rounds={args.rounds} largest_batch={engine.largest_batch}")
    print(f"sequential_tokens_per_s={rates['sequential']:.2f}")
    print(f"concurrent_tokens_per_s={rates['concurrent']:.2f}")
    print(f"transformers_batch8_ratio={rates['concurrent'] / rates['sequential']:.3f}")


if __name__ == "__main__":
    main()
