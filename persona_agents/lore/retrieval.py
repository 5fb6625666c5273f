"""Lore search as the steps and the CLI use it: scope first, then rank, then budget.

- `semantic_search`: the entries an NPC may know now (`scope.py`: its knowledge and
  scope, the quest stage, and the gates on trust, relationship, items and actions),
  ranked by cosine similarity to the query in the faiss index; only those pass to faiss.
- `keyword_search`: entries whose `keywords` appear as whole words (case-insensitive)
  in the player's line or recent history, with the same filter.

Both take the turn's side of the rule as `LoreFacts` (`LoreFacts.of_turn(turn)`), or a
bare quest stage, with which every state-gated entry stays hidden.
- `within_budget`: keeps the best hits whose texts fit a token budget. Tokens are
  estimated as words plus punctuation marks (model-independent; on the sample lore
  SmolLM2's tokenizer counts about 6% more).

`LoreRegistry` (one per Runtime) shares lore folders and indexes between all NPCs of a
process, so six NPCs over one folder load and embed it once.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from .entries import LoreCollection, LoreFolder, LoreItem, lore_folder
from .scope import KnowledgeLike, Situation, as_facts, open_gates, visible_items

if TYPE_CHECKING:
    from .embedder import Embedder
    from .index import LoreIndex

_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class LoreHit:
    item: LoreItem
    score: float


def estimate_tokens(text: str) -> int:
    """Words plus punctuation marks: a model-independent estimate of prompt tokens."""
    return len(_TOKEN.findall(text))


def within_budget(hits: Sequence[LoreHit], max_tokens: int) -> list[LoreHit]:
    """The hits, best first, that fit into `max_tokens`; an entry that does not fit is
    skipped and smaller ones after it may still fit."""
    kept, used = [], 0
    for hit in hits:
        cost = estimate_tokens(hit.item.text)
        if used + cost <= max_tokens:
            kept.append(hit)
            used += cost
    return kept


def semantic_search(
    index: "LoreIndex",
    query: str,
    npc_id: str,
    knowledge: KnowledgeLike,
    situation: Situation,
    k: int,
    min_score: float = -1.0,
) -> list[LoreHit]:
    """The `k` entries `npc_id` may know now (`situation`: the turn's LoreFacts, or a bare
    quest stage) most similar to `query`, best first."""
    collection = index.ensure_current()
    facts = as_facts(situation)
    # The visible set depends on the stage and on which gates are open, not on the exact
    # trust: keyed so, a few cached filters serve every turn.
    key = (collection.signature, npc_id, tuple(knowledge.lore), tuple(knowledge.factions), facts.stage,
           open_gates(collection, facts))
    allowed = index.allowed(
        key, lambda: [item.id for item in visible_items(collection.items, npc_id, knowledge, facts)])
    if not allowed.ids or not query.strip():
        return []
    vector = index.embedder.encode([query])[0]
    return [
        LoreHit(collection.by_id[entry_id], score)
        for entry_id, score in index.search(vector, k, allowed)
        if score >= min_score
    ]


@lru_cache(maxsize=4096)
def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    words = keyword.split()
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)", re.IGNORECASE)


def matched_keywords(item: LoreItem, text: str) -> list[str]:
    return [kw for kw in item.entry.keywords if kw.strip() and _keyword_pattern(kw.strip()).search(text)]


def keyword_search(
    collection: LoreCollection,
    line: str,
    history: Iterable[str],
    npc_id: str,
    knowledge: KnowledgeLike,
    situation: Situation,
    max_entries: int,
) -> list[LoreHit]:
    """Entries `npc_id` may know now (`situation`: LoreFacts or a bare quest stage)
    triggered by their keywords, best first.

    The score counts distinct matching keywords: 1 for each found in the player's line,
    0.5 for each found only in the history. Ties keep file order.
    """
    earlier = "\n".join(history)
    hits = []
    for item in visible_items(collection.items, npc_id, knowledge, situation):
        now = set(matched_keywords(item, line))
        before = set(matched_keywords(item, earlier)) - now if earlier else set()
        score = len(now) + 0.5 * len(before)
        if score > 0:
            hits.append(LoreHit(item, score))
    hits.sort(key=lambda hit: -hit.score)  # stable: ties stay in file order
    return hits[:max_entries]


class LoreRegistry:
    """Lore folders and indexes shared by every NPC of a process."""

    def __init__(self) -> None:
        self._folders: dict[Path, LoreFolder] = {}
        self._indexes: dict[tuple[Path, str], "LoreIndex"] = {}
        self._lock = threading.Lock()

    def folder(self, npcs_dir: str | Path) -> LoreFolder:
        key = lore_folder(npcs_dir).resolve()
        with self._lock:
            if key not in self._folders:
                self._folders[key] = LoreFolder(key)
            return self._folders[key]

    def index(self, npcs_dir: str | Path, embedder: "Embedder", cache_dir: str | Path) -> "LoreIndex":
        """The synced index of `npcs_dir` for `embedder`, built on first use."""
        from .index import LoreIndex, index_dir

        folder = self.folder(npcs_dir)
        key = (folder.path, embedder.fingerprint)
        with self._lock:
            index = self._indexes.get(key)
            if index is None:
                directory = index_dir(Path(cache_dir), Path(npcs_dir), embedder.name)
                index = self._indexes[key] = LoreIndex(folder, embedder, directory, Path(npcs_dir))
        index.ensure_current()
        return index
