"""A BERT encoder in plain torch, for the plain sentence embedders (all-MiniLM-L6-v2).

`PlainSentenceEncoder` used transformers' `AutoModel`, whose import costs about 2 s of a
start on 2 cores for a 6-layer encoder that runs in milliseconds. `LeanBert` computes the
same forward as transformers' `BertModel` (absolute positions, GELU, post-norm layers,
padding masked out of attention), from the folder's safetensors and config.json; the
tokenizer is the folder's tokenizer.json through the `tokenizers` library.
`lean_bert_reason` says why a folder is not read this way; the encoder then uses
transformers as before. tests/test_lore_plain_encoder.py compares the vectors.
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
    if config.get("model_type") != "bert":
        return f"model type '{config.get('model_type')}'"
    if config.get("hidden_act") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        return "not plain BERT (activation or position embeddings)"
    return None


class LeanBert:
    """`last_hidden_state` of a BERT encoder for token ids and an attention mask."""

    def __init__(self, folder: Path):
        from safetensors.torch import load_file

        config = _config(folder)
        self.heads, self.eps = int(config["num_attention_heads"]), float(config.get("layer_norm_eps", 1e-12))
        self.max_position_embeddings = int(config.get("max_position_embeddings", 512))
        self.hidden_size = int(config["hidden_size"])
        state = load_file(str(folder / "model.safetensors"))
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in state else ""
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
        batch, _, hidden = x.shape
        head_dim = hidden // self.heads
        # Additive mask as transformers builds it: the dtype's minimum on padded keys.
        bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        def split(t):  # (batch, length, hidden) -> (batch, heads, length, head_dim)
            return t.view(batch, length, self.heads, head_dim).transpose(1, 2)

        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q = split(self._dense(x, f"{p}.attention.self.query"))
            k = split(self._dense(x, f"{p}.attention.self.key"))
            v = split(self._dense(x, f"{p}.attention.self.value"))
            scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + bias
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, hidden)
            x = self._ln(self._dense(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            inner = F.gelu(self._dense(x, f"{p}.intermediate.dense"))
            x = self._ln(self._dense(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x


class LeanBertTokenizer:
    """tokenizer.json with the encoder's padding and truncation: ids, mask and type ids."""

    def __init__(self, folder: Path, max_length: int):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        pad = self._tokenizer.token_to_id("[PAD]")
        self._pad = pad if pad is not None else 0

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
