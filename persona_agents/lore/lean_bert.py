"""BERT and MPNet encoders in plain torch, for the plain sentence embedders
(all-MiniLM-L6-v2; all-mpnet-base-v2, the event matcher's).

`PlainSentenceEncoder` used transformers' `AutoModel`, whose import costs about 2 s of a
start on 2 cores for a 6-layer encoder that runs in milliseconds. `LeanBert` computes the
same forward as transformers' `BertModel` (absolute positions, GELU, post-norm layers,
padding masked out of attention), from the folder's safetensors and config.json; the
tokenizer is the folder's tokenizer.json through the `tokenizers` library.
`LeanMPNet` does the same for transformers' `MPNetModel`. `lean_bert_reason` says why a
folder is not read this way; the encoder then uses transformers as before.
tests/test_lore_plain_encoder.py and tests/test_embedded_mpnet.py compare the vectors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..fileutil import read_json


def _config(folder: Path) -> dict[str, Any]:
    return read_json(folder / "config.json")


def lean_bert_reason(folder: Path) -> str | None:
    if not all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json")):
        return "no config.json, model.safetensors and tokenizer.json"
    try:
        config = _config(folder)
    except (OSError, ValueError) as exc:
        return f"unreadable config.json ({exc})"
    if config.get("model_type") not in ("bert", "mpnet"):
        return f"model type '{config.get('model_type')}'"
    if config.get("hidden_act") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        return "not plain BERT or MPNet (activation or position embeddings)"
    return None


def lean_encoder(folder: Path) -> "LeanBert":
    """The folder's encoder in plain torch: `LeanMPNet` for an MPNet (all-mpnet-base-v2, the
    event matcher's), else `LeanBert`. Call it where `lean_bert_reason` gave None."""
    return LeanMPNet(folder) if _config(folder).get("model_type") == "mpnet" else LeanBert(folder)


class LeanBert:
    """`last_hidden_state` of a BERT encoder for token ids and an attention mask."""

    prefix = "bert."  # where a checkpoint saved from a task model keeps the encoder
    #: Each layer's attention weights, by their names in the checkpoint.
    attention_weights = {"query": "attention.self.query", "key": "attention.self.key",
                         "value": "attention.self.value", "output": "attention.output.dense",
                         "norm": "attention.output.LayerNorm"}

    def __init__(self, folder: Path):
        from safetensors.torch import load_file

        config = _config(folder)
        self.heads, self.eps = int(config["num_attention_heads"]), float(config.get("layer_norm_eps", 1e-12))
        self.max_position_embeddings = int(config.get("max_position_embeddings", 512))
        self.hidden_size = int(config["hidden_size"])
        state = load_file(str(folder / "model.safetensors"))
        prefix = self.prefix if f"{self.prefix}embeddings.word_embeddings.weight" in state else ""
        self.w = {name[len(prefix):]: t.float() for name, t in state.items() if name.startswith(prefix)}
        self.layers = int(config["num_hidden_layers"])

    def _ln(self, x, name):
        return F.layer_norm(x, (x.shape[-1],), self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _dense(self, x, name):
        return F.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        w, length = self.w, input_ids.shape[1]
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        x = (F.embedding(input_ids, w["embeddings.word_embeddings.weight"])
             + w["embeddings.position_embeddings.weight"][:length]
             + F.embedding(types, w["embeddings.token_type_embeddings.weight"]))
        x = self._ln(x, "embeddings.LayerNorm")
        return self._layers(x, _mask_bias(attention_mask))

    def _layers(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The post-norm layers; `bias` is added to every layer's attention scores."""
        batch, length, hidden = x.shape
        head_dim = hidden // self.heads
        names = self.attention_weights

        def split(t):  # (batch, length, hidden) -> (batch, heads, length, head_dim)
            return t.view(batch, length, self.heads, head_dim).transpose(1, 2)

        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (split(self._dense(x, f"{p}.{names[part]}")) for part in ("query", "key", "value"))
            scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + bias
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, hidden)
            x = self._ln(self._dense(context, f"{p}.{names['output']}") + x, f"{p}.{names['norm']}")
            inner = F.gelu(self._dense(x, f"{p}.intermediate.dense"))
            x = self._ln(self._dense(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x


def _mask_bias(attention_mask: torch.Tensor) -> torch.Tensor:
    """Additive mask as transformers builds it: the dtype's minimum on padded keys."""
    return (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


class LeanMPNet(LeanBert):
    """`last_hidden_state` of an MPNet encoder, as transformers' `MPNetModel` computes it:
    BERT's post-norm layers with no token types, positions counted from the padding id
    (as RoBERTa's), and a learnt bias per head for each bucket of relative distance added to
    every layer's attention scores."""

    prefix = "mpnet."
    attention_weights = {"query": "attention.attn.q", "key": "attention.attn.k", "value": "attention.attn.v",
                         "output": "attention.attn.o", "norm": "attention.LayerNorm"}

    def __init__(self, folder: Path):
        super().__init__(folder)
        config = _config(folder)
        self.pad = int(config.get("pad_token_id", 1))
        self.buckets = int(config.get("relative_attention_num_buckets", 32))

    def _bucket(self, relative: torch.Tensor, max_distance: int = 128) -> torch.Tensor:
        # transformers' MPNetEncoder.relative_position_bucket: half the buckets each way,
        # exact up to a quarter of them, then logarithmic up to max_distance.
        half = self.buckets // 2
        n = -relative
        bucket = (n < 0).long() * half
        n = n.abs()
        exact = half // 2
        large = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                         * (half - exact)).long()
        return bucket + torch.where(n < exact, n, large.clamp(max=half - 1))

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        w, length = self.w, input_ids.shape[1]
        real = input_ids.ne(self.pad).long()
        positions = torch.cumsum(real, dim=1) * real + self.pad
        x = F.embedding(input_ids, w["embeddings.word_embeddings.weight"]) + F.embedding(
            positions, w["embeddings.position_embeddings.weight"])
        x = self._ln(x, "embeddings.LayerNorm")
        steps = torch.arange(length)
        # (heads, query, key): the learnt bias for each key's distance from the query
        relative = F.embedding(self._bucket(steps[None, :] - steps[:, None]),
                               w["encoder.relative_attention_bias.weight"]).permute(2, 0, 1)
        return self._layers(x, relative[None] + _mask_bias(attention_mask))


class LeanBertTokenizer:
    """tokenizer.json with the encoder's padding and truncation: ids, mask and type ids."""

    def __init__(self, folder: Path, max_length: int):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        pads = [self._tokenizer.token_to_id(token) for token in ("[PAD]", "<pad>")]
        self._pad = next((pad for pad in pads if pad is not None), 0)

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        longest = max(len(e.ids) for e in encoded)
        ids = torch.full((len(texts), longest), self._pad, dtype=torch.long)
        mask = torch.zeros((len(texts), longest), dtype=torch.long)
        types = torch.zeros((len(texts), longest), dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, :len(e.ids)] = torch.tensor(e.ids)
            mask[row, :len(e.ids)] = 1
            types[row, :len(e.ids)] = torch.tensor(e.type_ids)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
