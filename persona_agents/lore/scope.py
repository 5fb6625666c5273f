"""Who may know what, and when: the visibility rule of lore entries (pure functions).

An NPC may see an entry when all of these hold:

1. the entry's file is listed in the NPC's `knowledge.lore` (by file name, no suffix);
2. the scope allows it: `world` (anyone listing the file), `npc` (the NPC's id is in
   `known_by`), or `faction` (the NPC's `knowledge.factions` share one with `factions`);
3. the entry has no `stages`, or the current quest stage is one of them (the game's
   stage from the request wins over the stored one: `turn.effective_stage`).

Retrieval applies this rule *before* ranking, so an entry an NPC may not know can never
be scored, let alone reach the prompt.
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence

from ..errors import LoreError
from .entries import LoreCollection, LoreItem


class KnowledgeLike(Protocol):
    lore: Sequence[str]
    factions: Sequence[str]


def hidden_reason(item: LoreItem, npc_id: str, knowledge: KnowledgeLike, stage: str | None) -> str | None:
    """Why `npc_id` may not see `item` at `stage`, or None when it may."""
    entry = item.entry
    if item.source not in knowledge.lore:
        return f"file '{item.source}' is not in the NPC's knowledge.lore"
    if entry.scope == "npc" and npc_id not in entry.known_by:
        return f"scope npc: known only by {', '.join(entry.known_by)}"
    if entry.scope == "faction" and not set(entry.factions) & set(knowledge.factions):
        return f"scope faction: known only by faction(s) {', '.join(entry.factions)}"
    if entry.stages is not None and stage not in entry.stages:
        return f"known only at stage(s) {', '.join(entry.stages)}; the quest stage is {stage or '(none)'}"
    return None


def is_visible(item: LoreItem, npc_id: str, knowledge: KnowledgeLike, stage: str | None) -> bool:
    return hidden_reason(item, npc_id, knowledge, stage) is None


def visible_items(
    items: Iterable[LoreItem], npc_id: str, knowledge: KnowledgeLike, stage: str | None
) -> list[LoreItem]:
    """The entries `npc_id` may know at `stage`, in file order."""
    return [item for item in items if is_visible(item, npc_id, knowledge, stage)]


def check_knowledge(npc_id: str, knowledge: KnowledgeLike, collection: LoreCollection) -> None:
    """Fail when a persona lists a lore file that does not exist (a typo hides knowledge)."""
    available = collection.sources
    missing = [name for name in knowledge.lore if name not in available]
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        raise LoreError(
            f"NPC '{npc_id}' lists lore file(s) {names} in knowledge.lore, but {collection.folder} has no such "
            f".yaml, .yml or .md file. Available: {', '.join(available) or '(none)'}."
        )
