"""A short real QLoRA run on the embedded model: 4-bit base, LoRA, marker rows, heads."""

from __future__ import annotations

import json
import math

import pytest

from persona_agents.flags import DEFAULT_FLAGS

pytestmark = pytest.mark.model


def test_two_qlora_steps_on_the_embedded_model_write_a_small_adapter(tmp_path):
    from persona_agents.multihead.artifacts import read_metadata
    from persona_agents.multihead.trainer import MultiHeadTrainingConfig
    from persona_agents.multihead.training import train_adapter

    lines = [
        {"npc_id": "test_npc", "tags": {"trust": 0.5, "relationship": "friend", "quest_stage": "not_started"},
         "context": [], "player_utterance": text, "response": reply, "delta": delta, "flag": flags}
        for text, reply, delta, flags in [
            ("Hello!", "Hello, traveller.", [0.0, 0.0], []),
            ("Can I buy a sword?", "Have a look at my wares.", [0.0, 0.01], ["open_trade"]),
            ("You are a fool.", "Get out of my shop.", [-0.3, -0.4], ["end_conversation"]),
            ("Where is the mine?", "East of town, past the river.", [0.02, 0.0], ["give_hint"]),
        ]
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    out = tmp_path / "adapter"
    # No persona folder: minimal personas keep the sequences short (about 80 tokens).
    config = MultiHeadTrainingConfig(
        output_dir=str(out / "checkpoints"), base_model="embedded", quantization="nf4", max_steps=2,
        per_device_train_batch_size=2, logging_steps=1, save_steps=10, max_length=128,
        npcs_dir=str(tmp_path / "no-npcs"), retrieve_lore=False, disable_tqdm=True)
    meta = train_adapter([data], out, config, validation=data)

    assert meta["quantization"] == "nf4", "bitsandbytes 4-bit loading should work on this CPU"
    assert meta["training"]["steps"] == 2 and math.isfinite(meta["training"]["final_train_loss"])
    logged = meta["training"]["last_logged"]
    assert all(math.isfinite(logged[k]) for k in ("lm_loss", "delta_loss", "flag_loss"))
    assert read_metadata(out)["flags"] == list(DEFAULT_FLAGS)
    for name in ("adapter_model.safetensors", "adapter_config.json", "heads.safetensors", "tokenizer.json"):
        assert (out / name).is_file()
    assert (out / "adapter_model.safetensors").stat().st_size < 5_000_000  # LoRA + 11 marker rows, no embeddings
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "embedded:smollm2-135m-instruct"
    assert not (out / "checkpoints").exists()  # removed after a successful run
