"""Quantized weights packed once and kept on disk, so a process starts without repacking.

Packing the embedded model's decode weights (int4 groups for the layers, int8 rows for
the output matrix) took about 0.8 s of each start on 2 cores. Each packed matrix is
stored under `<cache>/packed/` by a fingerprint of the float weights it packs: their
shape and the product with a fixed random vector, which any change to the weights
moves, together with the torch version and the layout version. A retrained adapter or
another model therefore packs afresh, and a stale entry is never read. Files are written
atomically; a damaged one is packed again.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import torch

from ..fileutil import atomic_write
from ..models import cache_dir

log = logging.getLogger("persona_agents.fastpath")

LAYOUT = 1
_probe: torch.Tensor | None = None


def fingerprint(weight: torch.Tensor) -> str:
    global _probe
    cols = weight.shape[1]
    if _probe is None or _probe.shape[0] < cols:
        _probe = torch.randn(max(cols, 8192), generator=torch.Generator().manual_seed(20261201))
    digest = hashlib.sha256(f"{LAYOUT}|{torch.__version__}|{tuple(weight.shape)}".encode())
    digest.update(torch.mv(weight.detach().float(), _probe[:cols]).numpy().tobytes())
    digest.update(weight.detach()[:, :8].float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def cached(kind: str, weight: torch.Tensor, pack: Callable[[torch.Tensor], dict[str, torch.Tensor]],
           folder: Path | None = None) -> dict[str, torch.Tensor]:
    """`pack(weight)` (a dict of tensors), read from the cache when it was packed before."""
    from safetensors.torch import load_file, save

    folder = folder or cache_dir() / "packed"
    path = folder / f"{kind}-{fingerprint(weight)}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a damaged entry is packed again
            log.warning("ignoring the packed-weights cache %s: %s", path, exc)
    tensors = pack(weight)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, save({k: v.contiguous() for k, v in tensors.items()}))
    except OSError as exc:  # a read-only cache only costs the next start its speed
        log.warning("could not cache packed weights in %s: %s", folder, exc)
    return tensors
