"""Pipeline overhead: one full NPC turn vs a bare `model.generate` of the same tokens.

Both sides use the same prompt (the exact input ids the pipeline's generate step
encodes), greedy decoding and the same number of new tokens, and run alternately so
machine noise hits both alike. The last line is
`overhead_ratio=<median pipeline time / median bare time>` (target: at most 1.10).

    python bench/turn_overhead.py [--quick] [--npc ID] [--rounds N] [--max-new-tokens N] [--engine transformers|fast]

`--engine transformers` (the default): the NPC's generate step runs the transformers
engine (as `engine: transformers` does, on the full transformers model) and the bare
side is `model.generate` on that model. `--engine fast`: the step runs the fast engine
the sample NPCs use, and the bare side is that engine's own `generate` of the same
prompt ids (its base is a weights-only skeleton with no transformers `generate`).
Both engines decide before they speak; here the decision runs as shipped but the reply
is always decoded (where a writer's line fits, a game would skip it), so both sides
write the same tokens.

`--quick` (a smoke run that only shows the bench still works, not a figure to read):
2 rounds of 8 new tokens, and OMP_WAIT_POLICY=PASSIVE unless set (on a busy shared CPU,
spinning OpenMP threads made the fast engine's prompt pass up to 10x slower).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npc", default="blacksmith_village_center")
    parser.add_argument("--line", default="Can you fix my sword? It broke on the road.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--engine", choices=("transformers", "fast"), default="transformers",
                        help="the generate step's engine; the bare side runs the same engine")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 8 new tokens (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.max_new_tokens = 2, 8
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP

    import torch

    from persona_agents.fastpath.compute import on_compute_thread
    from persona_agents.manager import AgentManager
    from persona_agents.persona import GenerationSettings

    manager = AgentManager(REPO / "npcs")
    loaded = manager.get_persona(args.npc)
    # Greedy decoding so both sides produce the same tokens.
    greedy = GenerationSettings(temperature=0.0, max_new_tokens=args.max_new_tokens,
                                repetition_penalty=loaded.persona.generation.repetition_penalty)
    # The steps are built from the validated options in `step_options` (not the persona's specs).
    generate = tuple((name, options.model_copy(update={"engine": args.engine}) if "engine" in type(options).model_fields
                      else options) for name, options in loaded.step_options["generate"])
    loaded = dataclasses.replace(loaded, persona=loaded.persona.model_copy(update={"generation": greedy}),
                                 step_options={**loaded.step_options, "generate": generate})
    manager.personas[args.npc] = loaded
    pipeline = manager.pipeline(args.npc)
    pipeline.warm_up()
    # Decide, then speak: the decision runs as shipped, but the reply is always decoded, so
    # that both sides write the same tokens (a writer's line would otherwise skip them).
    decide = pipeline._decide
    pipeline._decide = lambda provisional, tell: dataclasses.replace(decide(provisional, tell), speak=True)
    generator = pipeline.steps["generate"][0]
    model, tok = generator.loaded.model, generator.loaded.tokenizer
    engine = generator.engine.batch if generator.engine.name == "fast" else None
    if generator.engine.name != args.engine:
        sys.exit(f"{args.npc}'s generate step did not take engine '{args.engine}' "
                 f"({getattr(generator, 'engine_note', None) or 'no note'})")

    # The bare side gets exactly what the step encodes (sectioned or chat prompt alike).
    encoded = []
    encode = generator._encode
    generator._encode = lambda prompt: encoded.append(encode(prompt)) or encoded[-1]

    def pipeline_turn(i: int):
        started = time.perf_counter()
        response = manager.turn(args.npc, args.line, player_id=f"bench-{i}", seed=0)
        return time.perf_counter() - started, response

    _, first = pipeline_turn(-1)  # warm-up, and the prompt and token count both sides use
    n_tokens = first.meta["new_tokens"]
    inputs = encoded[-1]
    if n_tokens == 0:  # decide, then speak: the game's decision came first and a writer's line fit it
        print(f"note: the pipeline decoded no reply token ({first.meta.get('speech', 'no speech')}); the bare side "
              "is the prompt pass and one token. Pass another --line to measure a spoken reply.")
    prompt_ids = inputs["input_ids"][0].tolist()

    def bare_turn():
        if engine is not None:
            from persona_agents.fastpath.engine import GenerationJob
            from persona_agents.fastpath.sampling import SamplingSettings

            # No end-of-turn ids: exactly n_tokens (at least 1: the engine's smallest job,
            # the prompt pass and the token its logits give).
            job = GenerationJob(prompt_ids, max(n_tokens, 1),
                                SamplingSettings(repetition_penalty=greedy.repetition_penalty))
            started = time.perf_counter()
            engine.generate(job)
            return time.perf_counter() - started, len(job.new_ids) if n_tokens else 0
        def generate():
            with torch.inference_mode():
                return model.generate(**inputs, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                                      repetition_penalty=greedy.repetition_penalty, pad_token_id=tok.pad_token_id)

        started = time.perf_counter()
        # On the compute thread, where the step runs generate too (with its torch threads
        # and OpenMP pool): the two sides then differ by the pipeline alone.
        out = on_compute_thread(generate)
        elapsed = time.perf_counter() - started
        return elapsed, out.shape[1] - inputs["input_ids"].shape[1]

    bare_turn()  # warm-up
    pipe_times, bare_times = [], []
    for i in range(args.rounds):
        t, response = pipeline_turn(i)
        pipe_times.append(t)
        assert response.meta["new_tokens"] == n_tokens, "greedy pipeline turns must be identical"
        t, produced = bare_turn()
        bare_times.append(t)
        assert produced == n_tokens
    pipe, bare = statistics.median(pipe_times), statistics.median(bare_times)
    print(f"npc={args.npc} engine={args.engine} mode={'quick' if args.quick else 'full'} "
          f"prompt_tokens={len(prompt_ids)} new_tokens={n_tokens} rounds={args.rounds}")
    print(f"pipeline_s_median={pipe:.3f} bare_generate_s_median={bare:.3f}")
    print(f"overhead_ratio={pipe / bare:.3f}")


if __name__ == "__main__":
    main()
