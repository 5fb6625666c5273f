"""The fast engine's mechanics on tiny random models: the same tokens and hidden states as
transformers, int4/int8 projections, sampling like transformers' processors, batching.

What it does on the real embedded model (greedy text, head outputs, speed) is tested in
test_fastpath_real.py and measured in bench/vs_llamacpp.py and bench/batching.py.
"""

from __future__ import annotations

import threading

import pytest
import torch
import yaml

from persona_agents.fastpath.compute import ComputeThread, compute_thread
from persona_agents.fastpath.decoder import LeanDecoder, Projection, _fused_low_rank, supports
from persona_agents.fastpath.engine import BatchEngine, GenerationJob
from persona_agents.fastpath.sampling import SamplingSettings, TokenChooser

VOCAB = 320


def tiny(kind: str = "llama", seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
        for layer in model.model.layers:  # random biases, so a bias bug shows
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    # Sharper logits than the default init, so greedy choices are not near-ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model.eval()


@pytest.fixture(scope="module")
def compute() -> ComputeThread:
    # The process's own compute thread: a second one would bring a second OpenMP team
    # and slow every later test's generation (see fastpath/compute.py).
    return compute_thread()


def prompts(n: int, length: int = 20, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (length + 3 * i,), generator=g).tolist() for i in range(n)]


def reference_greedy(model, prompt: list[int], new: int, penalty: float = 1.0) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False,
                             repetition_penalty=penalty, eos_token_id=2, pad_token_id=2)
    return out[0, len(prompt):].tolist()


def engine_for(model, compute, **kwargs) -> BatchEngine:
    decoder = compute.call(LeanDecoder, model, **kwargs)
    return BatchEngine(decoder, VOCAB, compute=compute)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_float32_greedy_tokens_match_transformers(kind, compute):
    model = tiny(kind)
    engine = engine_for(model, compute, decode_weights="float32")
    for prompt in prompts(3):
        expected = reference_greedy(model, prompt, 12, penalty=1.15)
        job = engine.generate(GenerationJob(prompt, 12, SamplingSettings(repetition_penalty=1.15),
                                            eos_ids=frozenset({2})))
        assert job.new_ids == expected


def test_prefill_keeps_the_final_norm_state_of_transformers(compute):
    model = tiny()
    decoder = compute.call(LeanDecoder, model)
    prompt = prompts(1, length=30)[0]
    with torch.inference_mode():
        want = model.get_decoder()(torch.tensor([prompt])).last_hidden_state[0, [7, -1]]
        cache = decoder.new_cache(1, 64)
        got = compute.call(decoder.prefill, cache, 0, prompt, [7, -1])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fusing_keeps_the_reference_path_and_memory(compute):
    model = tiny()
    before = reference_greedy(model, prompts(1)[0], 8)
    compute.call(LeanDecoder, model)
    q = model.model.layers[0].self_attn.q_proj.weight
    # q, k and v now share one fused storage, and the reference path still gives the same tokens
    k = model.model.layers[0].self_attn.k_proj.weight
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()
    assert reference_greedy(model, prompts(1)[0], 8) == before


def test_batched_decoding_gives_each_sequence_its_own_tokens(compute):
    model = tiny()
    engine = engine_for(model, compute, decode_weights="float32")
    batch = prompts(5)
    alone = [engine.generate(GenerationJob(p, 10)).new_ids for p in batch]
    jobs = [GenerationJob(p, 10) for p in batch]
    threads = [threading.Thread(target=engine.generate, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [job.new_ids for job in jobs] == alone
    assert engine.max_active_seen >= 2  # they really shared decode steps


def test_a_short_reply_is_not_held_back_by_a_long_one(compute):
    model = tiny()
    engine = engine_for(model, compute, decode_weights="float32")
    finished: list[str] = []
    long_job = GenerationJob(prompts(1)[0], 200, on_end=lambda: finished.append("long"))
    short_job = GenerationJob(prompts(1, seed=2)[0], 3, on_end=lambda: finished.append("short"))
    waiter = threading.Thread(target=engine.generate, args=(long_job,))
    waiter.start()
    while not long_job.new_ids:  # the long reply is decoding
        threading.Event().wait(0.001)
    engine.generate(short_job)
    assert finished == ["short"] and len(short_job.new_ids) == 3
    waiter.join()
    assert finished == ["short", "long"] and len(long_job.new_ids) == 200


def test_a_failing_job_reports_its_error_and_the_engine_goes_on(compute):
    model = tiny()
    engine = engine_for(model, compute)
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate(GenerationJob([], 4))
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(GenerationJob([5, 6], 0))
    assert len(engine.generate(GenerationJob(prompts(1)[0], 4)).new_ids) == 4


def test_the_cache_grows_for_long_prompts_without_losing_running_sequences(compute):
    model = tiny()
    engine = engine_for(model, compute, decode_weights="float32")
    engine._length = 32  # start small so the second prompt forces a bigger cache
    first, second = prompts(1, length=10)[0], prompts(1, length=100, seed=3)[0]
    alone = engine.generate(GenerationJob(first, 20)).new_ids
    engine._cache = None
    job = GenerationJob(first, 20)
    waiter = threading.Thread(target=engine.generate, args=(job,))
    waiter.start()
    while not job.new_ids:
        threading.Event().wait(0.001)
    engine.generate(GenerationJob(second, 5))
    waiter.join()
    assert job.new_ids == alone
    compute.call(lambda: None)  # the round that finished the last job has returned
    assert engine.released == 1 and engine._cache is None  # grown, then given back once idle


def test_streamed_tokens_are_the_reply(compute):
    model = tiny()
    engine = engine_for(model, compute)
    seen: list[int] = []
    job = engine.generate(GenerationJob(prompts(1)[0], 9, on_token=seen.append))
    assert seen == job.new_ids and len(seen) == 9


def test_stop_condition_ends_the_reply(compute):
    model = tiny()
    engine = engine_for(model, compute)
    job = engine.generate(GenerationJob(prompts(1)[0], 30, should_stop=lambda ids: len(ids) >= 4))
    assert len(job.new_ids) == 4


# -- quantized projections ------------------------------------------------------------------

def on_q4_1_grid(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A weight whose groups of 32 are exactly representable by GGUF Q4_1 (d*q + m)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (rows, cols // 32, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # each group spans its full range, as Q4_1 quantizes it
    d = torch.rand(rows, cols // 32, 1, generator=g) * 0.01 + 0.001
    m = -torch.rand(rows, cols // 32, 1, generator=g) * 0.05
    return (q * d + m).reshape(rows, cols)


def test_int4_represents_a_q4_1_grid_exactly_up_to_bfloat16_activations():
    weight = on_q4_1_grid(48, 64)
    x = torch.randn(3, 64)
    exact = torch.nn.functional.linear(x.bfloat16().float(), weight)
    got = Projection(weight, None, "int4")(x)
    # only the bfloat16 rounding of scales and accumulation remains
    assert (got - exact).abs().max() / exact.abs().max() < 1e-2


@pytest.mark.parametrize("kind", ["int8", "int4", "bfloat16"])
def test_quantized_projections_approximate_float32(kind):
    torch.manual_seed(0)
    weight, x = torch.randn(48, 64) * 0.05, torch.randn(4, 64)
    exact = torch.nn.functional.linear(x, weight)
    error = (Projection(weight, None, kind)(x) - exact).abs().max() / exact.abs().max()
    assert error < {"int8": 0.03, "int4": 0.15, "bfloat16": 0.02}[kind]


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_weights_keep_a_lora_update_that_rounding_would_erase(kind):
    """A fine-tune's update far below the quantization step survives as a low-rank term."""
    base = on_q4_1_grid(32, 64)
    module = torch.nn.Linear(64, 32, bias=False)
    a, b = torch.randn(4, 64) * 0.01, torch.randn(32, 4) * 0.01
    module.weight.data = base + 0.5 * b @ a
    low_rank = _fused_low_rank((module,), {module: (a, b, 0.5)})
    x = torch.randn(5, 64)
    update = torch.nn.functional.linear(x, 0.5 * b @ a)
    with_lr = Projection(module.weight.data, None, kind, low_rank)(x) - Projection(base, None, kind)(x)
    without = Projection(module.weight.data, None, kind)(x) - Projection(base, None, kind)(x)
    assert (with_lr - update).abs().max() < 0.2 * update.abs().max()
    assert (with_lr - update).abs().max() < (without - update).abs().max()


def test_int4_decoding_stays_close_to_float32(compute):
    model = tiny()
    exact = compute.call(LeanDecoder, model, decode_weights="float32")
    fast = compute.call(LeanDecoder, tiny(), decode_weights="int4", batch_weights="int8")
    prompt = prompts(1)[0]

    def step(decoder):
        cache = decoder.new_cache(1, 64)
        decoder.prefill(cache, 0, prompt, [-1])
        return decoder.decode(cache, [0], [7], [len(prompt)])

    a, b = compute.call(step, exact), compute.call(step, fast)
    assert torch.nn.functional.cosine_similarity(a, b).item() > 0.99


def test_unsupported_models_say_why():
    model = tiny()
    assert supports(model) is None
    assert "bfloat16" in supports(model.to(torch.bfloat16))
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert "gpt2" in supports(gpt2)
    with pytest.raises(ValueError, match="cannot run this model"):
        LeanDecoder(gpt2)
    with pytest.raises(ValueError, match="decode_weights must be one of"):
        LeanDecoder(tiny(), decode_weights="int3")


# -- sampling -------------------------------------------------------------------------------

def hf_filtered(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k),
                                 TopPLogitsWarper(top_p)])
    return chain(torch.zeros(1, 1, dtype=torch.long), scores[None].clone())[0]


def test_sampling_draws_only_what_transformers_would_allow():
    torch.manual_seed(0)
    settings = SamplingSettings(temperature=0.7, top_p=0.9, top_k=50)
    for trial in range(20):
        scores = torch.randn(500) * 3
        allowed = set(torch.isfinite(hf_filtered(scores, 0.7, 50, 0.9)).nonzero().squeeze(1).tolist())
        chooser = TokenChooser(settings, [], seed=trial, vocab_size=500)
        assert {chooser.choose(scores) for _ in range(30)} <= allowed


def test_sampling_follows_the_filtered_distribution():
    scores = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    settings = SamplingSettings(temperature=1.0, top_p=0.95, top_k=4)
    expected = torch.softmax(hf_filtered(scores, 1.0, 4, 0.95), dim=-1)
    chooser = TokenChooser(settings, [], seed=0, vocab_size=6)
    counts = torch.zeros(6)
    for _ in range(4000):
        counts[chooser._sample(scores)] += 1  # no repetition penalty: same logits each draw
    torch.testing.assert_close(counts / counts.sum(), expected, atol=0.03, rtol=0)


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(1)
    for _ in range(20):
        scores = torch.randn(100)
        seen = torch.randint(0, 100, (15,))
        want = RepetitionPenaltyLogitsProcessor(1.3)(seen[None], scores[None].clone())[0].argmax().item()
        chooser = TokenChooser(SamplingSettings(repetition_penalty=1.3), seen.tolist(), seed=0, vocab_size=100)
        assert chooser.choose(scores) == want


def test_same_seed_same_draws_whatever_else_runs():
    settings = SamplingSettings(temperature=1.0, top_p=0.9)
    scores = torch.randn(200)
    a = TokenChooser(settings, [], seed=42, vocab_size=200)
    draws_a = [a._sample(scores) for _ in range(10)]
    torch.manual_seed(999)  # the global generator is not what it draws from
    torch.rand(10)
    b = TokenChooser(settings, [], seed=42, vocab_size=200)
    assert [b._sample(scores) for _ in range(10)] == draws_a


def test_concurrent_first_turns_share_one_engine_without_deadlock(npc_folder):
    """Several NPCs on one model warming up at once (a server's first requests): one shared
    engine, every turn answered, on the fast engine."""
    from persona_agents.manager import AgentManager

    for i in range(4):
        npc_folder(f"npc{i}")
    manager = AgentManager(npc_folder.folder)
    results: dict[int, dict] = {}

    def first_turn(i: int) -> None:
        results[i] = manager.turn(f"npc{i}", "Hello there.", player_id=f"p{i}", seed=i).to_dict()

    threads = [threading.Thread(target=first_turn, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "warm-ups deadlocked"
    assert sorted(results) == [0, 1, 2, 3]
    assert {r["meta"]["engine"] for r in results.values()} == {"fast"}
    steps = [manager.pipeline(f"npc{i}").steps["generate"][0] for i in range(4)]
    assert len({id(step.loaded.model) for step in steps}) == 1
    # The registry is the process's: count the engines built on this test's model only.
    engines = [k for k in manager.runtime.models._shared if k[0] == "fast-engine" and k[1] == id(steps[0].loaded.model)]
    assert len(engines) == 1


def test_a_model_the_fast_engine_cannot_run_falls_back_or_fails_clearly(npc_folder):
    from persona_agents.errors import PersonaAgentsError
    from persona_agents.manager import AgentManager

    def persona(npc_id: str, engine: str):
        path = npc_folder(npc_id)
        data = yaml.safe_load(path.read_text())
        data["pipeline"]["generate"][0]["options"].update(dtype="bfloat16", engine=engine)
        path.write_text(yaml.safe_dump(data))

    persona("auto_npc", "auto")
    persona("fast_npc", "fast")
    manager = AgentManager(npc_folder.folder)
    turn = manager.turn("auto_npc", "Hello there.", seed=1).to_dict()
    assert turn["meta"]["engine"] == "transformers"
    assert "bfloat16" in turn["meta"]["engine_note"] and "using transformers" in turn["meta"]["engine_note"]
    with pytest.raises(PersonaAgentsError, match="engine 'fast' cannot run model .*bfloat16.*engine: auto"):
        manager.turn("fast_npc", "Hello there.", seed=1)


def test_a_grown_cache_is_given_back_once_the_engine_is_idle(compute):
    # One long prompt must not keep its cache for the life of the process (issue 33).
    model = tiny()
    decoder = compute.call(LeanDecoder, model, decode_weights="float32")
    engine = BatchEngine(decoder, VOCAB, initial_length=32, compute=compute)
    short = engine.generate(GenerationJob(prompts(1, length=10)[0], 4))
    assert short.new_ids and engine._cache is not None and engine._cache.max_len == 32
    assert engine.released == 0
    long = engine.generate(GenerationJob(prompts(1, length=100)[0], 4))
    assert long.new_ids
    compute.call(lambda: None)  # the round that finished the job has returned
    assert engine.released == 1 and engine._cache is None
    # The next short job allocates the usual size again, with the same tokens as before.
    again = engine.generate(GenerationJob(prompts(1, length=10)[0], 4))
    assert again.new_ids == short.new_ids and engine._cache.max_len == 32


def test_a_job_can_decide_after_the_prompt_pass_not_to_decode(compute):
    # Decide, then speak: the callback sees the kept hidden state before any token.
    model = tiny()
    engine = engine_for(model, compute, decode_weights="float32")
    prompt = prompts(1, length=12)[0]
    seen = []
    silent = engine.generate(GenerationJob(prompt, 8, keep_index=5,
                                           after_prefill=lambda kept: seen.append(kept.shape) or False))
    assert silent.new_ids == [] and silent.kept is not None and seen == [silent.kept.shape]
    spoken = engine.generate(GenerationJob(prompt, 8, keep_index=5, after_prefill=lambda kept: True))
    assert spoken.new_ids == engine.generate(GenerationJob(prompt, 8)).new_ids


def test_a_prompt_pass_in_chunks_gives_the_hidden_states_and_cache_of_one_pass(compute):
    model = tiny()
    decoder = compute.call(LeanDecoder, model)
    prompt = prompts(1, length=30)[0]
    whole, chunked = decoder.new_cache(1, 64), decoder.new_cache(1, 64)
    want = compute.call(decoder.prefill, whole, 0, prompt, [7, -1])
    first = compute.call(decoder.prefill, chunked, 0, prompt[:11], [7])
    middle = compute.call(decoder.prefill, chunked, 0, prompt[11:20], [], start=11)
    last = compute.call(decoder.prefill, chunked, 0, prompt[20:], [-1], start=20)
    assert middle.shape[0] == 0
    torch.testing.assert_close(torch.cat([first, last]), want, atol=1e-5, rtol=1e-5)
    for a, b in zip(whole.k + whole.v, chunked.k + chunked.v):
        torch.testing.assert_close(a[:, :, :30], b[:, :, :30], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_chunked_prompt_passes_give_the_tokens_and_kept_state_of_one_pass(chunk, compute):
    model = tiny()
    decoder = compute.call(LeanDecoder, model, decode_weights="float32")
    one_pass = BatchEngine(decoder, VOCAB, compute=compute)
    chunked = BatchEngine(decoder, VOCAB, compute=compute, prefill_chunk=chunk)
    for prompt in prompts(3):
        expected = reference_greedy(model, prompt, 10, penalty=1.15)
        want = one_pass.generate(GenerationJob(prompt, 10, SamplingSettings(repetition_penalty=1.15),
                                               eos_ids=frozenset({2}), keep_index=5))
        got = chunked.generate(GenerationJob(prompt, 10, SamplingSettings(repetition_penalty=1.15),
                                             eos_ids=frozenset({2}), keep_index=5))
        assert got.new_ids == want.new_ids == expected
        torch.testing.assert_close(got.kept, want.kept, atol=1e-5, rtol=1e-5)


def _hold(compute: ComputeThread) -> threading.Event:
    """Keep the compute thread busy until the returned event is set, so that jobs submitted
    meanwhile are all waiting when the engine's next round looks at them."""
    started, release = threading.Event(), threading.Event()
    threading.Thread(target=compute.call, args=(lambda: started.set() or release.wait(10),), daemon=True).start()
    started.wait(10)
    return release


def _submit(engine: BatchEngine, job: GenerationJob) -> threading.Thread:
    thread = threading.Thread(target=engine.generate, args=(job,))
    thread.start()
    while job not in engine._pending and not job.done.is_set():
        threading.Event().wait(0.001)
    return thread


def test_a_short_turn_does_not_wait_for_a_long_prompt_pass(compute):
    # Issue 33: the largest request's prompt pass must not hold up an ordinary turn that
    # arrives meanwhile; it runs in chunks and the shorter prompt goes first.
    model = tiny()
    decoder = compute.call(LeanDecoder, model, decode_weights="float32")
    engine = BatchEngine(decoder, VOCAB, compute=compute, prefill_chunk=8)
    done: list[str] = []
    long_job = GenerationJob(prompts(1, length=200)[0], 4, on_end=lambda: done.append("long"))
    short_job = GenerationJob(prompts(1, length=12, seed=2)[0], 4, on_end=lambda: done.append("short"))
    release = _hold(compute)
    threads = [_submit(engine, long_job), _submit(engine, short_job)]
    release.set()
    for thread in threads:
        thread.join()
    assert done == ["short", "long"]
    assert short_job.new_ids == engine.generate(GenerationJob(short_job.prompt_ids, 4)).new_ids


def test_a_waiting_long_prompt_is_not_starved_by_a_stream_of_short_turns(compute):
    # Aging: every second a job waits without work counts as `aging_tokens_per_s` tokens.
    decoder = compute.call(LeanDecoder, tiny(), decode_weights="float32")
    engine = BatchEngine(decoder, VOCAB, compute=compute, aging_tokens_per_s=100.0, decode_step_tokens=10)
    now = 1000.0
    long_job = GenerationJob(list(range(3, 803)), 4, last_served=now - 1.0)
    short_job = GenerationJob(list(range(3, 303)), 48, last_served=now)
    assert engine._priority(short_job, now) < engine._priority(long_job, now)  # 300 < 800 - 100
    long_job.last_served = now - 6.0
    assert engine._priority(long_job, now) < engine._priority(short_job, now)  # 800 - 600 < 300
    # A replying job counts the decode steps it may still take.
    short_job.chooser, short_job.new_ids = object(), [5] * 8  # type: ignore[assignment]
    assert engine._priority(short_job, now) == (48 - 8) * 10


def test_replying_sequences_go_on_beside_a_slot_whose_prompt_pass_is_under_way(compute):
    # A decode step must not write into the slot of a job still in its prompt pass: the
    # long prompt takes slot 0, the short one slot 1 and replies while slot 0 is filled.
    model = tiny()
    decoder = compute.call(LeanDecoder, model, decode_weights="float32")
    engine = BatchEngine(decoder, VOCAB, compute=compute, prefill_chunk=4)
    batch = [prompts(1, length=200)[0], prompts(1, length=12, seed=2)[0]]
    alone = [engine.generate(GenerationJob(p, 12)).new_ids for p in batch]
    jobs = [GenerationJob(p, 12) for p in batch]
    steps: list[list[int]] = []
    decode = decoder.decode
    decoder.decode = lambda cache, slots, *rest: steps.append(list(slots)) or decode(cache, slots, *rest)
    try:
        release = _hold(compute)
        threads = [_submit(engine, job) for job in jobs]
        release.set()
        for thread in threads:
            thread.join()
    finally:
        del decoder.decode
    assert [job.new_ids for job in jobs] == alone
    assert [1] in steps  # slot 1 replied alone while slot 0's prompt pass went on


def test_a_shared_prompt_prefix_is_computed_once_and_changes_nothing(compute):
    # Sectioned version 2 opens with what is the same on every turn of an NPC: the engine
    # keeps that prefix's cache and the next turn's prompt pass starts after it.
    model = tiny()
    decoder = compute.call(LeanDecoder, model, decode_weights="float32")
    plain = BatchEngine(decoder, VOCAB, compute=compute)
    cached = BatchEngine(decoder, VOCAB, compute=compute, prefill_chunk=8)
    prefix = prompts(1, length=21, seed=5)[0]
    for n, tail in enumerate(prompts(3, length=6, seed=6)):
        prompt = prefix + tail
        want = plain.generate(GenerationJob(prompt, 10, keep_index=len(prompt) - 2))
        got = cached.generate(GenerationJob(prompt, 10, keep_index=len(prompt) - 2, prefix_len=len(prefix)))
        assert got.new_ids == want.new_ids == reference_greedy(model, prompt, 10)
        torch.testing.assert_close(got.kept, want.kept, atol=1e-5, rtol=1e-5)
        assert (cached.prefix_misses, cached.prefix_hits) == (1, n)
    # A kept position inside the prefix needs the whole pass: the cache is not used.
    cached.generate(GenerationJob(prefix + [7, 8, 9], 4, keep_index=3, prefix_len=len(prefix)))
    assert cached.prefix_hits == 2


def test_the_prefix_cache_keeps_at_most_its_token_budget(compute):
    decoder = compute.call(LeanDecoder, tiny(), decode_weights="float32")
    engine = BatchEngine(decoder, VOCAB, compute=compute, prefix_cache_tokens=45)
    first, second = prompts(1, length=20, seed=7)[0], prompts(1, length=20, seed=8)[0]
    for prefix in (first, second, first):
        engine.generate(GenerationJob(prefix + [5, 6], 2, prefix_len=len(prefix)))
    # 20 + 20 tokens fit; the third job found `first` still there
    assert (engine.prefix_misses, engine.prefix_hits) == (2, 1)
    third = prompts(1, length=20, seed=9)[0]
    engine.generate(GenerationJob(third + [5, 6], 2, prefix_len=len(third)))
    engine.generate(GenerationJob(second + [5, 6], 2, prefix_len=len(second)))  # the least recently used went
    assert (engine.prefix_misses, engine.prefix_hits) == (4, 1)


def test_the_prompt_can_be_continued_after_the_prompt_pass(compute):
    # Decide, then speak (prompt version 2): the decision's tokens follow the prompt on the
    # same cache; the reply is what a pass over prompt + decision would give.
    model = tiny()
    engine = engine_for(model, compute, decode_weights="float32")
    prompt, decision = prompts(1, length=15)[0], [11, 12, 13, 14]
    seen = []
    job = engine.generate(GenerationJob(prompt, 10, keep_index=len(prompt) - 1,
                                        after_prefill=lambda kept: seen.append(kept) or list(decision)))
    assert job.new_ids == reference_greedy(model, prompt + decision, 10)
    assert list(job.prompt_ids) == prompt + decision and len(seen) == 1


def test_int4_weights_on_a_torch_without_its_kernels_say_what_to_do(compute, monkeypatch):
    import persona_agents.fastpath.decoder as decoder_module

    monkeypatch.setattr(decoder_module, "INT4_KERNELS", False)
    with pytest.raises(ValueError, match=r"torch 2\.6.*decode_precision: int8"):
        LeanDecoder(tiny(), decode_weights="int4")
    LeanDecoder(tiny(), decode_weights="int8")  # the other precisions still load


def test_the_next_turn_of_a_conversation_starts_after_the_part_it_shares(compute):
    # Sectioned version 3: persona, then the conversation, which the next turn repeats plus
    # one exchange, then the turn's own parts. The kept prefix of turn N ends with the
    # history's closing tokens, which turn N+1 does not share: it reuses all before them.
    model = tiny()
    decoder = compute.call(LeanDecoder, model, decode_weights="float32")
    plain = BatchEngine(decoder, VOCAB, compute=compute)
    cached = BatchEngine(decoder, VOCAB, compute=compute, prefill_chunk=8)
    static, close = prompts(1, length=30, seed=10)[0], [11, 12]
    exchanges = prompts(4, length=9, seed=11)
    turn_parts = prompts(4, length=7, seed=12)
    history: list[int] = []
    reused = 0
    for n, (exchange, own) in enumerate(zip(exchanges, turn_parts)):
        prefix = static + history + close
        prompt = prefix + own
        want = plain.generate(GenerationJob(prompt, 8, keep_index=len(prompt) - 1))
        got = cached.generate(GenerationJob(prompt, 8, keep_index=len(prompt) - 1, prefix_len=len(prefix)))
        assert got.new_ids == want.new_ids == reference_greedy(model, prompt, 8)
        torch.testing.assert_close(got.kept, want.kept, atol=1e-5, rtol=1e-5)
        if n:  # everything before last turn's closing tokens came from the cache
            reused += len(static) + len(history) - len(exchanges[n - 1])
            assert cached.prefix_reused_tokens == reused
        history += exchange
    assert (cached.prefix_hits, cached.prefix_misses) == (3, 4)
    assert len(cached._prefixes) == 1  # each turn's prefix replaced the one it continued
