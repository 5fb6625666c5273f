"""Adapters merged into their base, cached: what `load_adapter` needs at start-up, without peft.

Merging a LoRA adapter through peft costs about 2 s of a process's start on 2 cores (the
import alone pulls in bitsandbytes). What the merge changes is small: the weights of the
LoRA target modules and the embedding rows of the prompt markers (peft's trainable
tokens). The first load writes those tensors, with the LoRA factors the fast engine's
quantized weights keep apart, to `<cache>/merged/<key>.safetensors`; later loads write
them into the freshly loaded base directly.

The key hashes the adapter's files, the base model's fingerprint (architecture and an
embedding checksum) and the dtype, so a retrained adapter or another base never reads a
stale entry. Adapters that change anything else (`modules_to_save`, trainable rows of
other matrices) are not cached: they always go through peft.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ..fileutil import atomic_write
from ..models import cache_dir

log = logging.getLogger("persona_agents.multihead")

FORMAT = 1
_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json")


def cacheable(adapter_dir: Path) -> bool:
    """Whether the merge changes only LoRA targets and embedding rows."""
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    tokens = config.get("trainable_token_indices") or {}
    return (config.get("peft_type") == "LORA" and not config.get("modules_to_save")
            and set(tokens) <= {"embed_tokens"} and not config.get("use_dora"))


def has_entries() -> bool:
    """Whether any merged adapter is cached (a first start has none: it merges through peft)."""
    folder = cache_dir() / "merged"
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def cache_path(adapter_dir: Path, fingerprint: dict[str, Any], dtype: str) -> Path:
    digest = hashlib.sha256(json.dumps({"format": FORMAT, "base": fingerprint, "dtype": dtype},
        sort_keys=True).encode())
    for name in _ADAPTER_FILES:
        file = adapter_dir / name
        if file.is_file():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    return cache_dir() / "merged" / f"{digest.hexdigest()[:24]}.safetensors"


def _embedding_rows(adapter_dir: Path, base_rows: int, rows_now: int) -> list[int]:
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    trained = (config.get("trainable_token_indices") or {}).get("embed_tokens") or []
    return sorted(set(trained) | set(range(base_rows, rows_now)))


def save(path: Path, adapter_dir: Path, model, low_rank: dict, base_rows: int) -> None:
    """Write the merged model's changed tensors (after `merge_and_unload`)."""
    import torch
    from safetensors.torch import save as save_bytes

    names = {module: name for name, module in model.named_modules()}
    tensors: dict[str, torch.Tensor] = {}
    scalings: dict[str, float] = {}
    for module, (a, b, scaling) in low_rank.items():
        name = names[module]
        tensors[f"weight/{name}"] = module.weight.detach().contiguous()
        tensors[f"lora_a/{name}"], tensors[f"lora_b/{name}"] = a.contiguous(), b.contiguous()
        scalings[name] = scaling
    embedding = model.get_input_embeddings().weight
    rows = _embedding_rows(adapter_dir, base_rows, embedding.shape[0])
    tensors["embed_rows/index"] = torch.tensor(rows, dtype=torch.long)
    tensors["embed_rows/values"] = embedding.detach()[rows].contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, save_bytes(tensors, metadata={"format": str(FORMAT), "scalings": json.dumps(scalings)}))


def apply(path: Path, model) -> dict | None:
    """Write a cached merge into `model` (already resized to the adapter's tokenizer);
    returns the LoRA factors ({Linear: (A, B, scaling)}), or None if there is no usable entry."""
    import torch
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            if metadata.get("format") != str(FORMAT):
                return None
            scalings = json.loads(metadata["scalings"])
            tensors = {key: file.get_tensor(key) for key in file.keys()}
        embedding = model.get_input_embeddings().weight
        rows, values = tensors["embed_rows/index"], tensors["embed_rows/values"]
        # Look everything up before writing anything, so a bad entry leaves the model as it was.
        updates = []
        for name, scaling in scalings.items():
            module, weight = model.get_submodule(name), tensors[f"weight/{name}"]
            if weight.shape != module.weight.shape:
                return None
            updates.append((module, weight, (tensors[f"lora_a/{name}"], tensors[f"lora_b/{name}"], float(scaling))))
        if int(rows.max()) >= embedding.shape[0] or values.shape != (len(rows), embedding.shape[1]):
            return None
    except Exception as exc:  # noqa: BLE001 - a damaged entry must never stop a load: merge again
        log.warning("ignoring the merged-adapter cache %s: %s", path, exc)
        return None
    with torch.no_grad():
        for module, weight, _ in updates:
            module.weight.copy_(weight)
        embedding[rows] = values.to(embedding.dtype)
    return {module: factors for module, _, factors in updates}

