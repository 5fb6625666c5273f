"""Sentence embeddings for the plainest sentence-transformers models, without importing it.

Importing sentence-transformers takes about 4.4 s on 2 cores (it pulls in scikit-learn,
peft and bitsandbytes), more than loading every model a sample NPC needs. Most sentence
embedders, the embedded all-MiniLM-L6-v2 among them, are a stack of three modules: a
transformers encoder, mean (or CLS) pooling over the attention mask, and optionally L2
normalisation. For a folder holding exactly such a stack, `PlainSentenceEncoder` runs it
without sentence-transformers (a plain BERT without transformers either: lean_bert.py);
anything else (other modules, prompts, other pooling modes)
returns None from `load_plain_encoder` and goes to sentence-transformers. The vectors
are the same as sentence-transformers' (tests/test_lore_plain_encoder.py compares them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fileutil import read_json as _read

_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
_POOLING_MODES = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                  "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                  "pooling_mode_lasttoken")


def plain_stack(folder: Path) -> dict[str, Any] | None:
    """The stack's settings when `folder` is Transformer + Pooling (+ Normalize), else None."""
    try:
        modules = sorted(_read(folder / "modules.json"), key=lambda m: m["idx"])
        types = [m["type"] for m in modules]
        if types not in ([_TRANSFORMER, _POOLING], [_TRANSFORMER, _POOLING, _NORMALIZE]) or modules[0]["path"]:
            return None
        pooling = _read(folder / modules[1]["path"] / "config.json")
        modes = [mode for mode in _POOLING_MODES if pooling.get(mode)]
        if (modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"])
                or pooling.get("include_prompt") is False):
            return None
        bert = _read(folder / "sentence_bert_config.json") if (folder / "sentence_bert_config.json").is_file() else {}
        st_config = folder / "config_sentence_transformers.json"
        if st_config.is_file() and (_read(st_config).get("prompts") or {}).get("query"):
            return None  # models that prepend prompts need sentence-transformers' handling
        return {"pooling": "mean" if modes == ["pooling_mode_mean_tokens"] else "cls",
                "normalize": types[-1] == _NORMALIZE, "max_seq_length": bert.get("max_seq_length"),
                "lower_case": bool(bert.get("do_lower_case")), "dimension": pooling.get("word_embedding_dimension")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


class PlainSentenceEncoder:
    """The three-module stack; `encode` takes sentence-transformers' arguments (those the
    lore code passes) and returns float32 numpy rows. A plain BERT or MPNet runs in
    `LeanBert` or `LeanMPNet` (no transformers import, see lean_bert.py); other encoders in
    transformers' AutoModel."""

    def __init__(self, folder: Path, settings: dict[str, Any]):
        from .lean_bert import LeanBertTokenizer, lean_bert_reason, lean_encoder

        self.settings = settings
        self.lean = lean_bert_reason(folder) is None
        # LeanBert and its tokenizer, or transformers' AutoModel and AutoTokenizer.
        self.model: Any
        self.tokenizer: Any
        if self.lean:
            self.model = lean_encoder(folder)
            positions, hidden = self.model.max_position_embeddings, self.model.hidden_size
            tokenizer_config = folder / "tokenizer_config.json"
            tokenizer_limit = _read(tokenizer_config).get("model_max_length") if tokenizer_config.is_file() else None
        else:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
            positions = getattr(self.model.config, "max_position_embeddings", 512)
            hidden = self.model.config.hidden_size
            tokenizer_limit = self.tokenizer.model_max_length
        limit = int(settings["max_seq_length"] or positions)
        self.max_length = min(limit, int(tokenizer_limit or limit))
        self.hidden_size = hidden
        if self.lean:
            self.tokenizer = LeanBertTokenizer(folder, self.max_length)

    def get_embedding_dimension(self) -> int:
        return int(self.settings["dimension"] or self.hidden_size)

    def _hidden(self, batch: list[str]):
        if self.lean:
            encoded = self.tokenizer(batch)
            return self.model(**encoded), encoded["attention_mask"]
        encoded = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return self.model(**encoded).last_hidden_state, encoded["attention_mask"]

    def encode(self, texts: list[str], batch_size: int = 32, normalize_embeddings: bool = False,
               convert_to_numpy: bool = True, show_progress_bar: bool = False):
        import torch

        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = texts[start:start + batch_size]
                if self.settings["lower_case"]:
                    batch = [t.lower() for t in batch]
                hidden, attention = self._hidden(batch)
                if self.settings["pooling"] == "mean":
                    mask = attention.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                else:
                    pooled = hidden[:, 0]
                if self.settings["normalize"] or normalize_embeddings:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                rows.append(pooled.float())
        return torch.cat(rows).numpy()


def load_plain_encoder(location: str) -> PlainSentenceEncoder | None:
    folder = Path(location)
    if not folder.is_dir():
        return None
    settings = plain_stack(folder)
    return PlainSentenceEncoder(folder, settings) if settings is not None else None
