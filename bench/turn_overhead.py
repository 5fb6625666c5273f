"""Pipeline overhead: one full NPC turn vs a bare `model.generate` of the same tokens.

Both sides use the same prompt, greedy decoding and the same number of new tokens,
and run alternately so machine noise hits both alike. The last line is
`overhead_ratio=<median pipeline time / median bare time>` (target: at most 1.10).

    python bench/turn_overhead.py [--npc ID] [--rounds N] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
import dataclasses
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
    args = parser.parse_args()

    import torch

    from persona_agents.manager import AgentManager
    from persona_agents.persona import GenerationSettings

    manager = AgentManager(REPO / "npcs")
    loaded = manager.get_persona(args.npc)
    # Greedy decoding so both sides produce the same tokens.
    greedy = GenerationSettings(temperature=0.0, max_new_tokens=args.max_new_tokens,
                                repetition_penalty=loaded.persona.generation.repetition_penalty)
    loaded = dataclasses.replace(loaded, persona=loaded.persona.model_copy(update={"generation": greedy}))
    manager.personas[args.npc] = loaded
    pipeline = manager.pipeline(args.npc)
    pipeline.warm_up()
    generator = pipeline.steps["generate"][0]
    model, tok = generator.loaded.model, generator.loaded.tokenizer

    def pipeline_turn(i: int):
        started = time.perf_counter()
        response = manager.turn(args.npc, args.line, player_id=f"bench-{i}", seed=0)
        return time.perf_counter() - started, response

    _, first = pipeline_turn(-1)  # warm-up, and the token count both sides use
    n_tokens = first.meta["new_tokens"]
    from persona_agents.prompt_format import render_messages
    from persona_agents.turn import NpcState, Turn

    state = NpcState(**first.state.to_dict())
    probe = Turn(npc_id=args.npc, player_id="x", utterance=args.line, persona=loaded.persona, state=state)
    messages = render_messages(probe)
    inputs = tok.apply_chat_template(list(messages), add_generation_prompt=True, return_dict=True, return_tensors="pt")

    def bare_turn():
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                                 repetition_penalty=greedy.repetition_penalty, pad_token_id=tok.pad_token_id)
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
    print(f"npc={args.npc} prompt_tokens={inputs['input_ids'].shape[1]} new_tokens={n_tokens} rounds={args.rounds}")
    print(f"pipeline_s_median={pipe:.3f} bare_generate_s_median={bare:.3f}")
    print(f"overhead_ratio={pipe / bare:.3f}")


if __name__ == "__main__":
    main()
