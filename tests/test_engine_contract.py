"""The engine contract (issue 28): every engine available here turns a prompt into reply ids
and hands back the `<STATE>` row of the same prompt pass; decide-then-speak works alike on
each; concurrent turns on the transformers engine run as one batch with the tokens each
would get alone.

Mechanics on a tiny random Llama (milliseconds); what the game reads (heads within 1e-4
across engines) on the real embedded model and the shipped adapter.
"""

from __future__ import annotations

import threading

import pytest
import torch

from persona_agents.engines.contract import EngineRequest, Sampling
from persona_agents.engines.transformers_engine import TransformersEngine, run_alone
from persona_agents.fastpath.compute import on_compute_thread

from .conftest import REPO

GREEDY = Sampling(max_new_tokens=12, temperature=0.0, repetition_penalty=1.15)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_agents.models import LoadedModel

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return LoadedModel(name="tiny", model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir))


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    """Prompts of different lengths (so a batch pads them)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 40000, (7 + 5 * i,), generator=g).tolist() for i in range(n)]


def reference(loaded, ids: list[int], index: int, new_tokens: int):
    """transformers generate, greedy, and the final norm's row at `index` of its prompt pass."""
    captured = []
    handle = loaded.model.get_decoder().register_forward_hook(
        lambda m, a, out: captured.append(out.last_hidden_state[0, index].clone()) if not captured else None)
    try:
        with torch.inference_mode():
            out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                                        repetition_penalty=1.15, eos_token_id=[2], pad_token_id=2)
    finally:
        handle.remove()
    return out[0, len(ids):].tolist(), captured[0]


def request(ids, **kw) -> EngineRequest:
    return EngineRequest(prompt_ids=ids, sampling=kw.pop("sampling", GREEDY), seed=kw.pop("seed", 0), eos_ids=[2],
                         **kw)


def test_one_turn_is_transformers_generate_with_its_state_row(tiny):
    engine = TransformersEngine(tiny)
    for ids in prompts(3):
        index = len(ids) // 2
        want_ids, want_state = reference(tiny, ids, index, GREEDY.max_new_tokens)
        got = on_compute_thread(run_alone, engine, request(ids, state_index=index))
        assert got.new_ids == want_ids
        torch.testing.assert_close(got.state, want_state, atol=1e-5, rtol=0)


def test_a_batch_gives_each_turn_what_it_gets_alone(tiny):
    engine = TransformersEngine(tiny)
    batch = [request(ids, state_index=len(ids) - 1) for ids in prompts(5, seed=1)]
    alone = [on_compute_thread(run_alone, engine, r) for r in batch]
    together = on_compute_thread(engine._run_batch, batch)
    for a, b in zip(alone, together):
        assert b.new_ids == a.new_ids
        torch.testing.assert_close(b.state, a.state, atol=1e-5, rtol=0)


def test_decisions_of_different_lengths_continue_each_prompt_on_its_cache(tiny):
    """after_prefill: False ends a turn with its state row and no reply; ids continue the
    prompt (as if they had been part of it); True decodes at once. Mixed in one batch."""
    engine = TransformersEngine(tiny)
    p = prompts(4, seed=2)
    seen = []
    verdicts = [False, [101, 102, 103, 104, 105], True, [7, 8]]
    batch = [request(ids, state_index=len(ids) - 1,
                     after_prefill=lambda state, v=v: seen.append(state.shape) or v) for ids, v in zip(p, verdicts)]
    results = on_compute_thread(engine._run_batch, batch)
    assert len(seen) == 4 and all(shape == (tiny.model.config.hidden_size,) for shape in seen)
    assert results[0].new_ids == [] and results[0].state is not None
    for ids, verdict, got in zip(p[1:], verdicts[1:], results[1:]):
        extra = verdict if isinstance(verdict, list) else []
        want_ids, _ = reference(tiny, ids + extra, 0, GREEDY.max_new_tokens)
        assert got.new_ids == want_ids


def test_one_turns_failing_decision_or_stream_ends_that_turn_only(tiny):
    engine = TransformersEngine(tiny)
    p = prompts(3, seed=6)
    alone = on_compute_thread(run_alone, engine, request(p[2])).new_ids

    def refuse(state):
        raise RuntimeError("the game's rules failed")

    def broken_stream(ids):
        raise ConnectionError("the player left")

    batch = [request(p[0], after_prefill=refuse), request(p[1], on_ids=broken_stream), request(p[2])]
    results = on_compute_thread(engine._run_batch, batch)
    assert isinstance(results[0], RuntimeError) and isinstance(results[1], ConnectionError)
    assert results[2].new_ids == alone


def test_concurrent_turns_are_batched_not_serialised(tiny):
    engine = TransformersEngine(tiny)
    p = prompts(6, seed=3)
    want = [on_compute_thread(run_alone, engine, request(ids)).new_ids for ids in p]
    got: dict[int, list[int]] = {}
    gate = threading.Barrier(len(p))

    def player(i):
        gate.wait()
        got[i] = engine.run(request(p[i])).new_ids

    # Hold the compute thread while the players arrive, so they queue and share a batch.
    release = threading.Event()
    holder = threading.Thread(target=on_compute_thread, args=(release.wait,))
    holder.start()
    threads = [threading.Thread(target=player, args=(i,)) for i in range(len(p))]
    for t in threads:
        t.start()
    import time

    time.sleep(0.3)
    release.set()
    for t in [holder, *threads]:
        t.join(60)
    assert [got[i] for i in range(len(p))] == want
    assert engine.largest_batch > 1


def test_a_sampled_reply_depends_on_its_seed_not_on_its_batch(tiny):
    engine = TransformersEngine(tiny)
    sampled = Sampling(max_new_tokens=10, temperature=0.9, top_p=0.95, repetition_penalty=1.1)
    p = prompts(3, seed=4)
    alone = on_compute_thread(run_alone, engine, request(p[0], sampling=sampled, seed=11)).new_ids
    batch = [request(ids, sampling=sampled, seed=s) for ids, s in zip(p, (11, 12, 13))]
    assert on_compute_thread(engine._run_batch, batch)[0].new_ids == alone
    other = on_compute_thread(run_alone, engine, request(p[0], sampling=sampled, seed=99)).new_ids
    assert other != alone


def test_a_reply_ends_at_a_prompt_marker_and_within_its_budget(tiny):
    engine = TransformersEngine(tiny)
    ids = prompts(1, seed=5)[0]
    free = on_compute_thread(run_alone, engine, request(ids)).new_ids
    marker = tiny.tokenizer.decode(free[:3])
    cut = on_compute_thread(run_alone, engine, request(ids, stop_markers=(marker,))).new_ids
    assert len(cut) <= 3 + 1 and marker in tiny.tokenizer.decode(cut)
    short = on_compute_thread(run_alone, engine, request(ids, sampling=Sampling(max_new_tokens=2))).new_ids
    assert len(short) == 2


@pytest.mark.model
def test_fast_and_transformers_engines_agree_through_the_contract_on_the_shipped_adapter():
    """The same request through both engines of the shipped adapter: float32 decoding
    gives the same greedy tokens, and the heads read the same vector (within 1e-4)."""
    from persona_agents.engines.fast import FastEngine
    from persona_agents.fastpath.decoder import LeanDecoder
    from persona_agents.fastpath.engine import BatchEngine
    from persona_agents.models import LoadedModel
    from persona_agents.multihead.artifacts import load_adapter
    from persona_agents.multihead.collator import encode_prompt
    from persona_agents.multihead.data import load_examples, load_personas_for_data
    from persona_agents.prompt_format import render_sectioned

    from .conftest import NPCS_DIR

    bundle = on_compute_thread(load_adapter, REPO / "training/adapters/smollm2-npc")
    decoder = on_compute_thread(LeanDecoder, bundle.model, "float32", bundle.low_rank, batch_weights="float32")
    engines = {"fast": FastEngine(BatchEngine(decoder, decoder.lm_head.shape[0]), bundle.tokenizer, "float32"),
               "transformers": TransformersEngine(LoadedModel("adapter", bundle.model, bundle.tokenizer))}
    examples = load_examples([REPO / "training/data/validation.jsonl"], personas=load_personas_for_data(NPCS_DIR))
    state_id = bundle.tokenizer.convert_tokens_to_ids("<STATE>")
    sampling = Sampling(max_new_tokens=16, repetition_penalty=1.15)
    requests = []
    for example in examples[::131][:3]:
        ids = encode_prompt(bundle.tokenizer, render_sectioned(example.turn, 4))
        index = len(ids) - 1 - ids[::-1].index(state_id)
        requests.append(request(ids, state_index=index, sampling=sampling))
    # The transformers engine's turns as one batch (left-padded prompts of different lengths).
    batched = on_compute_thread(engines["transformers"]._run_batch, requests)
    for one, in_batch in zip(requests, batched):
        got = {name: engine.run(one) for name, engine in engines.items()}
        assert in_batch.new_ids == got["transformers"].new_ids
        torch.testing.assert_close(in_batch.state, got["transformers"].state, atol=1e-4, rtol=0)
        assert got["fast"].new_ids == got["transformers"].new_ids
        heads = {name: on_compute_thread(bundle.heads, r.state[None]) for name, r in got.items()}
        torch.testing.assert_close(heads["fast"].flag_probs, heads["transformers"].flag_probs, atol=1e-4, rtol=0)
        torch.testing.assert_close(heads["fast"].deltas, heads["transformers"].deltas, atol=1e-4, rtol=0)
