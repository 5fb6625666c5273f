"""Training recipes: `persona-agents train --recipe FILE`, and their dry run on any machine.

A recipe is a YAML file of `train`'s options for one base model and one kind of machine
(training/recipes/qwen2.5-3b-instruct.yaml: a 3B instruct base in 4-bit on one GPU). Its
keys are the options' names (`lora_targets` or `lora-targets`; a list for a comma list),
and options given on the command line win over the file. A `dry_run` section says how to
run the recipe's code paths in a few minutes on a machine without the GPU:

    dry_run:
      tiny_model: {model_type: qwen2, hidden_size: 64, num_hidden_layers: 2, ...}
      options: {max_steps: 2, heads_refit_epochs: 5}

`train --recipe FILE --dry-run` then trains a tiny random model of that architecture (with
the embedded model's tokenizer, written to OUT/dry-run-base) instead of the base, with the
dry run's options over the recipe's, and maps what this device cannot run to what it can
(fp16 without CUDA -> bf16 or float32, bf16 without support -> float32, a bitsandbytes
optimizer bitsandbytes cannot run here -> adamw_torch, nf4 without bitsandbytes -> none),
saying so before it trains. Everything else (4-bit loading, the compute dtype, gradient
checkpointing, the LoRA targets, the optimizer, accumulation, checkpoints, the heads refit
and calibration) runs as the recipe says.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import click
import yaml

from ..errors import TrainingConfigError
from .hardware import bf16_problem, bitsandbytes_problem, fp16_problem, optim_problem

DRY_RUN_KEYS = ("tiny_model", "options")
#: Where `--dry-run` writes its tiny base, inside the adapter folder it trains.
DRY_RUN_BASE = "dry-run-base"


@dataclass
class Recipe:
    path: Path
    #: train option name -> value, converted by the option's type
    options: dict[str, Any]
    dry_run_options: dict[str, Any] = field(default_factory=dict)
    #: transformers config of the dry run's tiny model (model_type and sizes)
    tiny_model: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _options(path: Path, where: str, data: Any, params: Mapping[str, click.Parameter],
             ctx: click.Context) -> dict[str, Any]:
    """Option name -> value of one mapping of the recipe, each checked by its option's type."""
    if not isinstance(data, dict):
        raise TrainingConfigError(f"{path}: {where or 'the file'} must be a mapping of option: value, "
                                  f"got {type(data).__name__}")
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        prefix = f"{where}." if where else ""
        param = params.get(key)
        if param is None:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "."
            extra = "" if where else ", `description`, and `dry_run` (tiny_model, options)"
            raise TrainingConfigError(f"{path}: unknown key '{prefix}{raw_key}'{hint} A recipe sets options of "
                                      f"`persona-agents train`: {', '.join(sorted(params))}{extra}.")
        if isinstance(value, list):  # a comma list (lora_targets) written as a YAML list
            value = ",".join(str(v) for v in value)
        if isinstance(param.type, click.Choice) and value is not None:
            value = str(value)
        try:
            out[key] = None if value is None else param.type.convert(value, param, ctx)
        except click.BadParameter as exc:
            raise TrainingConfigError(f"{path}: {prefix}{raw_key}: {exc.message}") from None
    return out


def load_recipe(path: str | Path, params: Mapping[str, click.Parameter], ctx: click.Context) -> Recipe:
    """Read and check a recipe against `params` (the options a recipe may set), before any
    model loads: an unknown key or a bad value names the file and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingConfigError(f"Cannot read recipe {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise TrainingConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TrainingConfigError(f"{path}: a recipe is a mapping of train options (option: value)")
    data = dict(data)
    description = str(data.pop("description", "") or "")
    dry = data.pop("dry_run", None) or {}
    if not isinstance(dry, dict):
        raise TrainingConfigError(f"{path}: dry_run must be a mapping with {' and '.join(DRY_RUN_KEYS)}")
    unknown = [k for k in dry if k not in DRY_RUN_KEYS]
    if unknown:
        raise TrainingConfigError(f"{path}: unknown key 'dry_run.{unknown[0]}'; dry_run has "
                                  f"{' and '.join(DRY_RUN_KEYS)}.")
    tiny = dry.get("tiny_model") or {}
    if not isinstance(tiny, dict) or (tiny and "model_type" not in tiny):
        raise TrainingConfigError(f"{path}: dry_run.tiny_model must be a mapping with model_type (e.g. qwen2) "
                                  "and the sizes of a tiny model of that architecture")
    return Recipe(path=path, options=_options(path, "", data, params, ctx),
                  dry_run_options=_options(path, "dry_run.options", dry.get("options") or {}, params, ctx),
                  tiny_model=dict(tiny), description=description)


def build_tiny_base(spec: Mapping[str, Any], folder: Path, recipe_path: Path | str = "recipe") -> Path:
    """A randomly initialised model of `spec`'s architecture (transformers config values)
    with the embedded model's tokenizer, saved to `folder` (deterministic: seed 0)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..models import embedded_checkpoint

    spec = dict(spec)
    model_type = str(spec.pop("model_type"))
    tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id, "pad_token_id": pad}
        config = AutoConfig.for_model(model_type, **{**ids, **spec})
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError, KeyError) as exc:
        raise TrainingConfigError(f"{recipe_path}: dry_run.tiny_model: cannot build a {model_type} model: "
                                  f"{exc}") from exc
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def fit_to_device(options: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The options with what this device cannot run mapped to what it can, and a line for
    each change (option names as `train`'s)."""
    out = dict(options)
    notes: list[str] = []
    if out.get("quantization") == "nf4":
        problem = bitsandbytes_problem()
        if problem:
            out["quantization"] = "none"
            notes.append(f"quantization nf4 -> none ({problem})")
    if out.get("fp16"):
        problem = fp16_problem()
        if problem:
            out["fp16"] = False
            if bf16_problem() is None:
                out["bf16"] = True
                notes.append(f"fp16 -> bf16 ({problem})")
            else:
                notes.append(f"fp16 -> float32 ({problem})")
    if out.get("bf16"):
        problem = bf16_problem()
        if problem:
            out["bf16"] = False
            notes.append(f"bf16 -> float32 ({problem})")
    optim = out.get("optim")
    if optim:
        problem = optim_problem(str(optim))
        if problem:
            out["optim"] = "adamw_torch"
            notes.append(f"optim {optim} -> adamw_torch ({problem})")
    return out, notes


def prepare_dry_run(recipe: Recipe, options: dict[str, Any], out: Path,
                    base_given: bool) -> tuple[dict[str, Any], list[str]]:
    """`train --dry-run`'s options: the tiny base (unless --base was given), fitted to this
    device; and the lines that tell the user what runs as the recipe says and what not."""
    lines = [f"Dry run of {recipe.path} on this machine."]
    options = dict(options)
    if not base_given:
        if not recipe.tiny_model:
            raise TrainingConfigError(f"{recipe.path}: --dry-run needs a dry_run.tiny_model section (or --base "
                                      "with a small model of the recipe's architecture)")
        folder = build_tiny_base(recipe.tiny_model, (out / DRY_RUN_BASE).resolve(), recipe.path)
        sizes = ", ".join(f"{k} {v}" for k, v in recipe.tiny_model.items() if k != "model_type")
        lines.append(f"  base: a tiny random {recipe.tiny_model['model_type']} ({sizes}) in {folder}, "
                     f"instead of {options.get('base')}")
        options["base"] = str(folder)
    options, notes = fit_to_device(options)
    kept = [f"quantization {options.get('quantization')}",
            "bf16" if options.get("bf16") else "fp16" if options.get("fp16") else "float32 compute",
            "gradient checkpointing" if options.get("gradient_checkpointing") else "no gradient checkpointing",
            f"optim {options.get('optim')}", f"LoRA r {options.get('lora_r')} on {options.get('lora_targets')}",
            f"batch {options.get('batch_size')} x accumulation {options.get('grad_accum')}",
            f"max_length {options.get('max_length')}", f"max_steps {options.get('max_steps')}"]
    lines.append("  runs with: " + "; ".join(kept))
    lines.extend(f"  mapped for this device: {note}" for note in notes)
    return options, lines
