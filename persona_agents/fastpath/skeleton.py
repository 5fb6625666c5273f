"""A llama checkpoint's weights in a plain torch module tree, without importing transformers.

Importing transformers' model classes costs about 2 s of every start on 2 cores, more than
reading the weights. The fast engine (`LeanDecoder`) never runs transformers' forward: it
reads the parameters and a few config values. `load_skeleton` builds exactly that, a tree
of `torch.nn` modules with the same names as `LlamaForCausalLM` (`model.layers.0.self_attn
.q_proj`, `model.norm`, `lm_head`, ...), filled from the checkpoint's safetensors, plus the
config and generation config read from their JSON files. Code written for the transformers
model (the merged-adapter cache, the base fingerprint, `supports()`) works on it unchanged.

It has no forward: the reference engine (`engine: transformers`) still loads the real
model. `skeleton_reason` says why a folder cannot be read this way (another architecture,
rope scaling, sharded or missing safetensors...); callers then load transformers' model.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..fileutil import read_json as _read_json

WEIGHTS_FILE = "model.safetensors"


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    # transformers 5 writes rope_parameters; older checkpoints have rope_theta/rope_scaling.
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    return {"type": params.get("rope_type", params.get("type", "default")), "theta": float(theta),
            "partial": float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))}


def skeleton_reason(folder: Path, dtype: str = "float32") -> str | None:
    """None when `load_skeleton(folder)` can read the checkpoint, else why not."""
    if dtype != "float32":
        return f"dtype {dtype}"
    if not (folder / "config.json").is_file() or not (folder / WEIGHTS_FILE).is_file():
        return f"no config.json and single {WEIGHTS_FILE} in {folder}"
    try:
        config = _read_json(folder / "config.json")
    except (OSError, ValueError) as exc:
        return f"unreadable config.json ({exc})"
    if config.get("model_type") != "llama":
        return f"model type '{config.get('model_type')}'"
    if config.get("hidden_act", "silu") != "silu" or config.get("attention_bias") or config.get("mlp_bias"):
        return "not the plain llama layout (activation or biases)"
    rope = _rope(config)
    if rope["type"] != "default" or rope["partial"] != 1.0:
        return f"rope type '{rope['type']}'"
    return None


class _Norm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size), requires_grad=False)
        self.variance_epsilon = eps


class _Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        # transformers' default rope: the same expression, so the tables match bit for bit.
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.attention_scaling = 1.0


class _Linear(nn.Module):
    """A bias-free linear layer's weight, unfilled until the checkpoint's is assigned.
    (Not nn.Linear: its random init, or building it on the meta device, which imports
    torch's symbolic-shapes stack, would cost more than reading the weights.)"""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(outputs, inputs), requires_grad=False)
        self.bias = None
        self.in_features, self.out_features = inputs, outputs


class _Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        self.q_proj, self.k_proj = _Linear(cfg.hidden_size, q), _Linear(cfg.hidden_size, kv)
        self.v_proj, self.o_proj = _Linear(cfg.hidden_size, kv), _Linear(q, cfg.hidden_size)


class _MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = _Linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = _Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = _Linear(cfg.intermediate_size, cfg.hidden_size)


class _Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn, self.mlp = _Attention(cfg), _MLP(cfg)
        self.input_layernorm = _Norm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = _Norm(cfg.hidden_size, cfg.rms_norm_eps)


class _Decoder(nn.Module):
    def __init__(self, cfg, theta: float):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = _Norm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = _Rotary(cfg.head_dim, theta)


class SkeletonCausalLM(nn.Module):
    """The parameters of a `LlamaForCausalLM`, by the same names, and no forward."""

    def __init__(self, config: SimpleNamespace, generation_config: SimpleNamespace, theta: float):
        super().__init__()
        self.config, self.generation_config = config, generation_config
        self.model = _Decoder(config, theta)
        self.lm_head = _Linear(config.hidden_size, config.vocab_size)

    def get_decoder(self):
        return self.model

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, embedding: nn.Embedding) -> None:
        self.model.embed_tokens = embedding

    def get_output_embeddings(self):
        return self.lm_head

    def resize_token_embeddings(self, rows: int, mean_resizing: bool = False) -> None:
        """Grow both matrices with zero rows (the adapter writes the new rows)."""
        for owner, name in ((self.model, "embed_tokens"), (self, "lm_head")):
            module = getattr(owner, name)
            old = module.weight.detach()
            weight = torch.zeros(rows, old.shape[1], dtype=old.dtype)
            weight[:min(rows, old.shape[0])] = old[:rows]
            module.weight = nn.Parameter(weight, requires_grad=False)
        self.config.vocab_size = rows


def load_skeleton(folder: str | Path) -> SkeletonCausalLM:
    """The checkpoint in `folder` as a `SkeletonCausalLM` (check `skeleton_reason` first)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    raw = _read_json(folder / "config.json")
    heads, theta = raw["num_attention_heads"], _rope(raw)["theta"]
    config = SimpleNamespace(**{
        **raw,
        "num_key_value_heads": raw.get("num_key_value_heads") or heads,
        "head_dim": raw.get("head_dim") or raw["hidden_size"] // heads,
        "rms_norm_eps": float(raw.get("rms_norm_eps", 1e-6)),
        "tie_word_embeddings": bool(raw.get("tie_word_embeddings", False)),
        "hidden_act": raw.get("hidden_act", "silu"),
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
    })
    generation = _read_json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
    generation.setdefault("eos_token_id", raw.get("eos_token_id"))
    model = SkeletonCausalLM(config, SimpleNamespace(**generation), theta)
    state = {name: tensor.float() for name, tensor in load_file(str(folder / WEIGHTS_FILE)).items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    expected = ({name for name, _ in model.named_parameters()}
                - ({"lm_head.weight"} if config.tie_word_embeddings else set()))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not hold a llama model's weights: missing "
                         f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # type: ignore[assignment]  # a Parameter at runtime
    model.requires_grad_(False)
    return model
