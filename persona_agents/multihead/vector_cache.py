"""`<STATE>` vectors kept on disk, so a heads refit over data seen before takes seconds.

A heads refit (refit.py) needs one prompt pass per training example: 35 minutes for
4,000 turns on 2 CPU cores, although the vectors only change when the model does. Each
vector is stored under `<cache>/state-vectors/<model>.pt` by:

- the model: a fingerprint of the adapter's files (all but its heads) and of the base
  it records, so a retrained adapter or another base never reads another's vectors;
- the prompt: a hash of its token ids up to `<STATE>`, so a changed prompt format,
  history length, lore or persona makes a new entry.

Refits with other settings, another mix of data, or one NPC held out (issue 26's folds)
then reuse every vector already computed. Writes are atomic; a damaged file is ignored
and rebuilt. `PERSONA_AGENTS_VECTOR_CACHE=off` turns the cache off; set to a folder, it
puts the cache there.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from array import array
from pathlib import Path
from typing import Sequence

import torch

from ..fileutil import atomic_write, file_lock
from ..models import cache_dir

log = logging.getLogger("persona_agents.multihead")

LAYOUT = 1
CACHE_ENV = "PERSONA_AGENTS_VECTOR_CACHE"


#: Files of an adapter folder that do not change its model: a heads refit rewrites them.
#: The event matcher (matcher.py) reads no <STATE> vector either.
NOT_THE_MODEL = frozenset({"heads.safetensors", "multihead.json", "README.md", "matcher.safetensors", "matcher.json"})


def adapter_fingerprint(adapter_dir: Path, meta: dict) -> str:
    """A digest of what makes the scoring model: the base the adapter records (name,
    architecture, embedding checksum) and every file of the adapter folder except the
    heads and their metadata. From the files, not the loaded weights: the same adapter
    loaded through peft or from the merged-model cache must share its vectors."""
    digest = hashlib.sha256(f"{LAYOUT}|{torch.__version__}|float32".encode())
    digest.update(json.dumps(meta.get("base", {}), sort_keys=True).encode())
    for path in sorted(p for p in Path(adapter_dir).iterdir() if p.is_file() and p.name not in NOT_THE_MODEL):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def prompt_key(ids: Sequence[int]) -> str:
    return hashlib.sha1(array("q", ids).tobytes()).hexdigest()


def _setting() -> str:
    return os.environ.get(CACHE_ENV, "").strip()


def enabled() -> bool:
    return _setting().lower() not in {"off", "0", "false", "no"}


def default_folder() -> Path:
    return Path(_setting()).expanduser() if _setting() else cache_dir() / "state-vectors"


class StateVectorCache:
    """The vectors one model computed, by prompt; `save()` writes the new ones."""

    def __init__(self, path: Path):
        self.path = path
        self.vectors: dict[str, torch.Tensor] = {}
        self._dirty = False
        if path.is_file():
            try:
                self.vectors = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt
                log.warning("ignoring the <STATE> vector cache %s: %s", path, exc)

    @classmethod
    def for_adapter(cls, adapter_dir: Path, meta: dict, folder: Path | None = None) -> "StateVectorCache | None":
        """The cache of the vectors an adapter's model computes (loaded in float32, as
        scoring loads it); None when the cache is turned off."""
        if not enabled():
            return None
        folder = folder or default_folder()
        return cls(folder / f"{adapter_fingerprint(adapter_dir, meta)}.pt")

    def get(self, ids: Sequence[int]) -> torch.Tensor | None:
        return self.vectors.get(prompt_key(ids))

    def put(self, ids: Sequence[int], vector: torch.Tensor) -> None:
        self.vectors[prompt_key(ids)] = vector
        self._dirty = True

    def __len__(self) -> int:
        return len(self.vectors)

    def save(self) -> None:
        """Write the vectors added since loading, merged with what another process saved
        meanwhile; a cache that cannot be written costs only the next refit's speed."""
        if not self._dirty:
            return
        try:
            with file_lock(self.path.with_suffix(".lock")):
                if self.path.is_file():
                    try:
                        on_disk = torch.load(self.path, map_location="cpu", weights_only=True)
                        self.vectors = {**on_disk, **self.vectors}
                    except Exception:  # noqa: BLE001 - overwritten below
                        pass
                buffer = io.BytesIO()
                torch.save(self.vectors, buffer)
                atomic_write(self.path, buffer.getvalue())
            self._dirty = False
        except OSError as exc:
            log.warning("could not save the <STATE> vector cache %s: %s", self.path, exc)
