"""A trained multi-head adapter on disk, and loading it back.

    <dir>/adapter_config.json, adapter_model.safetensors   the peft LoRA adapter, with the
                                                           trained marker embedding rows
    <dir>/heads.safetensors                                the state heads
    <dir>/tokenizer.json, tokenizer_config.json, ...       the tokenizer, markers included
    <dir>/multihead.json                                   flag vocabulary, thresholds, base
                                                           model, prompt format, data hashes,
                                                           metrics (written last: a folder
                                                           without it is incomplete)

Loading checks that the base model is the one the adapter was trained on (architecture
and a checksum of its embeddings) and that the flag vocabulary matches, with errors that
say what differs and what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import AdapterError
from ..markers import section_markers
from ..models import resolve_model
from ..prompt_format import SECTIONED_FORMAT_VERSION, SECTIONED_FORMAT_VERSIONS
from . import merged_cache
from .heads import HeadsConfig, StateHeads

log = logging.getLogger("persona_agents.multihead")

METADATA_FILE = "multihead.json"
HEADS_FILE = "heads.safetensors"
FORMAT_VERSION = 1
_BASE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "embedding_rows", "embedding_checksum")


def thresholds_version(thresholds: dict[str, float]) -> str:
    """A short id of a set of thresholds (shown in each turn's meta)."""
    return hashlib.sha256(json.dumps(thresholds, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class AdapterBundle:
    """A base model with the adapter applied (merged for inference), its tokenizer, the
    heads and the metadata."""

    path: Path
    model: Any
    tokenizer: Any
    heads: StateHeads
    meta: dict[str, Any]
    #: LoRA factors merged into `model` ({base Linear: (A, B, scaling)}), for the fast path
    low_rank: dict = field(default_factory=dict)

    @property
    def flags(self) -> list[str]:
        return list(self.meta["flags"])

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.meta["thresholds"])

    @property
    def history_turns(self) -> int:
        return int(self.meta.get("history_turns", 6))

    @property
    def prompt_version(self) -> int:
        """The sectioned prompt version the adapter was trained on (read_metadata checked it)."""
        return int(self.meta["prompt_format_version"])


def save_artifacts(out_dir: str | Path, lm, heads: StateHeads, tokenizer, meta: dict[str, Any]) -> dict[str, Any]:
    """Write the adapter folder; `meta` must hold flags, thresholds and base. Returns the
    metadata as written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / METADATA_FILE).unlink(missing_ok=True)
    # Only the trained rows of the resized embedding are saved (peft's trainable tokens);
    # the full 49k-row matrix would make the adapter 200 MB instead of a few MB.
    lm.save_pretrained(out, save_embedding_layers=False)
    (out / "README.md").unlink(missing_ok=True)  # peft's empty model card; multihead.json says it all
    save_heads(out, heads)
    tokenizer.save_pretrained(out)
    return write_metadata(out, {**meta, "heads": heads.config.to_dict()})


def save_heads(out_dir: str | Path, heads: StateHeads) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()},
        str(Path(out_dir) / HEADS_FILE))


def write_metadata(out_dir: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """(Re)write multihead.json, e.g. after calibrating the thresholds on the saved adapter."""
    full = {
        "format_version": FORMAT_VERSION,
        "prompt_format": "sectioned",
        "prompt_format_version": SECTIONED_FORMAT_VERSION,  # a new adapter's; `meta` keeps an older one's
        "state_token": "<STATE>",
        **meta,
        "thresholds_version": thresholds_version(meta["thresholds"]),
    }
    path = Path(out_dir) / METADATA_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return full


def read_metadata(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir)
    hint = "Train one with `persona-agents train --data FILE --out DIR`, or fix the path."
    if not path.is_dir():
        raise AdapterError(f"Adapter folder {path} does not exist. {hint}")
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise AdapterError(f"{path} is not a multi-head adapter: {METADATA_FILE} is missing "
                           f"(an interrupted training run writes it last). {hint}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise AdapterError(f"{meta_path}: invalid JSON ({exc}). {hint}") from exc
    missing = [k for k in ("flags", "thresholds", "base", "heads") if k not in meta]
    missing += [f for f in (HEADS_FILE, "adapter_config.json") if not (path / f).is_file()]
    if missing:
        raise AdapterError(f"{path}: incomplete adapter, missing {', '.join(missing)}. {hint}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise AdapterError(f"{path} was written by a newer persona-agents (format {meta['format_version']}); upgrade.")
    if meta.get("prompt_format_version") not in SECTIONED_FORMAT_VERSIONS:
        raise AdapterError(
            f"{path} was trained on sectioned prompt format version {meta.get('prompt_format_version')}; this "
            f"persona-agents renders versions {', '.join(map(str, SECTIONED_FORMAT_VERSIONS))}. Retrain the adapter "
            "(make adapter) or upgrade persona-agents.")
    return meta


def check_flags(meta: dict[str, Any], expected: Sequence[str] | None, where: Path) -> None:
    flags = list(meta["flags"])
    if meta["heads"].get("num_flags") != len(flags):
        raise AdapterError(f"{where}: the flag head has {meta['heads'].get('num_flags')} outputs but "
                           f"{METADATA_FILE} lists {len(flags)} flags; the adapter is corrupt, retrain it.")
    if sorted(meta["thresholds"]) != sorted(flags):
        raise AdapterError(f"{where}: thresholds are not given for exactly the flags {', '.join(flags)}.")
    if expected is not None and list(expected) != flags:
        raise AdapterError(
            f"{where} was trained for the flag vocabulary [{', '.join(flags)}], not [{', '.join(expected)}]. "
            "Use the vocabulary the adapter was trained with, or retrain with --flags.")


def check_base(meta: dict[str, Any], fingerprint: dict[str, Any], ref: str, where: Path) -> None:
    recorded = meta["base"]
    differs = [f"{k} {fingerprint.get(k)!r} (trained on {recorded.get(k)!r})"
               for k in _BASE_KEYS if k in recorded and recorded.get(k) != fingerprint.get(k)]
    if differs:
        raise AdapterError(
            f"{where} was trained on base model '{recorded.get('name')}', but model '{ref}' differs: "
            f"{'; '.join(differs)}. Use `model: {recorded.get('name')}` (or leave `model` out), or train an "
            f"adapter for this base with `persona-agents train --base {ref}`.")


def _lean_parts(path: Path, location: str, dtype: str, merge: bool):
    """(skeleton model, lean tokenizer) when the fast engine can start without transformers:
    a plain llama base, a plain tokenizer, and a merged-adapter cache entry to apply (the
    first start merges through peft and writes it). None otherwise."""
    from persona_agents.fastpath.lean_tokenizer import LeanTokenizer, lean_tokenizer_reason
    from persona_agents.fastpath.skeleton import load_skeleton, skeleton_reason

    folder = Path(location)
    if not (merge and folder.is_dir() and merged_cache.cacheable(path) and merged_cache.has_entries()):
        return None
    if skeleton_reason(folder, dtype) is not None or lean_tokenizer_reason(path) is not None:
        return None
    return load_skeleton(folder), LeanTokenizer(path)


def load_adapter(adapter_dir: str | Path, model_ref: str | None = None, dtype: str = "float32", merge: bool = True,
                 expected_flags: Sequence[str] | None = None, lean: bool = False) -> AdapterBundle:
    """Base + adapter (+ merged unless `merge=False`, which keeps peft's disable_adapter)
    + heads, all checked against the adapter's metadata.

    `lean=True` (for the fast engine only): where it can, the base is a weights-only
    `SkeletonCausalLM` and the tokenizer a `LeanTokenizer`, read without importing
    transformers (see fastpath/skeleton.py); the bundle's model then has no forward."""
    import torch

    from .modeling import base_fingerprint, stored_embedding_rows

    path = Path(adapter_dir)
    meta = read_metadata(path)
    check_flags(meta, expected_flags, path)
    ref = model_ref or meta["base"]["name"]
    location, name = resolve_model(ref)
    try:
        parts = _lean_parts(path, location, dtype, merge) if lean else None
        if parts is not None:
            model, tokenizer = parts
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
            torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise AdapterError(f"Cannot load base model '{ref}' for adapter {path}: {exc}") from exc
    rows = None
    if model.get_input_embeddings().weight.dtype not in (torch.float32, torch.uint8):  # uint8: 4-bit packed
        rows = stored_embedding_rows(location)  # the checksum is of the float32 values as stored
    fingerprint = base_fingerprint(model, name, meta["base"].get("vocab_size", 0), rows)
    check_base(meta, fingerprint, ref, path)
    vocab = tokenizer.get_vocab()  # builds a 49k-entry dict on each call: once
    missing = [m for m in section_markers(int(meta["prompt_format_version"])) if m not in vocab]
    if missing:
        raise AdapterError(f"{path}: the tokenizer lacks the prompt markers {', '.join(missing)}; retrain the adapter.")
    base_rows = model.get_input_embeddings().weight.shape[0]
    # The marker rows are overwritten by the adapter's trained values, so no random init.
    resize_embeddings(model, len(tokenizer))
    entry = merged_cache.cache_path(path, fingerprint, dtype) if merge and merged_cache.cacheable(path) else None
    low_rank = merged_cache.apply(entry, model) if entry is not None else None
    if low_rank is not None:
        lm = model
    elif parts is not None:  # no usable cache entry for this adapter: the full load merges it
        return load_adapter(path, model_ref, dtype, merge, expected_flags, lean=False)
    else:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(model, str(path))
        low_rank = lora_factors(lm) if merge else {}
        if merge:
            # One plain model for inference: peft's trainable-tokens layer would rebuild the
            # 49k-row embedding matrix on every generated token.
            lm = lm.merge_and_unload()
            if entry is not None:
                try:
                    merged_cache.save(entry, path, lm, low_rank, base_rows)
                except OSError as exc:  # a read-only cache only costs the next start its speed
                    log.warning("could not cache the merged adapter in %s: %s", entry, exc)
    lm.eval()
    return AdapterBundle(path=path, model=lm, tokenizer=tokenizer, heads=load_heads(path, meta), meta=meta,
                         low_rank=low_rank)


def load_heads(adapter_dir: str | Path, meta: dict[str, Any]) -> StateHeads:
    """The adapter's state heads (eval mode), checked against its metadata."""
    from safetensors.torch import load_file

    path = Path(adapter_dir)
    heads = StateHeads(HeadsConfig(**meta["heads"]))
    try:
        result = heads.load_state_dict(load_file(str(path / HEADS_FILE)), strict=False)
    except RuntimeError as exc:
        raise AdapterError(f"{path / HEADS_FILE} does not match the heads in {METADATA_FILE}: {exc}") from exc
    # Heads saved before the refit existed have no standardisation buffers: identity.
    if result.unexpected_keys or set(result.missing_keys) - {"shift", "scale"}:
        raise AdapterError(f"{path / HEADS_FILE} does not match the heads in {METADATA_FILE}: missing "
                           f"{result.missing_keys}, unexpected {result.unexpected_keys}; retrain the adapter.")
    heads.eval()
    return heads


def resize_embeddings(model, rows: int) -> None:
    """Grow a tied embedding to `rows` with zero new rows (the adapter overwrites them).
    transformers' resize fills the whole new matrix with random values first, about 0.3 s
    of every start for SmolLM2's 49k rows; untied models still go through it."""
    import torch

    embedding = model.get_input_embeddings()
    old_rows, dim = embedding.weight.shape
    tied = getattr(model.config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None
    if rows == old_rows:
        return
    if not tied or rows < old_rows:
        model.resize_token_embeddings(rows, mean_resizing=False)
        return
    weight = torch.zeros(rows, dim, dtype=embedding.weight.dtype)
    weight[:old_rows] = embedding.weight.detach()
    model.set_input_embeddings(torch.nn.Embedding.from_pretrained(weight, freeze=False,
                                                                  padding_idx=embedding.padding_idx))
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    model.config.vocab_size = rows
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().vocab_size = rows


def lora_factors(peft_model) -> dict:
    """{base nn.Linear: (A, B, scaling)} of every LoRA layer, read before merging: the fast
    path's quantized decode weights keep these updates apart (see fastpath/decoder.py)."""
    factors = {}
    for module in peft_model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and "default" in getattr(module, "lora_A", {}):
            factors[module.base_layer] = (module.lora_A["default"].weight.detach().clone(),
                                          module.lora_B["default"].weight.detach().clone(),
                                          float(module.scaling["default"]))
    return factors
