"""The fast start: a sample NPC warms up and answers without importing transformers, on
exactly the weights, token ids and special tokens the transformers load gives.

- `LeanTokenizer` encodes and decodes real sectioned prompts as `AutoTokenizer` does and
  lists the same special and added tokens;
- `SkeletonCausalLM` holds the checkpoint's parameters by transformers' names, with the
  same rope frequencies;
- `load_adapter(lean=True)` gives the merged weights and LoRA factors of the full load,
  and falls back to the full load when no merged-adapter cache entry exists;
- the end-to-end turn on both engines is compared in test_fastpath_real.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from persona_agents.fastpath.compute import on_compute_thread

from .conftest import NPCS_DIR, REPO

pytestmark = pytest.mark.model

ADAPTER = REPO / "training" / "adapters" / "smollm2-npc"


@pytest.fixture(scope="module")
def prompt_texts():
    from persona_agents.multihead.data import load_examples, load_personas_for_data
    from persona_agents.prompt_format import render_sectioned

    examples = load_examples([REPO / "training/data/validation.jsonl"], personas=load_personas_for_data(NPCS_DIR))
    texts = [render_sectioned(e.turn, 4) for e in examples[::23]]
    # Markers, chat tokens and odd text typed by a player, which must tokenize the same way.
    texts += ["<STATE><|im_start|>user <NPC> héllo  \t\n 한국어 ", "", "   ", "<|endoftext|>x"]
    return texts


@pytest.mark.parametrize("which", ["adapter", "embedded"])
def test_lean_tokenizer_is_the_transformers_tokenizer(which, prompt_texts):
    from transformers import AutoTokenizer

    from persona_agents.fastpath.lean_tokenizer import LeanTokenizer, lean_tokenizer_reason
    from persona_agents.models import embedded_checkpoint

    folder = ADAPTER if which == "adapter" else embedded_checkpoint()
    assert lean_tokenizer_reason(folder) is None
    lean, full = LeanTokenizer(folder), AutoTokenizer.from_pretrained(folder)
    for text in prompt_texts:
        ids = lean(text, return_tensors="pt")["input_ids"]
        assert torch.equal(ids, full(text, return_tensors="pt")["input_ids"]), text[:80]
        assert lean.decode(ids[0]) == full.decode(ids[0], skip_special_tokens=False)
        assert lean.decode(ids[0][5:40].tolist()) == full.decode(ids[0][5:40].tolist())
    assert lean.all_special_tokens == list(full.all_special_tokens)
    assert lean.get_added_vocab() == full.get_added_vocab() and len(lean) == len(full)
    for attribute in ("eos_token_id", "pad_token_id", "unk_token_id", "bos_token_id"):
        assert getattr(lean, attribute) == getattr(full, attribute), attribute
    for token in ("<STATE>", "<|im_end|>", "no-such-token-here"):
        assert lean.convert_tokens_to_ids(token) == full.convert_tokens_to_ids(token)
    # What it does not implement comes from transformers' tokenizer, loaded on first use.
    assert lean.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        full.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_skeleton_holds_the_checkpoint_as_transformers_loads_it():
    from transformers import AutoModelForCausalLM

    from persona_agents.fastpath.decoder import supports
    from persona_agents.fastpath.skeleton import load_skeleton, skeleton_reason
    from persona_agents.models import embedded_checkpoint

    folder = embedded_checkpoint()
    assert skeleton_reason(folder) is None and skeleton_reason(folder, "bfloat16") == "dtype bfloat16"
    skeleton, full = load_skeleton(folder), AutoModelForCausalLM.from_pretrained(folder)
    ours, theirs = dict(skeleton.named_parameters()), dict(full.named_parameters())
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name
    assert skeleton.lm_head.weight is skeleton.model.embed_tokens.weight  # tied, as in the checkpoint
    assert torch.equal(skeleton.model.rotary_emb.inv_freq, full.model.rotary_emb.inv_freq)
    assert skeleton.model.norm.variance_epsilon == full.model.norm.variance_epsilon
    assert skeleton.generation_config.eos_token_id == full.generation_config.eos_token_id
    assert supports(skeleton) is None


def test_skeleton_refuses_what_it_cannot_read(tmp_path):
    import json
    import shutil

    from persona_agents.fastpath.skeleton import skeleton_reason
    from persona_agents.models import embedded_checkpoint

    folder = tmp_path / "m"
    folder.mkdir()
    assert "no config.json" in skeleton_reason(folder)
    config = json.loads((embedded_checkpoint() / "config.json").read_text())
    (folder / "model.safetensors").write_bytes(b"")
    for change, reason in ((dict(model_type="qwen2"), "model type 'qwen2'"),
                           (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1.0}), "rope type 'yarn'"),
                           (dict(attention_bias=True), "biases")):
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        assert reason in skeleton_reason(folder)
    shutil.rmtree(folder)


def test_lean_adapter_load_has_the_full_loads_merged_weights():
    from persona_agents.fastpath.skeleton import SkeletonCausalLM
    from persona_agents.multihead.artifacts import load_adapter

    full = on_compute_thread(load_adapter, ADAPTER)  # writes the merged-adapter cache if missing
    lean = on_compute_thread(load_adapter, ADAPTER, lean=True)
    assert isinstance(lean.model, SkeletonCausalLM) and not isinstance(full.model, SkeletonCausalLM)
    ours, theirs = dict(lean.model.named_parameters()), dict(full.model.named_parameters())
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name
    full_names = {m: n for n, m in full.model.named_modules()}
    lean_names = {m: n for n, m in lean.model.named_modules()}
    want = {full_names[m]: f for m, f in full.low_rank.items()}
    got = {lean_names[m]: f for m, f in lean.low_rank.items()}
    assert set(got) == set(want) and want
    for name, (a, b, scaling) in want.items():
        assert torch.equal(got[name][0], a) and torch.equal(got[name][1], b) and got[name][2] == scaling
    assert lean.tokenizer.convert_tokens_to_ids("<STATE>") == full.tokenizer.convert_tokens_to_ids("<STATE>")
    assert lean.meta == full.meta


def test_lean_load_without_a_merged_cache_entry_merges_through_peft(tmp_path, monkeypatch):
    from persona_agents.multihead import merged_cache
    from persona_agents.multihead.artifacts import load_adapter

    entry = tmp_path / "merged" / "entry.safetensors"
    monkeypatch.setattr(merged_cache, "cache_path", lambda *args: entry)
    bundle = on_compute_thread(load_adapter, ADAPTER, lean=True)
    assert type(bundle.model).__name__ == "LlamaForCausalLM" and bundle.low_rank
    assert entry.is_file()  # the next start finds it


def test_sample_npc_warms_up_and_answers_without_importing_transformers():
    code = (
        "import sys\n"
        "from persona_agents.manager import AgentManager\n"
        f"manager = AgentManager({str(NPCS_DIR)!r})\n"
        "manager.warm_up('mother_abandoned_factory')\n"
        "after_warm_up = sorted(m for m in ('transformers', 'peft', 'sentence_transformers') if m in sys.modules)\n"
        "turn = manager.turn('mother_abandoned_factory', 'I will find your son, I promise.', seed=3).to_dict()\n"
        "after_turn = sorted(m for m in ('transformers', 'peft', 'sentence_transformers') if m in sys.modules)\n"
        "print(after_warm_up, after_turn, turn['meta']['engine'], bool(turn['text']), len(turn['flag_probs']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[] [] fast True 8"
