"""Mechanics of the multi-head model on a tiny random Llama: heads, losses, collator,
data validation, calibration, the trainer, and the adapter save/load round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from persona_agents.errors import AdapterError, TrainingConfigError, TrainingDataError
from persona_agents.flags import DEFAULT_FLAGS
from persona_agents.multihead.calibrate import best_threshold, calibrate_flag, calibrate_thresholds
from persona_agents.multihead.collator import EncodedDataset, MultiHeadCollator, encode_example
from persona_agents.multihead.data import RELATIONSHIP_LABELS, load_examples, load_personas_for_data
from persona_agents.multihead.heads import HeadsConfig, StateHeads, StateHeadsOutput, multihead_losses

from .conftest import NPCS_DIR, REPO, cli_env


def record(**overrides) -> dict:
    data = {
        "npc_id": "mother_abandoned_factory",
        "tags": {"location": "abandoned_factory", "quest_stage": "in_progress", "relationship": "close_friend",
                 "trust": 0.8, "npc_mood": "hopeful"},
        "context": [{"role": "player", "text": "Where is Jason's uncle?"},
                    {"role": "npc", "text": "My brother hides under the old mill."}],
        "player_utterance": "I will go there tonight.",
        "response": "Be careful. Tell him his sister sent you.",
        "delta": [0.05, 0.04],
        "flag": ["give_hint"],
        "player_state": {"items": ["lantern"], "actions": ["talked_to_silvia"]},
    }
    data.update(overrides)
    return data


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")
    return path


def tiny_training_config(tiny_model_dir, out: Path, **overrides):
    """A quick full-precision training run of the tiny model into `out`, without lore."""
    from persona_agents.multihead.trainer import MultiHeadTrainingConfig

    settings = dict(output_dir=str(out / "checkpoints"), base_model=str(tiny_model_dir), quantization="none",
                    per_device_train_batch_size=2, npcs_dir=str(NPCS_DIR), retrieve_lore=False, heads_inner_size=16,
                    disable_tqdm=True)
    return MultiHeadTrainingConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def personas():
    return load_personas_for_data(NPCS_DIR)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """A trainable tiny model (full-precision base: bitsandbytes is tested on the real one)."""
    from persona_agents.multihead.modeling import build_trainable_model

    torch.manual_seed(0)
    return build_trainable_model(str(tiny_model_dir), DEFAULT_FLAGS, quantization="none", lora_r=4, heads_inner=16)


def test_heads_return_a_dataclass_with_bounded_deltas():
    heads = StateHeads(HeadsConfig(hidden_size=8, num_flags=3, inner_size=4))
    torch.nn.init.normal_(heads.delta.weight, std=50.0)  # huge weights: tanh must still bound them
    out = heads(torch.randn(5, 8) * 100)
    assert isinstance(out, StateHeadsOutput)
    assert out.deltas.shape == (5, 2) and out.flag_logits.shape == (5, 3)
    assert out.deltas.abs().max() <= 1.0
    assert ((out.flag_probs >= 0) & (out.flag_probs <= 1)).all()


def test_data_records_become_turns_with_labels_mapped(tmp_path, personas):
    path = write_jsonl(tmp_path / "d.jsonl", [record(), record(tags={"relationship": -0.4, "trust": 0.1},
                                                              context=[], flag=[], player_utterance="안녕하세요",
                                                              response="…그래요.")])
    first, korean = load_examples([path], DEFAULT_FLAGS, personas)
    assert first.turn.state.relationship == RELATIONSHIP_LABELS["close_friend"]
    assert first.turn.persona.name == "Silvia" and first.turn.context.items == ("lantern",)
    assert first.turn.history[0].player == "Where is Jason's uncle?" and first.flags == ("give_hint",)
    assert korean.turn.utterance == "안녕하세요" and korean.turn.state.relationship == -0.4
    assert first.source == f"{path}:1"


def test_data_errors_name_file_line_field_and_fix(tmp_path, personas):
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        record(),
        record(flag=["give_itme"]),
        record(delta=[0.5]),
        record(tags={"relationship": "bestie"}),
        "{not json",
        {k: v for k, v in record().items() if k != "response"},
    ])
    with pytest.raises(TrainingDataError) as info:
        load_examples([bad], DEFAULT_FLAGS, personas)
    text = str(info.value)
    assert (f"{bad}:2: flag: unknown flag 'give_itme'. "
            f"Fix: use names of the vocabulary: {', '.join(DEFAULT_FLAGS)}") in text
    assert f"{bad}:3: delta: expected [trust_change, relationship_change]" in text
    assert 'Fix: write "delta": [0.05, 0.0]' in text
    assert f"{bad}:4: tags.relationship: unknown label 'bestie'; labels: enemy" in text
    assert f"{bad}:5: line: invalid JSON" in text
    assert f"{bad}:6: response: missing" in text
    assert len(info.value.problems) == 5


def test_non_utf8_data_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(record(response="café")).replace("é", "\\u00e9").encode() + "\xe9\n".encode("latin-1"))
    with pytest.raises(TrainingDataError, match="not UTF-8. Fix: save the file as UTF-8"):
        load_examples([path])


def test_collator_masks_the_prompt_and_finds_state(tiny, tmp_path, personas):
    tok = tiny.tokenizer
    (example,) = load_examples([write_jsonl(tmp_path / "d.jsonl", [record()])], DEFAULT_FLAGS, personas)
    features = encode_example(example, tok, DEFAULT_FLAGS, max_length=1024, history_turns=4)
    ids, labels = features["input_ids"], features["labels"]
    n_prompt = sum(1 for label in labels if label == -100)
    assert ids[features["state_index"]] == tok.convert_tokens_to_ids("<STATE>")
    assert features["state_index"] < n_prompt and all(label == -100 for label in labels[:n_prompt])
    reply = labels[n_prompt:]
    assert reply[-1] == tok.eos_token_id
    assert tok.decode(reply[:-1]).strip() == example.response
    assert features["flags"] == [1.0 if f == "give_hint" else 0.0 for f in DEFAULT_FLAGS]
    assert features["delta"] == [0.05, 0.04]
    # Too long: history goes first, the prompt keeps <STATE>.
    short = encode_example(example, tok, DEFAULT_FLAGS, max_length=n_prompt + 10, history_turns=4)
    assert "Where is Jason's uncle?" not in tok.decode(short["input_ids"])
    with pytest.raises(TrainingDataError, match="even without history"):
        encode_example(example, tok, DEFAULT_FLAGS, max_length=64, history_turns=4)
    # Scoring keeps such a record whole (no history, the full reply), as inference would see it.
    whole = encode_example(example, tok, DEFAULT_FLAGS, max_length=64, history_turns=4, strict=False)
    assert len(whole["input_ids"]) > 64 and "Where is Jason's uncle?" not in tok.decode(whole["input_ids"])
    assert tok.decode([t for t in whole["labels"] if t != -100][:-1]).strip() == example.response
    assert whole["input_ids"][whole["state_index"]] == tok.convert_tokens_to_ids("<STATE>")

    batch = MultiHeadCollator(tok.pad_token_id)([features, short])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][1].sum() == len(short["input_ids"])
    assert (batch["labels"][1, len(short["input_ids"]):] == -100).all()
    assert batch["flags"].shape == (2, len(DEFAULT_FLAGS)) and batch["delta"].shape == (2, 2)


def test_forward_scores_reply_tokens_only_and_losses_are_finite(tiny, tmp_path, personas):
    examples = load_examples([write_jsonl(tmp_path / "d.jsonl", [record(), record(flag=[], context=[])])],
                             DEFAULT_FLAGS, personas)
    data = EncodedDataset(examples, tiny.tokenizer, DEFAULT_FLAGS, 1024, 4)
    batch = MultiHeadCollator(tiny.tokenizer.pad_token_id)(list(data))
    out = tiny.model(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["state_index"])
    n_reply = sum(sum(1 for label in f["labels"] if label != -100) for f in data)
    assert out.reply_logits.shape == (n_reply, len(tiny.tokenizer)) and out.reply_targets.shape == (n_reply,)
    assert out.heads.deltas.shape == (2, 2) and out.heads.flag_logits.shape == (2, 8)
    losses = multihead_losses(out, batch["delta"], batch["flags"], flag_pos_weight=2.0)
    for value in (losses.lm, losses.delta, losses.flag):
        assert torch.isfinite(value) and value >= 0
    (losses.lm + losses.delta + losses.flag).backward()
    grads = {n for n, p in tiny.model.named_parameters() if p.grad is not None}
    assert any("lora_" in n for n in grads) and any("trainable_tokens" in n for n in grads)
    assert any(n.startswith("heads.") for n in grads)
    assert not any(p.grad is not None for n, p in tiny.model.named_parameters() if not p.requires_grad)
    tiny.model.zero_grad()


def test_threshold_calibration_maximises_f1():
    probs = [0.9, 0.8, 0.7, 0.4, 0.35, 0.1]
    truth = [1, 1, 0, 1, 0, 0]
    threshold, f1 = best_threshold(probs, truth)
    # Firing the top four (0.4 and up) catches all three positives with one false alarm.
    assert f1 == pytest.approx(2 * 3 / (2 * 3 + 1)) and 0.35 < threshold <= 0.4
    assert best_threshold([0.2, 0.3], [0, 0]) == (0.5, 0.0)
    thresholds, scores = calibrate_thresholds([[0.9, 0.1], [0.2, 0.6]], [[1, 0], [0, 1]], ["a", "b"])
    assert 0.2 < thresholds["a"] <= 0.9 and 0.1 < thresholds["b"] <= 0.6 and scores == {"a": 1.0, "b": 1.0}


def test_precision_floor_raises_a_threshold_that_best_f1_puts_among_false_alarms():
    # Best F1 fires down to 0.4 (3 of 3 positives, 1 false alarm: precision 0.75).
    probs = [0.9, 0.8, 0.7, 0.4, 0.35, 0.1]
    truth = [1, 1, 0, 1, 0, 0]
    plain = calibrate_flag(probs, truth)
    assert plain.floor_met is None and plain.precision == pytest.approx(0.75)
    floored = calibrate_flag(probs, truth, min_precision=0.9)
    # Only the top two reach precision 0.9: the threshold sits between 0.8 and 0.7.
    assert floored.floor_met and floored.precision == 1.0 and 0.7 < floored.threshold <= 0.8
    assert floored.f1 == pytest.approx(2 * 2 / (2 * 2 + 1))
    # A floor the data cannot reach keeps the best-F1 threshold and says so.
    unreachable = calibrate_flag([0.9, 0.8], [0, 1], min_precision=0.9)
    assert unreachable.floor_met is False and unreachable.threshold == calibrate_flag([0.9, 0.8], [0, 1]).threshold
    thresholds, _ = calibrate_thresholds([[p, p] for p in probs], [[t, t] for t in truth], ["a", "b"],
                                         min_precision={"b": 0.9})
    assert thresholds["a"] == round(plain.threshold, 6) and thresholds["b"] == round(floored.threshold, 6)


def test_calibrating_after_the_rules_scores_only_what_the_game_keeps():
    # Allowed by the rules: positives at 0.6 and 0.3, negatives at 0.1 and 0.02. Forbidden:
    # negatives at 0.4 and 0.35 (the game drops them) and a positive at 0.8 (a miss at any
    # threshold, since the game would drop it too).
    probs = [0.8, 0.6, 0.4, 0.35, 0.3, 0.1, 0.02]
    truth = [1, 1, 0, 0, 1, 0, 0]
    allowed = [False, True, False, False, True, True, True]
    # Raw, the forbidden negatives make firing down to 0.3 cost two false alarms: the cut
    # stays at 0.6 (F1 2*2 / (2*2 + 1)).
    raw = calibrate_flag(probs, truth)
    assert raw.threshold == pytest.approx(0.5) and raw.f1 == pytest.approx(0.8)
    # After the rules they cannot fire: the cut goes down to 0.3 (2 of 3 positives kept,
    # no false alarm), halfway to the allowed negative at 0.1.
    ruled = calibrate_flag(probs, truth, allowed=allowed)
    assert ruled.threshold == pytest.approx(0.2) and ruled.f1 == pytest.approx(0.8) and ruled.precision == 1.0
    # A floor above the halfway point keeps the cut and lifts the threshold to the floor.
    assert calibrate_flag(probs, truth, allowed=allowed, min_threshold=0.25).threshold == pytest.approx(0.25)
    # A floor above a positive removes that cut: only the 0.6 one is left.
    floored = calibrate_flag(probs, truth, allowed=allowed, min_threshold=0.32)
    assert floored.threshold == pytest.approx(0.45) and floored.f1 == pytest.approx(0.5)
    # No allowed positive reaches the floor: no cut, the floor (or the default if higher).
    assert calibrate_flag(probs, truth, allowed=allowed, min_threshold=0.7).threshold == 0.7
    assert calibrate_flag(probs, truth, allowed=[False] * 7).threshold == 0.5
    thresholds, scores = calibrate_thresholds([[p] for p in probs], [[t] for t in truth], ["a"],
                                              allowed=[[a] for a in allowed], min_threshold=0.25)
    assert thresholds == {"a": 0.25} and scores == {"a": 0.8}


def test_config_rejects_incompatible_options(tmp_path):
    from persona_agents.multihead.trainer import MultiHeadTrainingConfig

    with pytest.raises(TrainingConfigError) as info:
        MultiHeadTrainingConfig(output_dir=str(tmp_path), quantization="int3", remove_unused_columns=True,
                                flags=["a", "a"], delta_loss_weight=-1)
    text = str(info.value)
    for part in ("quantization 'int3' is unknown", "remove_unused_columns=True", "distinct names", "loss weights"):
        assert part in text
    config = MultiHeadTrainingConfig(output_dir=str(tmp_path))
    assert config.quantization == "nf4" and list(config.flags) == list(DEFAULT_FLAGS)


def test_training_saves_a_small_adapter_that_loads_back_identically(tiny_model_dir, tmp_path):
    from persona_agents.multihead.artifacts import load_adapter
    from persona_agents.multihead.training import train_adapter

    records = [record(), record(flag=[], delta=[0.0, 0.0], context=[]),
               record(flag=["give_item", "quest_complete"])] * 2
    train = write_jsonl(tmp_path / "train.jsonl", records)
    val = write_jsonl(tmp_path / "val.jsonl", records[:3])
    out = tmp_path / "adapter"
    config = tiny_training_config(tiny_model_dir, out, max_steps=3, save_steps=2, logging_steps=1)
    meta = train_adapter([train], out, config, validation=val, keep_checkpoints=True)
    assert meta["flags"] == list(DEFAULT_FLAGS) and set(meta["thresholds"]) == set(DEFAULT_FLAGS)
    assert meta["calibrated_on"] == "validation" and meta["metrics"]["n_examples"] == 3
    assert meta["training"]["data"]["files"][0]["sha256"] and meta["prompt_format"] == "sectioned"
    # Whose turns the heads learnt: the multihead step leaves other NPCs to the event matcher.
    assert meta["training"]["data"]["npcs"] == sorted({r["npc_id"] for r in records})
    logged = [h for h in meta["training"]["last_logged"]] if meta["training"]["last_logged"] else []
    assert {"lm_loss", "delta_loss", "flag_loss"} <= set(logged)
    checkpoint = out / "checkpoints" / "checkpoint-2" / "model.safetensors"
    assert checkpoint.is_file() and checkpoint.stat().st_size < 1_000_000  # trainable weights only
    assert (out / "adapter_model.safetensors").stat().st_size < 1_000_000  # no full embedding matrix

    merged = load_adapter(out)
    unmerged = load_adapter(out, merge=False)
    ids = merged.tokenizer("<SYS> hi <STATE>\n<NPC>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = merged.model(ids).logits, unmerged.model(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert merged.thresholds == meta["thresholds"]

    with pytest.raises(AdapterError, match="trained for the flag vocabulary"):
        load_adapter(out, expected_flags=["give_item", "open_trade"])
    other = tmp_path / "other-base"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tiny_model_dir).apply(
        lambda m: torch.nn.init.normal_(m.weight) if isinstance(m, torch.nn.Embedding) else None
    ).save_pretrained(other)
    with pytest.raises(AdapterError, match=r"was trained on base model .* differs: embedding_checksum"):
        load_adapter(out, model_ref=str(other))
    (out / "multihead.json").unlink()
    with pytest.raises(AdapterError, match="not a multi-head adapter: multihead.json is missing"):
        load_adapter(out)


def test_heads_refit_learns_from_fixed_vectors_despite_an_outlier_dimension():
    from persona_agents.multihead.refit import RefitSettings, refit_heads

    torch.manual_seed(1)
    x = torch.randn(256, 16)
    x[:, 0] = x[:, 0] * 1000 + 5000  # a huge, uninformative dimension, as LM hidden states have
    flags = torch.stack([(x[:, 3] > 0).float(), (x[:, 4] > 1).float()], dim=1)
    deltas = torch.stack([0.2 * (x[:, 5] > 0).float(), torch.zeros(256)], dim=1)
    train, val = slice(0, 192), slice(192, 256)
    heads = StateHeads(HeadsConfig(hidden_size=16, num_flags=2, inner_size=32))
    fitted, info = refit_heads(heads, x[train], flags[train], deltas[train],
                               val=(x[val], flags[val], deltas[val]), settings=RefitSettings(epochs=150))
    with torch.no_grad():
        out = fitted(x[val])
    accuracy = ((out.flag_probs > 0.5).float() == flags[val]).float().mean()
    assert accuracy > 0.9 and (out.deltas - deltas[val]).abs().mean() < 0.05
    assert fitted.scale[0] < 0.01 and 1 <= info["best_epoch"] <= info["epochs_run"]


def test_heads_refit_where_allowed_learns_intent_and_leaves_the_gate_to_the_rules():
    from persona_agents.multihead.refit import RefitSettings, refit_heads

    # Feature 3 says "the player asks for the item"; the gate (relationship, say) is not in
    # the vectors. Asked where the gate is open the item is given (1), where it is closed
    # not (0): the same vectors with both labels. Never asked: 0.
    torch.manual_seed(2)
    x = torch.randn(400, 8)
    asked, gate_open = x[:, 3] > 0, torch.rand(400) < 0.5
    x[:, 3] = torch.where(asked, 2.0, -2.0)  # a clear signal, as a trained <STATE> vector gives
    flags = (asked & gate_open).float().unsqueeze(1)
    mask = (gate_open | ~asked).float().unsqueeze(1)  # the rules forbid the item where the gate is closed
    deltas = torch.zeros(400, 2)
    settings = RefitSettings(epochs=80, seed=3)

    def p_asked(fitted):
        with torch.no_grad():
            probs = fitted(x).flag_probs[:, 0]
        return float(probs[asked].mean()), float(probs[~asked].mean())

    heads = StateHeads(HeadsConfig(hidden_size=8, num_flags=1, inner_size=16))
    everywhere, _ = refit_heads(heads, x, flags, deltas, settings=settings)
    where_allowed, _ = refit_heads(heads, x, flags, deltas, settings=settings, mask=mask)
    # Fitted everywhere, an ask is a coin toss; fitted where allowed, an ask means "give".
    assert 0.3 < p_asked(everywhere)[0] < 0.7
    assert p_asked(where_allowed)[0] > 0.9 and p_asked(where_allowed)[1] < 0.1


def test_allowed_mask_drops_only_the_standing_gates_and_keeps_labelled_flags(tmp_path, personas):
    from persona_agents.multihead.refit import MASKED_REFUSALS, allowed_mask
    from persona_agents.rules import REASONS

    assert MASKED_REFUSALS < set(REASONS) and not MASKED_REFUSALS & {"stage", "not_allowed"}

    def brann(stage: str, items: list[str], flag: list[str]) -> dict:
        return record(npc_id="blacksmith_village_center", flag=flag, player_state={"items": items, "actions": []},
                      tags={"location": "village_center", "quest_stage": stage, "relationship": "neutral",
                            "trust": 0.5, "npc_mood": "gruff"})

    # Brann repairs the sword (give_item) at `in_progress` once the player brings iron ore.
    examples = load_examples([write_jsonl(tmp_path / "d.jsonl", [
        brann("in_progress", [], []),               # no ore: an item gate, the rules keep it
        brann("in_progress", [], ["give_item"]),     # labelled although forbidden: it still counts
        brann("not_started", ["iron_ore"], []),      # a stage gate: the head must learn it
        brann("in_progress", ["iron_ore"], []),      # allowed
    ])], DEFAULT_FLAGS, personas)
    mask = allowed_mask(examples, DEFAULT_FLAGS)
    item = DEFAULT_FLAGS.index("give_item")
    assert mask[:, item].tolist() == [0.0, 1.0, 1.0, 1.0]
    # Without ore only the ore-gated flags are masked (give_item and quest_complete).
    gated = [n for n, m in zip(DEFAULT_FLAGS, mask[0].tolist()) if m == 0.0]
    assert gated == ["give_item", "quest_complete"]
    # Silvia never opens trade (`allowed: false`): that is not a gate, the head must learn it.
    silvia = load_examples([write_jsonl(tmp_path / "s.jsonl", [record()])], DEFAULT_FLAGS, personas)
    assert allowed_mask(silvia, DEFAULT_FLAGS)[0, DEFAULT_FLAGS.index("open_trade")] == 1.0
    bare = load_examples([write_jsonl(tmp_path / "b.jsonl", [record()])], DEFAULT_FLAGS, {})
    assert allowed_mask(bare, DEFAULT_FLAGS).min() == 1.0  # no rules: every flag counts


def test_a_deltas_refit_keeps_every_flag_output_and_fits_the_deltas_a_trunk_of_their_own():
    from persona_agents.multihead.refit import RefitSettings, refit_deltas, refit_heads

    torch.manual_seed(2)
    x = torch.randn(256, 16)
    flags = (x[:, 3:5] > 0).float()
    deltas = torch.stack([0.2 * (x[:, 5] > 0).float(), torch.zeros(256)], dim=1)
    heads, _ = refit_heads(StateHeads(HeadsConfig(hidden_size=16, num_flags=2, inner_size=32)), x, flags, deltas,
                           settings=RefitSettings(epochs=40))
    # Another game's NPCs: trust follows another dimension of what the player says.
    own = torch.stack([0.3 * (x[:, 7] > 0).float() - 0.1, 0.1 * (x[:, 8] > 0).float()], dim=1)
    train, val = slice(0, 192), slice(192, 256)
    fitted, info = refit_deltas(heads, x[train], own[train], val=(x[val], own[val]),
                                settings=RefitSettings(epochs=200))
    with torch.no_grad():
        before, after = heads(x[val]), fitted(x[val])
    assert torch.equal(before.flag_logits, after.flag_logits)
    for name in ("trunk.1.weight", "flag.weight", "shift", "scale"):
        assert torch.equal(heads.state_dict()[name], fitted.state_dict()[name])
    assert fitted.config.delta_inner_size == 32 and fitted.config.to_dict()["delta_inner_size"] == 32
    error = (after.deltas - own[val]).abs().mean()
    assert error < 0.6 * (before.deltas - own[val]).abs().mean()
    assert info["validation_delta_loss"] < info["validation_delta_loss_before"] and info["part"] == "deltas"
    # Saved and loaded as any heads: the config rebuilds the deltas' trunk.
    rebuilt = StateHeads(HeadsConfig(**fitted.config.to_dict()))
    rebuilt.load_state_dict(fitted.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x[val]).deltas, after.deltas)


def test_state_vectors_are_read_back_from_the_cache(tiny, tmp_path, personas):
    from persona_agents.multihead.data import load_examples
    from persona_agents.multihead.heads import backbone_and_lm_head
    from persona_agents.multihead.refit import state_vectors
    from persona_agents.multihead.vector_cache import StateVectorCache

    model, tok = tiny.model.lm, tiny.tokenizer
    examples = load_examples([write_jsonl(tmp_path / "d.jsonl", [record(), record(player_utterance="Hello.")])],
                             DEFAULT_FLAGS, personas)
    dataset = EncodedDataset(examples, tok, DEFAULT_FLAGS, max_length=1024, history_turns=4)
    first = state_vectors(model, dataset, tok.eos_token_id, cache=StateVectorCache(tmp_path / "cache" / "m.pt"))
    reread = StateVectorCache(tmp_path / "cache" / "m.pt")
    assert len(reread) == 2
    decoder, _ = backbone_and_lm_head(model)
    original = decoder.forward
    decoder.forward = lambda *a, **k: pytest.fail("a cached vector was computed again")
    try:
        again = state_vectors(model, dataset, tok.eos_token_id, cache=reread)
    finally:
        decoder.forward = original
    assert torch.equal(first, again)


def test_the_vector_cache_is_per_adapter_model_not_per_heads(tmp_path, monkeypatch):
    from persona_agents.multihead.vector_cache import StateVectorCache, adapter_fingerprint

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"lora v1")
    (adapter / "heads.safetensors").write_bytes(b"heads v1")
    meta = {"base": {"name": "embedded:smollm2-135m-instruct", "embedding_checksum": "abc"}}
    first = adapter_fingerprint(adapter, meta)
    (adapter / "heads.safetensors").write_bytes(b"heads v2: a refit")  # a heads refit reuses the vectors
    assert adapter_fingerprint(adapter, meta) == first
    assert adapter_fingerprint(adapter, {"base": {**meta["base"], "embedding_checksum": "other"}}) != first
    (adapter / "adapter_model.safetensors").write_bytes(b"lora v2")  # a retrained adapter does not
    assert adapter_fingerprint(adapter, meta) != first
    cache = StateVectorCache.for_adapter(adapter, meta, tmp_path / "vectors")
    assert cache is not None and cache.path.parent == tmp_path / "vectors"
    monkeypatch.setenv("PERSONA_AGENTS_VECTOR_CACHE", str(tmp_path / "elsewhere"))
    moved = StateVectorCache.for_adapter(adapter, meta)
    assert moved is not None and moved.path.parent == tmp_path / "elsewhere"
    monkeypatch.setenv("PERSONA_AGENTS_VECTOR_CACHE", "off")
    assert StateVectorCache.for_adapter(adapter, meta) is None


def test_training_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path):
    from persona_agents.multihead.training import train_adapter

    train = write_jsonl(tmp_path / "train.jsonl", [record(), record(flag=[], context=[])] * 2)
    out = tmp_path / "adapter"

    def config(steps):
        return tiny_training_config(tiny_model_dir, out, max_steps=steps, save_steps=2, heads_refit_epochs=0)

    with pytest.raises(TrainingConfigError, match="no checkpoint"):
        train_adapter([train], out, config(2), resume=True)
    assert train_adapter([train], out, config(2), keep_checkpoints=True)["training"]["steps"] == 2
    meta = train_adapter([train], out, config(4), resume=True)
    assert meta["training"]["steps"] == 4 and meta["heads_refit"] is None and meta["calibrated_on"] == "train"


def test_recalibrating_only_keeps_the_heads_and_records_the_precision_floors(tiny_model_dir, tmp_path):
    from persona_agents.multihead.training import train_adapter

    records = [record(), record(flag=[], delta=[0.0, 0.0], context=[]), record(flag=["give_item", "give_hint"])] * 2
    train = write_jsonl(tmp_path / "train.jsonl", records)
    val = write_jsonl(tmp_path / "val.jsonl", records[:3])
    out = tmp_path / "adapter"

    first = train_adapter([train], out, tiny_training_config(tiny_model_dir, out, max_steps=1, heads_refit_epochs=5),
                          validation=val)
    heads = (out / "heads.safetensors").read_bytes()
    assert first["heads_refit"]["epochs"] == 5 and first["calibration_min_precision"] == {}
    done = subprocess.run(  # the command a studio runs, as a real subprocess
        [sys.executable, "-m", "persona_agents", "train", "--data", str(train), "--validation", str(val),
         "--out", str(out), "--heads-only", "--heads-refit-epochs", "0", "--min-precision", "give_hint=1.0",
         "--npcs-dir", str(NPCS_DIR)], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"Updated {out} (thresholds recalibrated; LoRA kept)." in done.stdout
    meta = json.loads((out / "multihead.json").read_text())
    assert f"give_hint: threshold {meta['thresholds']['give_hint']:.3f} calibrated under precision >= 1." in done.stdout
    assert (out / "heads.safetensors").read_bytes() == heads  # only the thresholds were redone
    assert meta["heads_refit"] == first["heads_refit"] and "heads_refit_data" not in meta["training"]
    assert meta["calibration_min_precision"] == {"give_hint": 1.0} and meta["calibrated_on"] == "validation"
    # By default the thresholds fit what the game keeps after the personas' rules, none under 0.15.
    assert first["calibration_after_rules"] is True and meta["calibration_after_rules"] is True
    assert meta["calibration_min_threshold"] == 0.15 and min(meta["thresholds"].values()) >= 0.15
    assert "Thresholds calibrated for the F1 after the personas' flag rules, none under 0.15; after the rules" \
        in done.stdout


def test_refitting_the_deltas_keeps_flags_and_thresholds_and_reuses_cached_vectors(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from persona_agents.multihead.training import train_adapter

    records = [record(), record(flag=[], delta=[0.0, 0.0], context=[]), record(flag=["give_item", "give_hint"])] * 2
    train = write_jsonl(tmp_path / "train.jsonl", records)
    own = write_jsonl(tmp_path / "own.jsonl", [record(delta=[0.3, 0.2]), record(flag=[], delta=[-0.2, 0.0])] * 2)
    out = tmp_path / "adapter"
    train_adapter([train], out, tiny_training_config(tiny_model_dir, out, max_steps=1, heads_refit_epochs=5),
                  validation=train)
    before_heads = load_file(str(out / "heads.safetensors"))
    before_meta = json.loads((out / "multihead.json").read_text())
    command = [sys.executable, "-m", "persona_agents", "train", "--data", str(own), "--validation", str(own),
               "--out", str(out), "--heads-refit-part", "deltas", "--heads-refit-epochs", "20",
               "--npcs-dir", str(NPCS_DIR), "--no-retrieve-lore"]
    env = cli_env(PERSONA_AGENTS_VECTOR_CACHE=str(tmp_path / "vectors"))
    refused = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "give --heads-only" in refused.stderr
    done = subprocess.run(command + ["--heads-only"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deltas refitted on a trunk of their own; LoRA, flag outputs and thresholds kept" in done.stdout
    after_heads, meta = load_file(str(out / "heads.safetensors")), json.loads((out / "multihead.json").read_text())
    changed = {k for k in after_heads if k not in before_heads or not torch.equal(before_heads[k], after_heads[k])}
    assert changed and all(k.startswith(("delta.", "delta_trunk.")) for k in changed)
    assert meta["heads"]["delta_inner_size"] == meta["heads"]["inner_size"]
    assert meta["thresholds"] == before_meta["thresholds"] and meta["heads_refit"] == before_meta["heads_refit"]
    assert meta["heads_refit_deltas"]["part"] == "deltas" and meta["metrics"] == before_meta["metrics"]
    assert meta["training"]["deltas_refit_data"]["train"]["examples"] == 4
    again = subprocess.run(command + ["--heads-only"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "4 of 4 read from the cache" in again.stderr


def test_scores_after_the_game_rules_drop_what_the_rules_forbid(tmp_path, personas):
    from persona_agents.multihead.evaluate import Predictions, format_report, score

    # Silvia mid-quest: a hint is labelled; her heirloom (give_item) is allowed only at
    # `complete`, so a predicted give_item is a false alarm the game would refuse.
    examples = load_examples([write_jsonl(tmp_path / "d.jsonl", [record(), record(flag=[])])], DEFAULT_FLAGS, personas)
    probs = [[0.9 if f in ("give_hint", "give_item") else 0.0 for f in DEFAULT_FLAGS]] * 2
    report = score(Predictions(probs, [[0.0, 0.0]] * 2, 1.0), examples, DEFAULT_FLAGS,
                   dict.fromkeys(DEFAULT_FLAGS, 0.5))
    assert report["per_flag"]["give_item"]["precision"] == 0.0 and report["flag_micro_precision"] == 0.25
    ruled = report["after_rules"]
    assert ruled["per_flag"]["give_item"]["support"] == 0 and ruled["flag_micro_precision"] == 0.5
    assert ruled["flag_micro_f1"] == pytest.approx(2 / 3, abs=1e-4)
    assert "micro-F1 after rules" in format_report(report)
    # Without persona rules there is nothing to apply, and no such figures.
    bare = load_examples([write_jsonl(tmp_path / "b.jsonl", [record()])], DEFAULT_FLAGS, {})
    assert "after_rules" not in score(Predictions(probs[:1], [[0.0, 0.0]], 1.0), bare, DEFAULT_FLAGS,
                                      dict.fromkeys(DEFAULT_FLAGS, 0.5))


def test_training_prompts_get_the_lore_of_every_retrieve_step_as_inference_does(tmp_path, personas):
    """The sample NPCs retrieve with faiss_lore, then recall_memories: the training and
    evaluation prompts must carry faiss_lore's entries, as the game's pipeline does (they
    went missing once only the last retrieve step ran, and heads fitted on such prompts
    were scored on prompts the game never renders)."""
    from persona_agents.manager import AgentManager
    from persona_agents.multihead.data import retrieve_lore

    line = "This sword broke in half. Can you mend it?"
    data = write_jsonl(tmp_path / "one.jsonl", [record(
        npc_id="blacksmith_village_center", context=[], player_utterance=line, flag=[],
        tags={"location": "village_center", "quest_stage": "not_started", "relationship": 0.0, "trust": 0.3,
              "npc_mood": "neutral"})])
    found = retrieve_lore(load_examples([data], DEFAULT_FLAGS, personas), NPCS_DIR)[0].turn.lore
    assert found, "no lore: a retrieve step was skipped"
    game = AgentManager(NPCS_DIR).turn("blacksmith_village_center", line, player_id="lore-test", seed=1)
    assert {chunk.id for chunk in found} == {entry["id"] for entry in game.meta["lore"]}


@pytest.mark.parametrize("npcs_dir", [NPCS_DIR, REPO / "training/generalist/npcs"], ids=["sample", "generalist"])
def test_training_prompts_are_the_games_own_prompts_events_included(npcs_dir, tmp_path):
    """Versions 2 and 3 show each event with what it means: the persona's `means`, else the
    game's description of the event. Training and evaluation prompts must say what the
    game's prompt step says (they once wrote `give item` where the game wrote `the NPC
    hands the player an item now`), for every NPC of a folder."""
    from persona_agents.default_plugins.prompts import SectionedPrompt
    from persona_agents.multihead.collator import render_training_prompt
    from persona_agents.runtime import Runtime

    personas = load_personas_for_data(npcs_dir)
    runtime = Runtime(npcs_dir=npcs_dir)
    for npc_id, persona in personas.items():
        data = write_jsonl(tmp_path / f"{npc_id}.jsonl", [record(npc_id=npc_id, player_utterance="Hello.", flag=[])])
        example = load_examples([data], DEFAULT_FLAGS, personas)[0]
        for version in (2, 3):
            step = SectionedPrompt(SectionedPrompt.Options(version=version, history_turns=4), persona, runtime)
            game = step.run(example.turn).prompt.text
            trained = render_training_prompt(example, 4, version)
            assert trained.startswith(game), (npc_id, version)
