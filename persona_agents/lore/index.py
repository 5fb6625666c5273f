"""The lore vector index: faiss on disk with a manifest, updated incrementally.

One index per (NPC folder, embedder) lives under the cache folder
(`<cache>/lore-index/<folder name>-<hash of its path>/<embedder>/`):

- `index.faiss`: an `IndexIDMap2` over an `IndexScalarQuantizer(fp16, inner product)`
  of normalised vectors, one int64 id per entry. A brute-force scan (no graph or
  clusters, so a scope filter of any size never loses recall) over half-size vectors:
  at 100,000 entries bench/lore_retrieval.py measured recall@5 of 0.999 against exact
  float32 search (fp16 rounding reorders near-ties) in under half its time;
- `manifest.json`: format version, NPC folder, embedder fingerprint, dimension, the
  sha256 of `index.faiss`, and per entry its faiss id and the sha256 of its text.

On each sync only entries whose text is new or changed are embedded; removed ones are
dropped. An index whose manifest is unreadable, of another format, folder, embedder or
dimension, or whose file does not match the manifest's hash or count is rebuilt with a
log message saying why; it is never used. Files are written to a temporary name and
renamed (`os.replace`), the index before the manifest, so a crash between the two leaves
a hash mismatch that the next sync detects. A file lock serialises processes.

The index holds vectors only: who may see an entry (scope, stage and gates) is decided
from the lore files and the turn at query time (`scope.py`), so a stale index can never
widen anyone's knowledge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, cast

from ..fileutil import atomic_write, file_lock
from .embedder import Embedder
from .entries import LoreCollection, LoreFolder

log = logging.getLogger("persona_agents.lore")

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
EMBED_BATCH = 32
_NO_INDEX = "there is no index yet"
INDEX_KIND = "IDMap2,SQfp16,IP"

#: progress(done, total) is called while entries are embedded (the CLI draws a bar).
Progress = Callable[[int, int], None]


def load_faiss():
    """The faiss module, limited to one OpenMP thread. Lore queries search a few thousand
    vectors at most, where threads buy nothing; and faiss brings its own OpenMP runtime,
    whose worker threads, once started, took CPU from generation: a decode step went from
    12 to 18 ms after one two-threaded search on this 2-core machine."""
    import faiss

    faiss.omp_set_num_threads(1)
    return faiss


def new_faiss_index(dimension: int) -> Any:
    """An empty index of the kind lore uses (the benchmark measures this same kind)."""
    faiss = load_faiss()

    quantizer = faiss.IndexScalarQuantizer(dimension, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexIDMap2(quantizer)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "x"


def index_dir(cache_dir: Path, npcs_dir: Path, embedder_name: str) -> Path:
    resolved = str(Path(npcs_dir).resolve())
    key = hashlib.sha256(resolved.encode("utf-8")).hexdigest()[:12]
    model_key = hashlib.sha256(embedder_name.encode("utf-8")).hexdigest()[:8]
    return (Path(cache_dir) / "lore-index" / f"{_slug(Path(resolved).name)}-{key}"
            / f"{_slug(embedder_name)[:40]}-{model_key}")


@dataclass(frozen=True)
class SyncReport:
    """What one sync did (the CLI prints it)."""

    path: Path
    entries: int
    embedded: int
    reused: int
    removed: int
    created: bool = False
    rebuilt_because: str | None = None


class LoreIndex:
    """Vectors of one lore folder for one embedder, kept in step with the files."""

    def __init__(self, folder: LoreFolder, embedder: Embedder, directory: Path, npcs_dir: Path):
        self.folder = folder
        self.embedder = embedder
        self.directory = Path(directory)
        self.npcs_dir = Path(npcs_dir).resolve()
        self.collection: LoreCollection | None = None
        self._index: Any = None  # faiss.IndexIDMap2
        self._faiss_ids: dict[str, int] = {}
        self._entry_ids: dict[int, str] = {}
        self._allowed: dict[Hashable, Allowed] = {}
        self._lock = threading.RLock()

    # -- keeping up with the files -------------------------------------------------
    def ensure_current(self) -> LoreCollection:
        """Sync if the lore files changed since the last sync (a stat per file otherwise)."""
        collection = self.folder.current()
        if collection is not self.collection:
            self.sync()
        assert self.collection is not None
        return self.collection

    def sync(self, rebuild: bool = False, progress: Progress | None = None) -> SyncReport:
        with self._lock, file_lock(self.directory / ".lock"):
            collection = self.folder.current()
            index, manifest, reason = (None, None, "a rebuild was asked for") if rebuild else self._read()
            created = reason == _NO_INDEX
            if index is None:
                if created:
                    log.info("Building the lore index for %s with %s...", self.npcs_dir, self.embedder.name)
                elif not rebuild:
                    log.warning("Lore index %s is not usable (%s); rebuilding it.", self.directory, reason)
                index, manifest = self._empty()
            # _read returns a manifest with every index it returns; _empty() made both otherwise.
            report = self._update(index, cast(dict[str, Any], manifest), collection, progress, created,
                                  None if created else reason)
            self.collection = collection
            return report

    def _empty(self) -> tuple[Any, dict[str, Any]]:
        manifest = {
            "format_version": FORMAT_VERSION,
            "npcs_dir": str(self.npcs_dir),
            "embedder": self.embedder.fingerprint,
            "dimension": self.embedder.dimension,
            "index": INDEX_KIND,
            "next_id": 0,
            "entries": {},
        }
        return new_faiss_index(self.embedder.dimension), manifest

    def _read(self) -> tuple[Any, dict[str, Any] | None, str | None]:
        """(index, manifest, None) when the files on disk can be trusted, else (None, None, why)."""
        faiss = load_faiss()
        import numpy as np

        manifest_path, index_path = self.directory / MANIFEST_FILE, self.directory / INDEX_FILE
        if not manifest_path.exists() and not index_path.exists():
            return None, None, _NO_INDEX
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return None, None, f"its manifest cannot be read: {exc}"
        if not isinstance(manifest, dict) or not isinstance(manifest.get("entries"), dict):
            return None, None, "its manifest is malformed"
        expected = {
            "format_version": FORMAT_VERSION,
            "npcs_dir": str(self.npcs_dir),
            "embedder": self.embedder.fingerprint,
            "dimension": self.embedder.dimension,
            "index": INDEX_KIND,
        }
        for key, want in expected.items():
            if manifest.get(key) != want:
                return None, None, f"it was built with {key} {manifest.get(key)!r}, this run needs {want!r}"
        try:
            data = index_path.read_bytes()
        except OSError as exc:
            return None, None, f"its index file cannot be read: {exc}"
        if hashlib.sha256(data).hexdigest() != manifest.get("index_sha256"):
            return None, None, f"{INDEX_FILE} does not match the hash in its manifest (corrupt or half-written)"
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype="uint8"))
        except RuntimeError as exc:
            return None, None, f"faiss cannot read {INDEX_FILE}: {str(exc).splitlines()[-1]}"
        if index.d != self.embedder.dimension or index.ntotal != len(manifest["entries"]):
            return None, None, (f"{INDEX_FILE} holds {index.ntotal} vectors of dimension {index.d}, "
                                "the manifest says otherwise")
        if not isinstance(index, faiss.IndexIDMap2):
            return None, None, f"{INDEX_FILE} is a {type(index).__name__}, expected IndexIDMap2"
        return index, manifest, None

    def _update(
        self,
        index: Any,
        manifest: dict[str, Any],
        collection: LoreCollection,
        progress: Progress | None,
        created: bool,
        rebuilt_because: str | None,
    ) -> SyncReport:
        faiss = load_faiss()
        import numpy as np

        stored: dict[str, dict[str, Any]] = manifest["entries"]
        wanted = {item.id: item for item in collection.items}
        stale = {eid for eid, rec in stored.items() if eid not in wanted or rec["sha256"] != wanted[eid].content_hash}
        fresh = [item for eid, item in wanted.items() if eid not in stored or eid in stale]
        removed = len(stale - set(wanted))
        if stale:
            index.remove_ids(faiss.IDSelectorBatch(np.array([stored[e]["id"] for e in stale], dtype="int64")))
            for eid in stale:
                del stored[eid]
        total = len(fresh)
        if progress:
            progress(0, total)
        for start in range(0, total, EMBED_BATCH):
            batch = fresh[start:start + EMBED_BATCH]
            vectors = self.embedder.encode([item.text for item in batch])
            ids = np.arange(manifest["next_id"], manifest["next_id"] + len(batch), dtype="int64")
            index.add_with_ids(vectors, ids)
            for item, faiss_id in zip(batch, ids):
                stored[item.id] = {"id": int(faiss_id), "sha256": item.content_hash}
            manifest["next_id"] += len(batch)
            if progress:
                progress(min(start + len(batch), total), total)
        if stale or fresh or created or rebuilt_because:
            self._save(index, manifest)
        self._index = index
        self._faiss_ids = {eid: rec["id"] for eid, rec in stored.items()}
        self._entry_ids = {fid: eid for eid, fid in self._faiss_ids.items()}
        self._allowed = {}
        return SyncReport(
            path=self.directory,
            entries=len(stored),
            embedded=len(fresh),
            reused=len(stored) - len(fresh),
            removed=removed,
            created=created,
            rebuilt_because=rebuilt_because,
        )

    def _save(self, index: Any, manifest: dict[str, Any]) -> None:
        faiss = load_faiss()

        data = faiss.serialize_index(index).tobytes()
        manifest["index_sha256"] = hashlib.sha256(data).hexdigest()
        manifest["count"] = int(index.ntotal)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(self.directory / INDEX_FILE, data)
            atomic_write(self.directory / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
        except OSError as exc:  # a read-only cache still serves this process from memory
            log.warning("Could not save the lore index to %s (%s); it will be rebuilt next time.", self.directory, exc)

    # -- searching -----------------------------------------------------------------
    def allowed(self, key: Hashable, entry_ids: Callable[[], Iterable[str]]) -> "Allowed":
        """The faiss filter for a set of entry ids, cached under `key` (an NPC's scope at a
        stage, which gated entries are open, and the lore files' signature), so a turn does
        not rebuild it."""
        faiss = load_faiss()
        import numpy as np

        with self._lock:
            cached = self._allowed.get(key)
            if cached is None:
                permitted = frozenset(e for e in entry_ids() if e in self._faiss_ids)
                ids = np.fromiter((self._faiss_ids[e] for e in permitted), dtype="int64", count=len(permitted))
                selector = faiss.IDSelectorBatch(ids)
                cached = Allowed(permitted, ids, selector, faiss.SearchParameters(sel=selector))
                if len(self._allowed) >= 512:
                    self._allowed.clear()
                self._allowed[key] = cached
            return cached

    def search(self, vector: Any, k: int, allowed: "Allowed | None") -> list[tuple[str, float]]:
        """The `k` best (entry id, cosine score) among the `allowed` entries (None: all).

        Filtering happens inside faiss (an IDSelector), before ranking; results are
        checked against `allowed` once more on the way out.
        """
        import numpy as np

        query = np.ascontiguousarray(np.asarray(vector, dtype="float32").reshape(1, -1))
        with self._lock:
            if self._index is None:
                raise RuntimeError("LoreIndex.search() before sync()")
            limit = self._index.ntotal if allowed is None else len(allowed.ids)
            k = min(k, limit)
            if k <= 0:
                return []
            params = None if allowed is None else allowed.params
            scores, labels = self._index.search(query, k, params=params)
            entry_ids = self._entry_ids
        hits = []
        for score, label in zip(scores[0], labels[0]):
            entry_id = entry_ids.get(int(label))
            if entry_id is not None and (allowed is None or entry_id in allowed.ids):
                hits.append((entry_id, float(score)))
        return hits


@dataclass(frozen=True)
class Allowed:
    """Entry ids one search may return, with the faiss selector that enforces it."""

    ids: frozenset[str]
    faiss_ids: Any
    selector: Any  # kept referenced: params holds only a raw pointer to it
    params: Any
