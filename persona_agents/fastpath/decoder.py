"""A lean decoder for llama-family causal LMs: the same maths as transformers, far less overhead.

A transformers `generate` call spends most of a CPU turn outside the matrix products: it
rebuilds masks and cache objects and walks ~20 Python modules per layer for every token.
A 135M model's decode step is a few milliseconds of arithmetic, so that overhead is what
makes a turn slow. This module reads the weights of an already loaded model (the adapter
merged in) and runs them directly:

- q/k/v and gate/up are fused into one matrix each (the model's own parameters are
  re-pointed at row slices of the fused ones, so no memory is duplicated and the
  reference path keeps working on the same weights);
- a preallocated key/value cache with one slot per sequence, so several sequences of
  different lengths decode in one forward (the weights, the memory-bound part, are read
  once for all of them) while attention masks each slot to its own length;
- only the rows whose output is needed go through the final norm and the 49k-row output
  matrix (the last position, and the `<STATE>` position the heads read);
- decode steps in a precision of their own (`Projection`): int4 groups of 32 (an
  eighth of float32's bytes per token: a decode step is bound by reading weights) or
  int8 rows; the prompt pass, which the state heads read, in float32 unless asked.

Supported: models whose decoder layers are the llama layout (llama, including SmolLM2,
and qwen2 with its q/k/v biases) in float32. `supports()` says why another model is
not; the generate steps then fall back to transformers `generate` and say so.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F

from . import packcache

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
PRECISIONS = ("float32", "bfloat16", "int8", "int4")


#: torch 2.6 split the CPU int4 kernels from the other devices' (pytorch#139611); older
#: releases lack these names, and their int4 layout differs.
INT4_KERNELS = all(hasattr(torch, name) for name in ("_weight_int4pack_mm_for_cpu",
                                                     "_convert_weight_to_int4pack_for_cpu"))


def supports(model) -> str | None:
    """None when the lean decoder can run `model`, else the reason it cannot."""
    cfg = model.config
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        return f"model type '{kind}' (the lean decoder runs {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation '{cfg.hidden_act}'"
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"
    if rope_type not in ("default", "linear", "llama3"):
        return f"rope type '{rope_type}' (position-dependent scaling)"
    if getattr(cfg, "use_sliding_window", False):
        return "sliding-window attention"
    if getattr(cfg, "mlp_bias", False) or (kind == "llama" and getattr(cfg, "attention_bias", False)):
        return "biased output or MLP projections"
    decoder = model.get_decoder()
    if not hasattr(decoder, "rotary_emb") or not hasattr(decoder, "layers"):
        return "a decoder without the llama layout"
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        return f"weights in {dtype} (the lean decoder runs float32 models)"
    return None


class _Layer:
    """One decoder layer: its norms and four fused matrices, each available in several
    precisions (built on first use)."""

    NAMES = ("qkv", "o", "gate_up", "down")

    def __init__(self, norm1, norm2, weights: dict, biases: dict, low_rank: dict):
        self.norm1, self.norm2 = norm1, norm2
        self._weights, self._biases, self._low_rank = weights, biases, low_rank
        self._projections: dict[tuple[str, str], Projection] = {}

    def projection(self, name: str, kind: str) -> "Projection":
        key = (name, kind)
        if key not in self._projections:
            self._projections[key] = Projection(self._weights[name], self._biases.get(name), kind,
                                                self._low_rank.get(name))
        return self._projections[key]


def _fuse(modules: Sequence[torch.nn.Linear]) -> torch.Tensor:
    """One matrix with the modules' weights stacked by rows; each module's weight becomes
    a view of its rows, so nothing is stored twice."""
    fused = torch.cat([m.weight.detach() for m in modules], dim=0).contiguous()
    start = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight.data = fused[start:start + rows]
        start += rows
    return fused


LowRank = dict  # {nn.Linear module: (A (r, in), B (out, r), scaling)}: LoRA factors of merged weights


def _fused_low_rank(modules: Sequence[torch.nn.Linear], low_rank: LowRank) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A, B) with B @ A = the LoRA updates merged into the fused matrix of `modules`."""
    parts = [(i, low_rank[m]) for i, m in enumerate(modules) if m in low_rank]
    if not parts:
        return None
    rows = [m.weight.shape[0] for m in modules]
    rank = sum(a.shape[0] for _, (a, _, _) in parts)
    a_fused = torch.cat([a.detach().float() for _, (a, _, _) in parts], dim=0)
    b_fused = torch.zeros(sum(rows), rank)
    col = 0
    for i, (a, b, scaling) in parts:
        start = sum(rows[:i])
        b_fused[start:start + rows[i], col:col + a.shape[0]] = b.detach().float() * scaling
        col += a.shape[0]
    return a_fused, b_fused


INT4_GROUP = 32


def _pack_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit groups of 32 along the input (the layout of GGUF's Q4_1, so a base
    de-quantized from such a file is represented exactly), for `_weight_int4pack_mm_for_cpu`."""
    rows, cols = weight.shape
    padded = -rows % 16  # the packed layout wants rows in multiples of 16
    if padded:
        weight = torch.cat([weight, weight.new_zeros(padded, cols)])
    groups = weight.reshape(weight.shape[0], cols // INT4_GROUP, INT4_GROUP)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-10)
    q = ((groups - low) / scale).round().clamp(0, 15).to(torch.int32).reshape(weight.shape)
    # The kernel de-quantizes (q - 8) * scale + zero.
    zero = low + 8 * scale
    scales_zeros = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1).transpose(0, 1).contiguous()
    return torch._convert_weight_to_int4pack_for_cpu(q, 8), scales_zeros.to(torch.bfloat16)


def _int4_parts(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    packed, scales_zeros = _pack_int4(weight)
    return {"packed": packed, "scales_zeros": scales_zeros}


def _int8_parts(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    scales = weight.abs().amax(dim=1).clamp(min=1e-8).double() / 127.0
    values = torch.round(weight.double() / scales[:, None]).clamp(-128, 127).to(torch.int8)
    return {"int8": values, "scales": scales}


def _int8_from(parts: dict[str, torch.Tensor], bias: torch.Tensor | None):
    """fbgemm's packed form of per-channel int8 values and scales."""
    zero = torch.zeros(parts["int8"].shape[0], dtype=torch.int64)
    with warnings.catch_warnings():
        # torch marks its quantized tensor types deprecated, but fbgemm's packed int8
        # kernels still take them and remain the fastest int8 path on a CPU.
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(parts["int8"], parts["scales"], zero, 0)
    return torch.ops.quantized.linear_prepack(qweight, bias)


class Projection:
    """One matrix for decode steps in its decode precision. Quantized weights keep LoRA
    updates apart as a low-rank term: a fine-tune's small changes would otherwise be
    rounded away by the quantization grid."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str,
                 low_rank: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.kind, self.bias, self.rows = kind, bias, weight.shape[0]
        self.low_rank = None if kind == "float32" else low_rank
        base = weight if self.low_rank is None else weight - self.low_rank[1] @ self.low_rank[0]
        if kind == "float32":
            self.weight = weight
        elif kind == "int8":
            self.packed = _int8_from(packcache.cached("int8", base, _int8_parts), bias)
        elif kind == "bfloat16":
            self.weight = base.to(torch.bfloat16)
        elif kind == "int4":
            if weight.shape[1] % INT4_GROUP:
                raise ValueError(f"int4 decode weights need input sizes divisible by {INT4_GROUP}")
            parts = packcache.cached("int4", base, _int4_parts)
            self.packed, self.scales_zeros = parts["packed"], parts["scales_zeros"]
        else:
            raise ValueError(f"unknown weight precision '{kind}' (choose from {', '.join(PRECISIONS)})")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "float32":
            return F.linear(x, self.weight, self.bias)
        if self.kind == "int8":  # fbgemm adds the bias itself
            # reduce_range: activations on 7 bits. On a CPU without VNNI (AVX2 only, e.g. an
            # AMD EPYC of this project's build machines) fbgemm's 8-bit products saturate
            # their 16-bit sums: 20% off float32 where 7 bits are 1.6% off. torch's own
            # dynamic quantization sets it on x86 for the same reason.
            y = torch.ops.quantized.linear_dynamic(x, self.packed, True)
        else:
            if self.kind == "bfloat16":
                y = F.linear(x.to(torch.bfloat16), self.weight).float()
            else:
                y = torch._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.packed, INT4_GROUP,
                                                      self.scales_zeros)[:, : self.rows].float()
            if self.bias is not None:
                y = y + self.bias
        if self.low_rank is not None:
            y = y + F.linear(F.linear(x, self.low_rank[0]), self.low_rank[1])
        return y


class KVCache:
    """Keys and values for `slots` sequences of at most `max_len` positions each."""

    def __init__(self, layers: int, slots: int, kv_heads: int, max_len: int, head_dim: int):
        shape = (slots, kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape) for _ in range(layers)]
        self.v = [torch.zeros(shape) for _ in range(layers)]
        self.slots, self.max_len = slots, max_len


class LeanDecoder:
    """Prefill and batched decode steps over a llama-family model's own weights.

    Precisions ("float32": the model's own, exact; "bfloat16"; "int8": per-channel int8
    with dynamic activations, fbgemm; "int4": groups of 32, the embedded GGUF's own grid):
    - `prefill_weights` for the prompt pass, which the state heads read;
    - `decode_weights` for a decode step of one sequence (bound by reading the weights);
    - `batch_weights` for a decode step of several (int4's kernel loses its edge there).
    `low_rank`: the LoRA factors of an adapter merged into the model, which quantized
    weights keep apart (see `Projection`)."""

    def __init__(self, model, decode_weights: str = "float32", low_rank: LowRank | None = None,
                 prefill_weights: str = "float32", batch_weights: str | None = None):
        reason = supports(model)
        if reason is not None:
            raise ValueError(f"The lean decoder cannot run this model: {reason}.")
        for what, kind in (("decode_weights", decode_weights), ("prefill_weights", prefill_weights),
                           ("batch_weights", batch_weights or decode_weights)):
            if kind not in PRECISIONS:
                raise ValueError(f"{what} must be one of {', '.join(PRECISIONS)}, not '{kind}'")
            if kind == "int4" and not INT4_KERNELS:
                raise ValueError(
                    f"int4 {what.split('_')[0]} weights need torch's CPU int4 kernels, new in torch 2.6 "
                    f"(this is torch {torch.__version__}): upgrade torch, or set `decode_precision: int8` "
                    "(or float32) in the generate step's options.")
        cfg = model.config
        decoder = model.get_decoder()
        self.hidden = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden // self.heads
        self.decode_weights, self.prefill_weights = decode_weights, prefill_weights
        self.batch_weights = batch_weights or decode_weights
        self._low_rank = low_rank or {}
        self.embed = decoder.embed_tokens.weight.detach()
        self.final_norm = decoder.norm.weight.detach()
        self.eps = float(getattr(decoder.norm, "variance_epsilon", getattr(cfg, "rms_norm_eps", 1e-6)))
        self.lm_head = model.get_output_embeddings().weight.detach()
        rotary = decoder.rotary_emb
        self._inv_freq = rotary.inv_freq.detach().float()
        self._rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self._cos = self._sin = torch.empty(0)
        self.layers = [self._read_layer(layer) for layer in decoder.layers]
        # The output matrix (a fifth of the model) is int8 whenever decoding is quantized:
        # int4 groups would move the logits too far (the GGUF stores it as Q8_0).
        self._lm_head_d = Projection(self.lm_head, None, "float32" if decode_weights == "float32" else "int8")
        for layer in self.layers:  # pack now what a first turn needs
            for name in _Layer.NAMES:
                for kind in {self.prefill_weights, self.decode_weights}:
                    layer.projection(name, kind)

    def batch_packing_jobs(self) -> list:
        """One job per layer that packs the batch-step weights (otherwise packed on first use)."""
        return [lambda layer=layer: [layer.projection(name, self.batch_weights) for name in _Layer.NAMES]
                for layer in self.layers]

    def _read_layer(self, layer) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        qkv_mods = (attn.q_proj, attn.k_proj, attn.v_proj)  # biases beyond q/k/v: refused by supports()
        groups = {"qkv": qkv_mods, "o": (attn.o_proj,), "gate_up": (mlp.gate_proj, mlp.up_proj),
                  "down": (mlp.down_proj,)}
        weights = {name: (_fuse(mods) if len(mods) > 1 else mods[0].weight.detach()) for name, mods in groups.items()}
        biases = {}
        if attn.q_proj.bias is not None:
            biases["qkv"] = torch.cat([m.bias.detach() for m in qkv_mods])
        low_rank = {name: lr for name, mods in groups.items()
                    if (lr := _fused_low_rank(mods, self._low_rank)) is not None}
        return _Layer(layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach(),
                      weights, biases, low_rank)

    # -- building blocks -----------------------------------------------------------------

    def new_cache(self, slots: int, max_len: int) -> KVCache:
        self._rope_tables(max_len)
        return KVCache(len(self.layers), slots, self.kv_heads, max_len, self.head_dim)

    def _rope_tables(self, length: int) -> None:
        if self._cos.shape[0] >= length:
            return
        # The same computation as transformers' rotary embedding (float32 outer product).
        positions = torch.arange(length, dtype=torch.float32)
        freqs = torch.outer(positions, self._inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self._cos, self._sin = emb.cos() * self._rope_scale, emb.sin() * self._rope_scale

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _split_qkv(self, qkv: torch.Tensor):
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = qkv.split((q_size, kv_size, kv_size), dim=-1)
        shape = qkv.shape[:-1]
        return (q.reshape(*shape, self.heads, self.head_dim), k.reshape(*shape, self.kv_heads, self.head_dim),
                v.reshape(*shape, self.kv_heads, self.head_dim))

    def logits(self, hidden: torch.Tensor, decode: bool = False) -> torch.Tensor:
        """Vocabulary logits for final-norm hidden rows (in the decode precision if `decode`)."""
        return self._lm_head_d(hidden) if decode else F.linear(hidden, self.lm_head)

    # -- the two passes --------------------------------------------------------------------

    def prefill(self, cache: KVCache, slot: int, ids: Sequence[int], keep: Sequence[int],
                start: int = 0) -> torch.Tensor:
        """Run the prompt `ids` into cache slot `slot` at positions `start`..; returns the
        final-norm hidden state (len(keep), hidden) at the positions `keep` of `ids`
        (negative counts from the end). With `start` > 0 the tokens attend to the `start`
        positions already in the slot: a prompt pass may run in chunks (the engine's
        chunked prefill) or continue a prompt whose first part is cached."""
        length = len(ids)
        end = start + length
        if end > cache.max_len:
            raise ValueError(f"prompt of {end} tokens exceeds the cache length {cache.max_len}")
        x = self.embed[torch.tensor(ids)]
        cos, sin = self._cos[start:end, None, :], self._sin[start:end, None, :]
        scale = self.head_dim ** -0.5
        kind = self.prefill_weights
        # Row i sees the cached positions and itself: causal with an offset of `start`.
        mask = None if start == 0 else (
            torch.arange(end)[None, :] <= torch.arange(start, end)[:, None])[None, None]
        for index, layer in enumerate(self.layers):
            h = self._norm(x, layer.norm1)
            q, k, v = self._split_qkv(layer.projection("qkv", kind)(h))  # (length, heads, head_dim)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            k, v = k.transpose(0, 1), v.transpose(0, 1)  # (kv_heads, length, head_dim)
            cache.k[index][slot, :, start:end] = k
            cache.v[index][slot, :, start:end] = v
            if start:
                k, v = cache.k[index][slot, :, :end], cache.v[index][slot, :, :end]
            attn = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None], attn_mask=mask,
                                                  is_causal=mask is None, scale=scale,
                                                  enable_gqa=self.kv_heads != self.heads)
            x = x + layer.projection("o", kind)(attn[0].transpose(0, 1).reshape(length, -1))
            gate, up = layer.projection("gate_up", kind)(self._norm(x, layer.norm2)).chunk(2, dim=-1)
            x = x + layer.projection("down", kind)(F.silu(gate) * up)
        rows = torch.tensor([i if i >= 0 else length + i for i in keep], dtype=torch.long)
        return self._norm(x[rows], self.final_norm)

    def _masked_attention(self, q, keys, values, bias, scale):
        """One query per sequence over its own length: two batched matrix products. torch's
        fused attention with a mask was twice as slow for 8 sequences on this CPU."""
        n, group = q.shape[0], self.heads // self.kv_heads
        grouped = q.reshape(n, self.kv_heads, group, self.head_dim)  # query heads sharing a kv head
        scores = torch.matmul(grouped, keys.transpose(-1, -2)) * scale + bias
        return torch.matmul(scores.softmax(dim=-1), values)

    def decode(self, cache: KVCache, slots: Sequence[int], tokens: Sequence[int],
               positions: Sequence[int]) -> torch.Tensor:
        """One step for several sequences at once: token `tokens[i]` at position
        `positions[i]` of slot `slots[i]`. Returns the final-norm hidden states (n, hidden)."""
        n = len(slots)
        x = self.embed[torch.tensor(tokens)]
        pos = torch.tensor(positions)
        cos, sin = self._cos[pos][:, None, :], self._sin[pos][:, None, :]
        scale = self.head_dim ** -0.5
        gqa = self.kv_heads != self.heads
        span = max(positions) + 1
        slot_index = torch.tensor(slots)
        contiguous = list(slots) == list(range(slots[0], slots[0] + n))
        bias = None  # several lengths: an additive mask, one row per sequence
        if n > 1 or positions[0] + 1 != span:
            bias = torch.zeros(n, 1, 1, span).masked_fill(
                (torch.arange(span)[None, :] > pos[:, None])[:, None, None, :], float("-inf"))
        kind = self.decode_weights if n == 1 else self.batch_weights
        for index, layer in enumerate(self.layers):
            h = self._norm(x, layer.norm1)
            q, k, v = self._split_qkv(layer.projection("qkv", kind)(h))  # (n, heads, head_dim)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            keys, values = cache.k[index], cache.v[index]
            keys[slot_index, :, pos] = k
            values[slot_index, :, pos] = v
            if contiguous:  # a view: no copy of the cache
                keys, values = keys[slots[0]:slots[0] + n, :, :span], values[slots[0]:slots[0] + n, :, :span]
            else:
                keys, values = keys[slot_index, :, :span], values[slot_index, :, :span]
            if bias is None:
                attn = F.scaled_dot_product_attention(q[:, :, None], keys, values, scale=scale, enable_gqa=gqa)
            else:
                attn = self._masked_attention(q, keys, values, bias, scale)
            attn = attn.reshape(n, -1)
            x = x + layer.projection("o", kind)(attn)
            gate, up = layer.projection("gate_up", kind)(self._norm(x, layer.norm2)).chunk(2, dim=-1)
            x = x + layer.projection("down", kind)(F.silu(gate) * up)
        return self._norm(x, self.final_norm)
