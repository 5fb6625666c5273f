"""What the state heads cost: full NPC turns with heads, without heads, and the seed's way.

Three variants of the `multihead` generate step run full pipeline turns on the same
model (the shipped adapter, merged), the same prompt and greedy decoding, so every
variant writes the same tokens; they alternate round by round so machine noise hits all
alike:

- heads: the step as shipped (the `<STATE>` hidden state kept from generate's prefill
  by a forward hook, then the heads on that one vector);
- no heads: the same generate call with no hook and no heads;
- seed two-pass: generate, then a second forward over prompt + reply with every hidden
  state returned (what the seed's inference did), then the heads;
- heads without the matcher: the step as shipped with `read_events: heads`, so the event
  matcher (multihead/matcher.py; its own sentence model, all-mpnet-base-v2) reads nothing.

Prints `heads_ratio=<median turn with heads / median turn without heads>` (target at most
1.05) and `seed_two_pass_ratio=<median seed two-pass turn / median turn with heads>`
(above 1: our single run is faster), and `matcher_ratio=<median turn as shipped / median
turn with the heads alone>` (what the matcher's reading of the player's and the NPC's
lines adds to a turn of a sample NPC, whose events with example lines it reads with the heads).

    python bench/heads_overhead.py [--quick] [--npc ID] [--rounds N] [--max-new-tokens N] [--engine fast|transformers]

On the fast engine (the default) the `<STATE>` row comes from its own prefill; the seed
variant runs the second pass through the transformers model (the fast engine's base is a
weights-only skeleton without a forward, so that model is loaded beside it, as the
`engine: transformers` path loads it). Where the fast engine decides before it speaks,
every variant is still made to decode the reply (the decision itself runs as shipped):
skipping the reply when a writer's line fits is not what this bench measures.

`--quick` (a smoke run that only shows the bench still works, not a figure to read):
2 rounds of 8 new tokens.
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
# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other processes,
# spinning made generation up to 10x slower and the timings noise (training/README.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npc", default="mother_abandoned_factory")
    parser.add_argument("--line", default="I will find your son, I promise.")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--engine", choices=("fast", "transformers"), default="fast",
                        help="the generate step's engine (fast: the sample NPCs' default)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 8 new tokens (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.max_new_tokens = 2, 8

    import torch

    from persona_agents.default_plugins.multihead_generator import MultiHeadGenerator
    from persona_agents.default_plugins.transformers_generator import TransformersGenerator
    from persona_agents.fastpath.compute import on_compute_thread
    from persona_agents.manager import AgentManager
    from persona_agents.persona import GenerationSettings

    class NoHeads(MultiHeadGenerator):
        def engine_request(self, turn, prompt_ids, seed, reading):
            # The plain step's request: no <STATE> row kept, so nothing to decide on.
            return TransformersGenerator.engine_request(self, turn, prompt_ids, seed, reading)

        def _finish(self, turn, result, reading):
            return turn

    class SeedTwoPass(MultiHeadGenerator):
        def warm_up(self):
            super().warm_up()
            self.full_model = self.loaded.model
            if self.engine.name == "fast":
                # The fast engine's base is a skeleton with no forward: the second pass runs on
                # the transformers model, loaded (and shared) as `engine: transformers` loads it.
                reference = MultiHeadGenerator(self.options.model_copy(update={"engine": "transformers"}),
                                               self.persona, self.runtime)
                reference.warm_up()
                self.full_model = reference.loaded.model

        def _second_pass(self, ids, index):
            again = self.full_model(ids, output_hidden_states=True)
            return self.bundle.heads(again.hidden_states[-1][:, index])

        def engine_request(self, turn, prompt_ids, seed, reading):
            self.prompt_ids = prompt_ids  # the seed read the heads only after the reply
            return TransformersGenerator.engine_request(self, turn, prompt_ids, seed, reading)

        def _finish(self, turn, result, reading):
            ids = torch.tensor([list(self.prompt_ids) + result.new_ids])
            index = self._state_index(self.prompt_ids)
            reading.heads = on_compute_thread(torch.inference_mode()(self._second_pass), ids, index)
            placeholder = torch.zeros(1)  # the heads were read above, from the second pass
            return super()._finish(turn, dataclasses.replace(result, state=placeholder), reading)

    manager = AgentManager(REPO / "npcs")
    loaded = manager.get_persona(args.npc)
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
    # that every variant writes the same tokens.
    decide = pipeline._decide
    pipeline._decide = lambda provisional, tell: dataclasses.replace(decide(provisional, tell), speak=True)
    step = pipeline.steps["generate"][0]
    if not isinstance(step, MultiHeadGenerator):
        sys.exit(f"{args.npc} does not use the multihead generate step")
    variants = {"heads": step}
    for name, cls in (("no heads", NoHeads), ("seed two-pass", SeedTwoPass)):
        variants[name] = cls(step.options, step.persona, step.runtime)
        variants[name].warm_up()  # shares the loaded adapter through the model registry
    variants["no matcher"] = MultiHeadGenerator(step.options.model_copy(update={"read_events": "heads"}),
                                                step.persona, step.runtime)
    variants["no matcher"].warm_up()
    if step.heads is None or step.heads.matcher is None:
        sys.exit(f"{args.npc}: the shipped step reads no event with the matcher; matcher_ratio would compare nothing")

    def turn(name: str, i: int):
        pipeline.steps["generate"][0] = variants[name]
        started = time.perf_counter()
        response = manager.turn(args.npc, args.line, player_id=f"bench-{name}-{i}", seed=0)
        return time.perf_counter() - started, response

    tokens = {}
    for name in variants:  # warm-up, and each variant's token count
        tokens[name] = turn(name, -1)[1].meta["new_tokens"]
    assert len(set(tokens.values())) == 1, f"greedy variants wrote different token counts: {tokens}"
    times = {name: [] for name in variants}
    order = list(variants)
    with torch.inference_mode():
        for i in range(args.rounds):
            for name in order if i % 2 == 0 else reversed(order):
                elapsed, response = turn(name, i)
                assert response.meta["new_tokens"] == tokens[name]
                times[name].append(elapsed)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:>14}: median {medians[name] * 1000:.0f} ms per turn "
              f"({', '.join(f'{v * 1000:.0f}' for v in values)})")
    print(f"engine={args.engine} mode={'quick' if args.quick else 'full'} "
          f"new_tokens={tokens['heads']} rounds={args.rounds}")
    print(f"heads_ratio={medians['heads'] / medians['no heads']:.3f}")
    print(f"seed_two_pass_ratio={medians['seed two-pass'] / medians['heads']:.3f}")
    print(f"matcher_ratio={medians['heads'] / medians['no matcher']:.3f}")


if __name__ == "__main__":
    main()
