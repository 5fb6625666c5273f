"""A tokenizer.json read by the `tokenizers` library alone, for the fast start.

transformers' `AutoTokenizer` costs about a second of imports on 2 cores; the generate
steps use a handful of its methods on the sectioned prompt path: encode a prompt, decode
ids, look tokens up, list the special tokens. `LeanTokenizer` answers those from the
folder's `tokenizer.json` and `tokenizer_config.json` with the same results (tests compare
them with `AutoTokenizer` on real prompts). Anything else (a chat template, padding
options...) is handed to a transformers tokenizer loaded on first use, so nothing is lost.

`lean_tokenizer_reason` says why a folder is not read this way (no tokenizer.json, a
config that changes encoding: added BOS/EOS, lower-casing, cleaned-up spaces...).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..fileutil import read_json

_SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# tokenizer_config.json keys that change how text is encoded or decoded beyond tokenizer.json.
_CHANGES_ENCODING = ("add_bos_token", "add_eos_token", "do_lower_case", "clean_up_tokenization_spaces",
                     "add_prefix_space", "legacy", "split_special_tokens")


def _config(folder: Path) -> dict[str, Any]:
    return read_json(folder / "tokenizer_config.json")


def lean_tokenizer_reason(folder: Path) -> str | None:
    if not (folder / "tokenizer.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        return f"no tokenizer.json and tokenizer_config.json in {folder}"
    try:
        config = _config(folder)
    except (OSError, ValueError) as exc:
        return f"unreadable tokenizer_config.json ({exc})"
    if config.get("tokenizer_class") not in ("TokenizersBackend", "PreTrainedTokenizerFast", "GPT2Tokenizer"):
        return f"tokenizer class {config.get('tokenizer_class')}"
    changed = [key for key in _CHANGES_ENCODING if config.get(key)]
    return f"tokenizer options {', '.join(changed)}" if changed else None


def _content(token: Any) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


class LeanTokenizer:
    """The subset of a transformers fast tokenizer the generate steps call."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self._tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        config = _config(self.folder)
        for attribute in _SPECIAL_ATTRIBUTES:
            setattr(self, attribute, _content(config.get(attribute)))
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        self._extra_special = [_content(t) for t in (extra.values() if isinstance(extra, dict) else extra)]
        self._full: Any = None
        self._full_lock = threading.Lock()

    # -- what the generate steps use -------------------------------------------------------

    def __call__(self, text: str, return_tensors: str | None = None, **kwargs):
        if kwargs:
            return self.transformers_tokenizer()(text, return_tensors=return_tensors, **kwargs)
        ids = self._tokenizer.encode(text, add_special_tokens=True).ids
        if return_tensors != "pt":
            return {"input_ids": ids, "attention_mask": [1] * len(ids)}
        import torch

        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}

    def decode(self, ids, skip_special_tokens: bool = False, **kwargs) -> str:
        if kwargs:
            return self.transformers_tokenizer().decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        found = self._tokenizer.token_to_id(token)
        return found if found is not None else self.unk_token_id

    def _id(self, token: str | None) -> int | None:
        return self._tokenizer.token_to_id(token) if token is not None else None

    @property
    def bos_token_id(self):
        return self._id(self.bos_token)

    @property
    def eos_token_id(self):
        return self._id(self.eos_token)

    @property
    def unk_token_id(self):
        return self._id(self.unk_token)

    @property
    def pad_token_id(self):
        return self._id(self.pad_token)

    @property
    def all_special_tokens(self) -> list[str]:
        named = [getattr(self, a) for a in _SPECIAL_ATTRIBUTES if getattr(self, a) is not None]
        return list(dict.fromkeys([*named, *self._extra_special]))

    def get_added_vocab(self) -> dict[str, int]:
        return {token.content: index for index, token in sorted(self._tokenizer.get_added_tokens_decoder().items())}

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    # -- everything else -------------------------------------------------------------------

    def transformers_tokenizer(self):
        """transformers' tokenizer for the same folder, loaded on first use."""
        with self._full_lock:
            if self._full is None:
                from transformers import AutoTokenizer

                self._full = AutoTokenizer.from_pretrained(self.folder)
            return self._full

    def __getattr__(self, name: str):
        # Only reached for attributes this class does not define (apply_chat_template, ...).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.transformers_tokenizer(), name)
