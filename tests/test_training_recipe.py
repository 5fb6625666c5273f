"""Training on a GPU (issue 28, part 2), checked on a CPU: gradient checkpointing with the
heads, the device checks of bf16/fp16 and the optimizers, `train --recipe` and the dry run
of training/recipes/qwen2.5-3b-instruct.yaml on a tiny random Qwen2 (nothing here runs on
a GPU: the device checks are exercised with the device's answers patched)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from persona_agents.cli import main
from persona_agents.errors import TrainingConfigError
from persona_agents.flags import DEFAULT_FLAGS
from persona_agents.multihead import hardware

from .conftest import NPCS_DIR, REPO

RECIPE = REPO / "training" / "recipes" / "qwen2.5-3b-instruct.yaml"
QWEN2_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """The recipe's dry-run model: a tiny random Qwen2 with the embedded tokenizer."""
    from persona_agents.multihead.recipe import build_tiny_base

    spec = yaml.safe_load(RECIPE.read_text())["dry_run"]["tiny_model"]
    return build_tiny_base(spec, tmp_path_factory.mktemp("tiny-qwen2"))


def _gradients(base: Path, checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of every trainable weight for one batch, and how often the first decoder
    layer's MLP started (twice per step with checkpointing: forward, then the recompute,
    which stops once the last tensor the backward needs is back: hence a pre-hook)."""
    from persona_agents.multihead.heads import multihead_losses
    from persona_agents.multihead.modeling import build_trainable_model

    torch.manual_seed(0)
    built = build_trainable_model(str(base), DEFAULT_FLAGS, quantization="none", lora_r=4, lora_dropout=0.0,
                                  target_modules=QWEN2_TARGETS, heads_inner=16, heads_dropout=0.0, prompt_version=2)
    model = built.model
    if checkpointing:
        model.activation_checkpointing_enable()  # what the Trainer calls for gradient_checkpointing=True
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would leave A without a gradient
            torch.nn.init.normal_(p, std=0.02)
    calls = []
    decoder = model.lm.get_base_model().get_decoder()
    decoder.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    model.train()
    ids = built.tokenizer("<SYS> Pip, a merchant.\n<PLAYER> Hello there! <STATE>\n<NPC> Hello, friend!",
                          return_tensors="pt")["input_ids"]
    ids = torch.cat([ids, ids.flip(1)])
    labels = ids.clone()
    labels[:, :8] = -100
    state = torch.tensor([6, 9])
    out = model(ids, torch.ones_like(ids), labels, state)
    losses = multihead_losses(out, torch.tensor([[0.1, -0.2], [0.0, 0.3]]),
                              torch.tensor([[1.0] + [0.0] * 7, [0.0] * 7 + [1.0]]))
    (losses.lm + 10 * losses.delta + losses.flag).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, len(calls)


def test_heads_and_lora_get_the_same_gradients_with_gradient_checkpointing(tiny_qwen2_dir):
    plain, plain_calls = _gradients(tiny_qwen2_dir, checkpointing=False)
    checkpointed, checkpointed_calls = _gradients(tiny_qwen2_dir, checkpointing=True)
    assert (plain_calls, checkpointed_calls) == (1, 2), "checkpointing must recompute the layer in the backward pass"
    assert set(plain) == set(checkpointed)
    groups = {"heads": [n for n in plain if n.startswith("heads.")],
              "lora_A": [n for n in plain if "lora_A" in n], "lora_B": [n for n in plain if "lora_B" in n],
              "marker rows": [n for n in plain if "trainable_tokens" in n]}
    assert all(groups.values()), groups
    assert {t for n in groups["lora_A"] for t in QWEN2_TARGETS if f".{t}." in n} == set(QWEN2_TARGETS)
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"
        assert torch.allclose(grad, checkpointed[name], rtol=1e-4, atol=1e-7), name


def test_config_refuses_what_this_device_cannot_run_and_names_the_fix(tmp_path, monkeypatch):
    from persona_agents.multihead.trainer import MultiHeadTrainingConfig

    def problems(**options) -> str:
        with pytest.raises(TrainingConfigError) as info:
            MultiHeadTrainingConfig(output_dir=str(tmp_path), **options)
        return str(info.value)

    monkeypatch.setattr(hardware, "cuda_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "fp16 needs a CUDA GPU" in problems(fp16=True)
    assert "choose one" in problems(fp16=True, bf16=True)
    monkeypatch.setattr(hardware, "_cpu_has_native_bf16", lambda: False)
    assert "native bfloat16 (AVX512-BF16 or AMX)" in problems(bf16=True)
    monkeypatch.setattr(hardware, "_cpu_has_native_bf16", lambda: True)
    config = MultiHeadTrainingConfig(output_dir=str(tmp_path), bf16=True)
    assert config.compute_dtype == "bfloat16" and config.use_cpu

    monkeypatch.setattr(hardware, "_bnb_step_error", lambda name: "RuntimeError: no CUDA kernels")
    text = problems(optim="paged_adamw_8bit")
    assert "without a CUDA GPU" in text and "--optim adamw_torch" in text
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed
    assert "pip install 'persona-agents[train]'" in problems(optim="adamw_bnb_8bit")
    assert "not offered" in problems(optim="sgd")

    # A GPU without bf16 (a T4): told to use fp16.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Tesla T4")
    assert "Tesla T4 is 7.5: use --fp16" in hardware.bf16_problem()


def test_checkpointing_option_sets_transformers_field_without_a_deprecation_warning(tmp_path, recwarn):
    from persona_agents.multihead.trainer import MultiHeadTrainingConfig

    config = MultiHeadTrainingConfig(output_dir=str(tmp_path), gradient_checkpointing=True)
    assert config.checkpointing and config.gradient_checkpointing
    assert not [w for w in recwarn if "gradient_checkpointing" in str(w.message)]
    assert not MultiHeadTrainingConfig(output_dir=str(tmp_path)).checkpointing


@pytest.mark.skipif(hardware.optim_problem("paged_adamw_8bit") is not None,
                    reason="bitsandbytes cannot run its optimizers on this machine")
def test_optimizer_follows_optim_with_two_learning_rates(tmp_path, tiny_qwen2_dir):
    from bitsandbytes.optim import AdamW as BnbAdamW

    from persona_agents.multihead.modeling import build_trainable_model
    from persona_agents.multihead.trainer import MultiHeadTrainingConfig, build_optimizer

    model = build_trainable_model(str(tiny_qwen2_dir), DEFAULT_FLAGS, quantization="none", lora_r=2,
                                  heads_inner=8).model
    for optim, expected in (("adamw_torch", torch.optim.AdamW), ("paged_adamw_8bit", BnbAdamW)):
        config = MultiHeadTrainingConfig(output_dir=str(tmp_path), optim=optim, learning_rate=3e-4,
                                         heads_learning_rate=2e-3)
        optimizer = build_optimizer(model, config)
        assert isinstance(optimizer, expected)
        assert [g["lr"] for g in optimizer.param_groups] == [3e-4, 2e-3]
    assert optimizer.args.optim_bits == 8 and optimizer.is_paged


def _train(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["train", *args])
    return result.exit_code, result.output


def test_recipe_errors_name_the_file_and_the_key(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")

    def fails_with(recipe: dict | str, *extra: str) -> str:
        path = tmp_path / "recipe.yaml"
        path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
        code, output = _train("--recipe", str(path), "--data", str(data), "--out", str(tmp_path / "a"), *extra)
        assert code != 0, output
        return output

    text = fails_with({"base": "embedded", "lora_rank": 16})
    assert str(tmp_path / "recipe.yaml") in text and "unknown key 'lora_rank'" in text and "'lora_r'" in text
    assert "lr: 'fast' is not a valid float" in fails_with({"lr": "fast"})
    assert "optim: 'adam'" in fails_with({"optim": "adam"})
    assert "unknown key 'dry_run.options.lora_rank'" in fails_with({"dry_run": {"options": {"lora_rank": 4}}})
    assert "unknown key 'dry_run.tiny'" in fails_with({"dry_run": {"tiny": {}}})
    assert "not valid YAML" in fails_with("base: [")
    code, output = _train("--dry-run", "--data", str(data), "--out", str(tmp_path / "a"))
    assert code == 2 and "--dry-run runs a recipe: give --recipe FILE" in output


def test_command_line_options_win_over_the_recipe(tmp_path, monkeypatch):
    import click

    from persona_agents.multihead import training

    seen = {}

    def capture(data, out, config, **_):
        seen["config"] = config
        raise click.exceptions.Exit(0)

    monkeypatch.setattr(training, "train_adapter", capture)
    monkeypatch.setattr(hardware, "optim_problem", lambda name: None)  # the recipe's optimizer, whatever runs here
    monkeypatch.setattr(hardware, "bf16_problem", lambda: None)
    monkeypatch.setattr("persona_agents.multihead.trainer.optim_problem", lambda name: None)
    monkeypatch.setattr("persona_agents.multihead.trainer.bf16_problem", lambda: None)
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    code, output = _train("--recipe", str(RECIPE), "--data", str(data), "--out", str(tmp_path / "a"),
                          "--lora-r", "8", "--batch-size", "2", "--npcs-dir", str(NPCS_DIR))
    assert code == 0, output
    config = seen["config"]
    assert (config.lora_r, config.per_device_train_batch_size) == (8, 2)  # the command line's
    assert config.base_model == "Qwen/Qwen2.5-3B-Instruct" and config.lora_alpha == 32  # the recipe's
    assert config.lora_target_modules == QWEN2_TARGETS and config.gradient_accumulation_steps == 4
    assert config.quantization == "nf4" and config.bf16 and config.checkpointing
    assert config.optim_name == "paged_adamw_8bit" and config.learning_rate == 2e-4 and config.max_length == 1024


def test_dry_run_of_the_qwen_recipe_trains_a_tiny_qwen2_that_answers_a_turn(tmp_path, monkeypatch):
    from persona_agents.manager import AgentManager
    from persona_agents.multihead.heads import MultiHeadModel
    from persona_agents.multihead.recipe import fit_to_device

    checkpointed = []
    enable = MultiHeadModel.activation_checkpointing_enable

    def spy(self, *args, **kwargs):
        enable(self, *args, **kwargs)
        layers = self.lm.get_base_model().get_decoder().layers
        checkpointed.append(all(layer.gradient_checkpointing for layer in layers))

    monkeypatch.setattr(MultiHeadModel, "activation_checkpointing_enable", spy)

    lines = (REPO / "training/data/validation.jsonl").read_text(encoding="utf-8").splitlines()
    pip = [line for line in lines if '"npc_id": "merchant_traveling"' in line][:4]
    brann = [line for line in lines if '"npc_id": "blacksmith_village_center"' in line][:2]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(pip + brann) + "\n", encoding="utf-8")
    out = tmp_path / "adapter"
    code, output = _train("--recipe", str(RECIPE), "--dry-run", "--data", str(data), "--validation", str(data),
                          "--out", str(out), "--npcs-dir", str(NPCS_DIR), "--keep-checkpoints")
    assert code == 0, output
    assert "Dry run of" in output and "a tiny random qwen2" in output
    assert checkpointed == [True], "the Trainer switches checkpointing on through the multi-head model"

    meta = json.loads((out / "multihead.json").read_text())
    recipe = yaml.safe_load(RECIPE.read_text())
    fitted, _ = fit_to_device({k: recipe[k] for k in ("quantization", "bf16", "optim")})
    assert meta["base"]["model_type"] == "qwen2" and meta["base"]["name"] == str((out / "dry-run-base").resolve())
    assert meta["quantization"] == fitted["quantization"]  # nf4 where bitsandbytes is installed
    assert meta["lora"] == {"r": 16, "alpha": 32, "target_modules": QWEN2_TARGETS}
    run = meta["training"]
    assert run["steps"] == 2 and (run["batch_size"], run["grad_accum"]) == (2, 2) and run["gradient_checkpointing"]
    assert run["precision"] == ("bfloat16" if fitted["bf16"] else "float32") and run["optim"] == fitted["optim"]
    assert meta["max_length"] == 1024 and meta["retrieve_lore"] and meta["heads_refit"]
    assert (out / "checkpoints" / "checkpoint-1" / "optimizer.pt").is_file()  # save_steps 1: the optimizer's state

    npcs = tmp_path / "npcs"
    npcs.mkdir()
    game = yaml.safe_load((NPCS_DIR / "_game.yaml").read_text())
    game.pop("word_travels")  # it names the other sample NPCs
    (npcs / "_game.yaml").write_text(yaml.safe_dump(game))
    persona = yaml.safe_load((NPCS_DIR / "merchant_traveling.yaml").read_text())
    persona["generation"] = {"max_new_tokens": 4, "seed": 1}
    generate = {"name": "multihead", "options": {"adapter": str(out), "engine": "transformers"}}
    persona["pipeline"] = {"prompt": ["sectioned"], "retrieve": [], "generate": [generate],
                           "postprocess": ["game_rules"]}
    (npcs / "merchant_traveling.yaml").write_text(yaml.safe_dump(persona))
    response = AgentManager(npcs).turn("merchant_traveling", "Hello there! Any news?", seed=1)
    assert response.flag_probs is not None and list(response.flag_probs) == meta["flags"]
    assert all(0.0 <= p <= 1.0 for p in response.flag_probs.values())
    assert response.meta["adapter"] == str(out)


def test_the_dry_run_maps_what_this_device_cannot_run_and_says_so(monkeypatch):
    from persona_agents.multihead import recipe

    options = {"quantization": "nf4", "bf16": False, "fp16": True, "optim": "paged_adamw_8bit"}
    monkeypatch.setattr(recipe, "bitsandbytes_problem", lambda: "4-bit NF4 loading needs bitsandbytes")
    monkeypatch.setattr(recipe, "fp16_problem", lambda: "fp16 needs a CUDA GPU")
    monkeypatch.setattr(recipe, "bf16_problem", lambda: None)
    monkeypatch.setattr(recipe, "optim_problem", lambda name: "needs bitsandbytes")
    fitted, notes = recipe.fit_to_device(options)
    assert fitted == {"quantization": "none", "bf16": True, "fp16": False, "optim": "adamw_torch"}
    assert notes == ["quantization nf4 -> none (4-bit NF4 loading needs bitsandbytes)",
                     "fp16 -> bf16 (fp16 needs a CUDA GPU)",
                     "optim paged_adamw_8bit -> adamw_torch (needs bitsandbytes)"]
    monkeypatch.setattr(recipe, "bf16_problem", lambda: "no native bfloat16")
    fitted, notes = recipe.fit_to_device({**options, "fp16": False, "bf16": True})
    assert not fitted["bf16"] and "bf16 -> float32 (no native bfloat16)" in notes
