"""Building the trainable model: tokenizer with markers, (4-bit) base, LoRA, state heads.

QLoRA: the base is loaded in 4-bit NF4 with bitsandbytes (which runs on CPU too) and
frozen; LoRA trains low-rank updates of the attention projections, and peft's
`trainable_token_indices` trains only the embedding rows of the new prompt markers
(11 rows instead of the 28M-parameter embedding matrix). Where 4-bit loading is not
possible the same LoRA trains on the full-precision base, and we say so.

On a GPU the 4-bit layers compute in the run's mixed precision (bf16 or fp16; float32
without one), and gradient checkpointing recomputes each decoder layer in the backward
pass (non-reentrant checkpoints: the heads read the final hidden state, which is outside
them, and every trainable weight gets its gradient whether or not a layer's input needs
one).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import ModelLoadError, TrainingConfigError
from ..markers import section_markers
from ..models import resolve_model
from .heads import HeadsConfig, MultiHeadModel, StateHeads

log = logging.getLogger("persona_agents.multihead")

QUANTIZATIONS = ("nf4", "none")


def add_markers(tokenizer, prompt_version: int = 1) -> list[int]:
    """Make the prompt markers of sectioned `prompt_version` special tokens (never split,
    never produced by player text) and return their ids."""
    markers = list(section_markers(prompt_version))
    missing = [m for m in markers if m not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": markers}, replace_extra_special_tokens=False)
    return [tokenizer.convert_tokens_to_ids(m) for m in markers]


def stored_embedding_rows(location: str | Path, count: int = 16):
    """The first `count` rows of a checkpoint folder's input embeddings as stored (float32),
    read from its safetensors files without loading the model; None if not found."""
    from safetensors import safe_open

    folder = Path(location)
    if not folder.is_dir():
        return None
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as tensors:
            for key in tensors.keys():
                if key.endswith("embed_tokens.weight"):
                    return tensors.get_slice(key)[:count].float().contiguous()
    return None


def base_fingerprint(model, name: str, vocab_size: int, rows=None) -> dict[str, Any]:
    """What identifies a base: its architecture and a checksum of its first embedding rows
    (unquantized in 4-bit models too, so the fp32 and NF4 loads of one base agree). A base
    loaded in bfloat16 or float16 passes `rows` as stored (`stored_embedding_rows`): the
    checksum is of float32 values, and the cast ones would never match."""
    config = model.config
    if rows is None:
        rows = model.get_input_embeddings().weight[:16].detach().float().cpu().contiguous()
    return {
        "name": name,
        "model_type": getattr(config, "model_type", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "vocab_size": vocab_size,
        "embedding_rows": int(model.get_input_embeddings().weight.shape[0]),
        "embedding_checksum": hashlib.sha256(rows.numpy().round(5).tobytes()).hexdigest()[:16],
    }


def _device_map():
    # Each process of `accelerate launch` puts its 4-bit copy on its own device; on a
    # machine without accelerators that is the CPU.
    from accelerate import PartialState

    return {"": PartialState().device}


def load_base(ref: str, quantization: str = "none", dtype: str = "float32"):
    """(model, tokenizer, name, quantization actually used) for a base model reference.

    `dtype`: of a full-precision base; with nf4, the 4-bit layers' compute dtype (the
    training's mixed precision: float32, bfloat16 or float16). The other weights of a
    4-bit base load in float32, where peft's `prepare_model_for_kbit_training` would put
    them anyway, and the base's fingerprint reads its embedding rows unrounded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quantization not in QUANTIZATIONS:
        raise TrainingConfigError(f"Unknown quantization '{quantization}'. Choose one of: {', '.join(QUANTIZATIONS)}.")
    location, name = resolve_model(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Cannot load the tokenizer of base model '{ref}': {exc}") from exc
    torch_dtype = getattr(torch, dtype)
    full_dtype = torch_dtype if quantization == "none" else torch.float32  # nf4 and its fallback: float32
    model = None
    if quantization == "nf4":
        try:
            import bitsandbytes  # noqa: F401  (fails here, not deep inside from_pretrained)
            from transformers import BitsAndBytesConfig

            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_compute_dtype=torch_dtype)
            model = AutoModelForCausalLM.from_pretrained(location, quantization_config=quant,
                                                         device_map=_device_map(), dtype=full_dtype)
        except Exception as exc:  # any failure of the optional 4-bit path falls back
            log.warning("4-bit NF4 loading is not available here (%s: %s); training LoRA on the "
                        "full-precision base instead (QLoRA needs the `train` extra: pip install "
                        "'persona-agents[train]').", type(exc).__name__, str(exc).splitlines()[0][:200])
            quantization = "none"
    if model is None:
        try:
            model = AutoModelForCausalLM.from_pretrained(location, dtype=full_dtype)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Cannot load base model '{ref}': {exc}") from exc
    return model, tokenizer, name, quantization


def enable_checkpointing(model, kwargs: dict[str, Any] | None = None, **options) -> None:
    """Gradient (activation) checkpointing of a transformers model's decoder layers,
    non-reentrant unless `kwargs` says otherwise; `options`: transformers 5's
    `every_n_layers` and `offload`."""
    kwargs = {"use_reentrant": False, **(kwargs or {})}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@dataclass
class TrainableModel:
    model: MultiHeadModel
    tokenizer: Any
    base: dict[str, Any]
    quantization: str
    heads_config: HeadsConfig


def build_trainable_model(base_ref: str, flags: Sequence[str], *, quantization: str = "nf4", lora_r: int = 8,
                          lora_alpha: int | None = None, lora_dropout: float = 0.05,
                          target_modules: Sequence[str] = ("q_proj", "v_proj"), heads_inner: int = 256,
                          heads_dropout: float = 0.1, prompt_version: int = 1,
                          compute_dtype: str = "float32") -> TrainableModel:
    """`compute_dtype`: of the 4-bit layers (the run's mixed precision; a full-precision base
    stays float32, under autocast). Gradient checkpointing is switched on by the Trainer
    (`MultiHeadModel.activation_checkpointing_enable`), or by calling that."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model, tokenizer, name, used = load_base(base_ref, quantization, compute_dtype if quantization == "nf4"
                                             else "float32")
    base_vocab = len(tokenizer)
    fingerprint = base_fingerprint(model, name, base_vocab)
    marker_ids = add_markers(tokenizer, prompt_version)
    model.resize_token_embeddings(len(tokenizer))
    if used == "nf4":
        # Gradient checkpointing is the Trainer's to switch on, the same way for both kinds
        # of base (`MultiHeadModel.activation_checkpointing_enable`).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    lora = LoraConfig(
        r=lora_r, lora_alpha=lora_alpha or 2 * lora_r, lora_dropout=lora_dropout,
        target_modules=list(target_modules), task_type="CAUSAL_LM",
        trainable_token_indices={"embed_tokens": marker_ids},
    )
    try:
        lm = get_peft_model(model, lora)
    except ValueError as exc:
        raise TrainingConfigError(f"LoRA cannot wrap base '{base_ref}': {exc}. Choose --lora-targets that name "
                                  "linear layers of this model (q_proj, v_proj for Llama/Qwen/Mistral).") from exc
    lm.peft_config["default"].base_model_name_or_path = name  # not this machine's cache path
    heads_config = HeadsConfig(hidden_size=model.config.hidden_size, num_flags=len(flags),
                               inner_size=heads_inner, dropout=heads_dropout)
    heads = StateHeads(heads_config)
    return TrainableModel(MultiHeadModel(lm, heads), tokenizer, fingerprint, used, heads_config)
