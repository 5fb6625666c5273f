"""The fast engine against the reference path on the real embedded model and shipped adapter.

- float32 decoding gives the reference's greedy tokens, on real sample-NPC prompts;
- the state heads read the same vector on both paths (the prefill is float32 by default),
  so deltas and flag probabilities agree within 1e-4, whatever the decode precision;
- with int4 decoding (the default) the first token, which comes from the prefill, is
  the reference's; later words may differ (bench/vs_llamacpp.py reports how much).
"""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from persona_agents.fastpath.compute import on_compute_thread

from .conftest import NPCS_DIR, REPO

pytestmark = pytest.mark.model

ADAPTER = REPO / "training" / "adapters" / "smollm2-npc"
HEADS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def bundle():
    from persona_agents.multihead.artifacts import load_adapter

    return on_compute_thread(load_adapter, ADAPTER)


@pytest.fixture(scope="module")
def real_prompts(bundle):
    from persona_agents.multihead.collator import encode_prompt
    from persona_agents.multihead.data import load_examples, load_personas_for_data
    from persona_agents.prompt_format import render_sectioned

    examples = load_examples([REPO / "training/data/validation.jsonl"], personas=load_personas_for_data(NPCS_DIR))
    picked = examples[::97][:4]  # spread over NPCs and conversations
    return [encode_prompt(bundle.tokenizer, render_sectioned(e.turn, 4)) for e in picked]


def reference(bundle, prompt, new_tokens):
    """transformers generate, greedy, with the <STATE> row of the final norm captured."""
    state = bundle.tokenizer.convert_tokens_to_ids("<STATE>")
    index = len(prompt) - 1 - prompt[::-1].index(state)
    captured = []
    decoder = bundle.model.get_decoder()
    handle = decoder.register_forward_hook(
        lambda m, a, out: captured.append(out.last_hidden_state[0, index].clone()) if not captured else None)
    try:
        with torch.inference_mode():
            out = bundle.model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False,
                                        repetition_penalty=1.15, eos_token_id=[2], pad_token_id=2)
    finally:
        handle.remove()
    return out[0, len(prompt):].tolist(), bundle.heads(captured[0][None]), index


def fast(bundle, prompt, new_tokens, decode, index):
    from persona_agents.fastpath.decoder import LeanDecoder
    from persona_agents.fastpath.engine import BatchEngine, GenerationJob
    from persona_agents.fastpath.sampling import SamplingSettings

    key = ("engine", decode)
    if key not in bundle.meta.setdefault("_test_engines", {}):
        decoder = on_compute_thread(LeanDecoder, bundle.model, decode, bundle.low_rank,
                                    batch_weights="float32" if decode == "float32" else "int8")
        bundle.meta["_test_engines"][key] = BatchEngine(decoder, decoder.lm_head.shape[0])
    engine = bundle.meta["_test_engines"][key]
    job = engine.generate(GenerationJob(prompt, new_tokens, SamplingSettings(repetition_penalty=1.15),
                                        eos_ids=frozenset({2}), keep_index=index))
    return job.new_ids, on_compute_thread(bundle.heads, job.kept[None])


def assert_heads_close(got, want):
    torch.testing.assert_close(got.deltas, want.deltas, atol=HEADS_TOLERANCE, rtol=0)
    torch.testing.assert_close(got.flag_probs, want.flag_probs, atol=HEADS_TOLERANCE, rtol=0)


def test_float32_fast_path_is_the_reference(bundle, real_prompts):
    for prompt in real_prompts:
        want_ids, want_heads, index = on_compute_thread(reference, bundle, prompt, 24)
        got_ids, got_heads = fast(bundle, prompt, 24, "float32", index)
        assert got_ids == want_ids
        assert_heads_close(got_heads, want_heads)


def test_int4_decoding_keeps_the_heads_and_the_first_token(bundle, real_prompts):
    for prompt in real_prompts:
        want_ids, want_heads, index = on_compute_thread(reference, bundle, prompt, 8)
        got_ids, got_heads = fast(bundle, prompt, 8, "int4", index)
        assert got_ids[0] == want_ids[0]
        assert_heads_close(got_heads, want_heads)
        assert len(got_ids) >= 1


def test_sample_npc_turn_agrees_across_engines(tmp_path):
    """The same turn through the multihead step on each engine: the heads' deltas and
    flag probabilities (which the game acts on) agree; the turn says which engine ran."""
    from persona_agents.manager import AgentManager

    turns = {}
    for engine in ("auto", "transformers"):
        npcs = tmp_path / engine / "npcs"
        shutil.copytree(NPCS_DIR, npcs)
        path = npcs / "mother_abandoned_factory.yaml"
        persona = yaml.safe_load(path.read_text())
        persona["pipeline"]["generate"] = [{"name": "multihead",
                                            "options": {"adapter": str(ADAPTER), "engine": engine}}]
        path.write_text(yaml.safe_dump(persona))
        manager = AgentManager(npcs, plugins_dir=REPO / "plugins")
        turns[engine] = manager.turn("mother_abandoned_factory", "I will find your son, I promise.", seed=5).to_dict()
    fast_turn, ref_turn = turns["auto"], turns["transformers"]
    assert fast_turn["meta"]["engine"] == "fast" and fast_turn["meta"]["decode_precision"] == "int4"
    assert ref_turn["meta"]["engine"] == "transformers"
    for name, p in ref_turn["flag_probs"].items():
        assert abs(fast_turn["flag_probs"][name] - p) <= HEADS_TOLERANCE, name
    for axis, d in ref_turn["deltas"].items():
        assert abs(fast_turn["deltas"][axis] - d) <= HEADS_TOLERANCE, axis
    assert fast_turn["text"] and ref_turn["text"]
