"""What the fast-path benchmarks share: the shipped adapter on the fast engine, exactly as
the `multihead` step builds it, and real sample-NPC prompts."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
ADAPTER = REPO / "training" / "adapters" / "smollm2-npc"


def load_bundle():
    from persona_agents.fastpath.compute import on_compute_thread
    from persona_agents.multihead.artifacts import load_adapter

    return on_compute_thread(load_adapter, ADAPTER)


def fast_engine(bundle, decode: str = "int4", prefill: str = "float32"):
    """A BatchEngine configured as the multihead step's defaults configure it."""
    from persona_agents.fastpath.compute import on_compute_thread
    from persona_agents.fastpath.decoder import LeanDecoder
    from persona_agents.fastpath.engine import BatchEngine

    batch = "float32" if decode == "float32" else "int8"
    decoder = on_compute_thread(LeanDecoder, bundle.model, decode, bundle.low_rank, prefill_weights=prefill,
                                batch_weights=batch)
    return BatchEngine(decoder, vocab_size=decoder.lm_head.shape[0])


def sample_prompts(tokenizer, count: int, history_turns: int = 4) -> list[list[int]]:
    """Rendered sectioned prompts of real validation turns, one per conversation."""
    from persona_agents.multihead.collator import encode_prompt
    from persona_agents.multihead.data import load_examples, load_personas_for_data
    from persona_agents.prompt_format import render_sectioned

    examples = load_examples([REPO / "training/data/validation.jsonl"], personas=load_personas_for_data(REPO / "npcs"))
    step = max(1, len(examples) // count)
    return [encode_prompt(tokenizer, render_sectioned(e.turn, history_turns)) for e in examples[::step][:count]]


def state_index(tokenizer, prompt: list[int]) -> int:
    state = tokenizer.convert_tokens_to_ids("<STATE>")
    return len(prompt) - 1 - prompt[::-1].index(state)
