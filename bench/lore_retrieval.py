"""Lore retrieval: search latency at 100,000 entries, build throughput, recall.

Prints one `name=value` per line:

- `query_p50_ms`: median time of one search (k=5) in an index of `--entries` entries
  of the kind lore uses (`persona_agents.lore.index.new_faiss_index`: fp16 scalar
  quantizer, inner product, behind an id map), the query already embedded, with faiss
  on one OpenMP thread. The vectors are random normalised 384-d vectors: search time
  depends on their number and size, not on their content (and random vectors are the
  hard case for recall). One query gains nothing from more threads, and on a busy
  2-core machine OpenMP's spinning makes it several times slower, so
  `query_p50_ms_all_threads` reports faiss's default thread count separately. (Below
  about 10,000 entries faiss does not use threads for one query at all.)
- `query_scoped_p50_ms`: the same with a scope filter (a faiss IDSelectorBatch, as the
  faiss_lore step uses) admitting 10% of the entries.
- `recall_at_5`, `recall_at_5_scoped`: share of the exact top 5 (float32 IndexFlatIP,
  the same filter) that the index returns, over `--queries` queries.
- `build_entries_per_s`: the real build path on `--build-entries` synthetic lore
  entries written as a YAML lore file: load, embed with the embedded all-MiniLM-L6-v2,
  add and save (`LoreIndex.sync`), per second of wall time.
- `add_vectors_per_s`: adding the precomputed vectors to the big index (no embedding).

Usage: python bench/lore_retrieval.py [--quick] [--entries 100000] [--queries 200] [--build-entries 2000]

`--quick` (a smoke run that only shows the bench still works, not a figure to read):
2,000 entries, 20 queries, 50 entries built (the build rate is then mostly fixed costs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from persona_agents.lore.embedder import EmbedderRegistry  # noqa: E402
from persona_agents.lore.entries import LoreFolder  # noqa: E402
from persona_agents.lore.index import LoreIndex, index_dir, new_faiss_index  # noqa: E402

WORDS = (
    "river mill forge gate lantern tunnel smuggler grove riddle necklace letter watch curfew barge ore "
    "sword map hermit merchant guard mother brother nephew party fire ruins cellar market crossroads "
    "forest moss thorn shadow coin salt tobacco boat night winter harbour bridge chapel well tower"
).split()
VERBS = "keeps hides knows remembers fears sells guards mends watches carries".split()


def synthetic_entries(n: int, rng: np.random.Generator) -> list[dict]:
    entries = []
    for i in range(n):
        a, b, c, d = rng.choice(WORDS, 4, replace=False)
        verb = rng.choice(VERBS)
        text = (f"The {a} of the {b} {verb} a {c} near the {d}. Folk in town say it has been so since the "
                f"{rng.choice(WORDS)} of the {rng.choice(WORDS)}, and nobody asks why.")
        entries.append({"id": f"synthetic_{i}", "text": text, "scope": "world", "keywords": [str(a), str(c)]})
    return entries


def bench_build(count: int, rng: np.random.Generator) -> float:
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        npcs = Path(tmp) / "npcs"
        (npcs / "lore").mkdir(parents=True)
        (npcs / "lore" / "synthetic.yaml").write_text(yaml.safe_dump({"entries": synthetic_entries(count, rng)}))
        embedder = EmbedderRegistry().get("embedded")
        embedder.encode(["warm up the model"])
        started = time.perf_counter()
        index = LoreIndex(LoreFolder(npcs / "lore"), embedder,
                          index_dir(Path(tmp) / "cache", npcs, embedder.name), npcs)
        report = index.sync()
        elapsed = time.perf_counter() - started
        assert report.embedded == count, report
    return count / elapsed


def p50_ms(index, queries: np.ndarray, k: int, params=None) -> float:
    times = []
    for q in queries:
        started = time.perf_counter()
        index.search(q.reshape(1, -1), k, params=params)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000.0)


def recall(index, exact, queries: np.ndarray, k: int, params=None) -> float:
    _, got = index.search(queries, k, params=params)
    _, want = exact.search(queries, k, params=params)
    return float(np.mean([len(set(g) & set(w)) / k for g, w in zip(got, want)]))


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--build-entries", type=int, default=2_000)
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--quick", action="store_true", help="2000 entries, 20 queries, 50 built (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.entries, args.queries, args.build_entries = 2_000, 20, 50
    logging.disable(logging.INFO)
    rng = np.random.default_rng(0)
    # faiss's default, read before the lore code (load_faiss) limits it to one thread.
    default_threads = faiss.omp_get_max_threads()

    build_rate = bench_build(args.build_entries, rng)

    vectors = rng.standard_normal((args.entries, args.dimension), dtype=np.float32)
    faiss.normalize_L2(vectors)
    queries = rng.standard_normal((args.queries, args.dimension), dtype=np.float32)
    faiss.normalize_L2(queries)
    ids = np.arange(args.entries, dtype="int64")

    index = new_faiss_index(args.dimension)
    started = time.perf_counter()
    index.add_with_ids(vectors, ids)
    add_rate = args.entries / (time.perf_counter() - started)
    exact = faiss.IndexIDMap2(faiss.IndexFlatIP(args.dimension))
    exact.add_with_ids(vectors, ids)

    scope = faiss.IDSelectorBatch(rng.choice(ids, args.entries // 10, replace=False))
    scoped = faiss.SearchParameters(sel=scope)
    index.search(queries[:5], 5)  # first-call setup out of the timings

    faiss.omp_set_num_threads(default_threads)
    all_threads = faiss.omp_get_max_threads()
    all_threads_p50 = p50_ms(index, queries, 5)
    # One thread for the figures below; set after the embedding build (torch shares
    # the OpenMP runtime, so this would have slowed the embedder).
    faiss.omp_set_num_threads(1)
    print(f"mode={'quick' if args.quick else 'full'}")
    print(f"entries={args.entries}")
    print(f"dimension={args.dimension}")
    print(f"query_p50_ms={p50_ms(index, queries, 5):.3f}")
    print(f"query_scoped_p50_ms={p50_ms(index, queries, 5, scoped):.3f}")
    print(f"query_p50_ms_all_threads={all_threads_p50:.3f} (faiss threads: {all_threads})")
    print(f"recall_at_5={recall(index, exact, queries, 5):.4f}")
    print(f"recall_at_5_scoped={recall(index, exact, queries, 5, scoped):.4f}")
    print(f"build_entries_per_s={build_rate:.1f}")
    print(f"add_vectors_per_s={add_rate:.0f}")


if __name__ == "__main__":
    main()
