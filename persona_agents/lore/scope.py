"""Who may know what, and when: the visibility rule of lore entries (pure functions).

An NPC may see an entry when all of these hold:

1. the entry's file is listed in the NPC's `knowledge.lore` (by file name, no suffix);
2. the scope allows it: `world` (anyone listing the file), `npc` (the NPC's id is in
   `known_by`), or `faction` (the NPC's `knowledge.factions` share one with `factions`);
3. the entry has no `stages`, or the current quest stage is one of them (the game's
   stage from the request wins over the stored one: `turn.effective_stage`);
4. the entry's gates hold, as a persona's flag rule's conditions do (`rules.py`): the
   NPC's trust in the player is at least `min_trust`, the relationship at least
   `min_relationship` (the state before the turn, `turn.state`), and the player holds
   every `requires_items` and has done every `requires_actions` (`turn.context`).

The turn's side of rules 3 and 4 is a `LoreFacts` (`LoreFacts.of_turn(turn)`). A bare
stage may stand in for it: the state is then unknown, and every entry with a trust,
relationship, item or action gate stays hidden (a secret is never given away for want
of facts).

Retrieval applies this rule *before* ranking, so an entry an NPC may not know can never
be scored, let alone reach the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Protocol, Sequence, Union

from ..errors import LoreError
from .entries import LoreCollection, LoreEntry, LoreItem

if TYPE_CHECKING:
    from ..turn import Turn


class KnowledgeLike(Protocol):
    @property
    def lore(self) -> Sequence[str]: ...

    @property
    def factions(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class LoreFacts:
    """What an entry's stage and gates are checked against: the turn's quest stage, the
    NPC's state before the turn (None: unknown, so gated entries stay hidden) and what
    the game says the player holds and has done."""

    stage: str | None = None
    trust: float | None = None
    relationship: float | None = None
    items: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()

    @classmethod
    def of_turn(cls, turn: "Turn") -> "LoreFacts":
        """The facts a flag rule sees on this turn (`rules.turn_facts`), for lore."""
        from ..turn import effective_stage

        return cls(
            stage=effective_stage(turn),
            trust=turn.state.trust,
            relationship=turn.state.relationship,
            items=frozenset(turn.context.items),
            actions=frozenset(turn.context.actions),
        )


#: What the search functions take for the turn: its facts, or a bare quest stage.
Situation = Union[LoreFacts, str, None]


def as_facts(situation: Situation) -> LoreFacts:
    """`LoreFacts` as they are, a bare stage (or None) as facts with an unknown state."""
    return situation if isinstance(situation, LoreFacts) else LoreFacts(stage=situation)


def gate_reason(entry: LoreEntry, facts: LoreFacts) -> str | None:
    """Why the state withholds `entry` now (its trust, relationship, item or action gate),
    or None when every gate holds: the flag rules' own check (`rules.gate_refusal`)."""
    from ..rules import gate_refusal

    refusal = gate_refusal(entry, facts.trust, facts.relationship, facts.items, facts.actions)
    return None if refusal is None else refusal.detail


def hidden_reason(item: LoreItem, npc_id: str, knowledge: KnowledgeLike, situation: Situation) -> str | None:
    """Why `npc_id` may not see `item` now (`situation`: the turn's LoreFacts, or a bare
    quest stage), or None when it may."""
    entry = item.entry
    facts = as_facts(situation)
    if item.source not in knowledge.lore:
        return f"file '{item.source}' is not in the NPC's knowledge.lore"
    if entry.scope == "npc" and npc_id not in entry.known_by:
        return f"scope npc: known only by {', '.join(entry.known_by)}"
    if entry.scope == "faction" and not set(entry.factions) & set(knowledge.factions):
        return f"scope faction: known only by faction(s) {', '.join(entry.factions)}"
    if entry.stages is not None and facts.stage not in entry.stages:
        return f"known only at stage(s) {', '.join(entry.stages)}; the quest stage is {facts.stage or '(none)'}"
    return gate_reason(entry, facts)


def is_visible(item: LoreItem, npc_id: str, knowledge: KnowledgeLike, situation: Situation) -> bool:
    return hidden_reason(item, npc_id, knowledge, situation) is None


def visible_items(
    items: Iterable[LoreItem], npc_id: str, knowledge: KnowledgeLike, situation: Situation
) -> list[LoreItem]:
    """The entries `npc_id` may know now (`situation`: LoreFacts or a bare stage), in file order."""
    facts = as_facts(situation)
    return [item for item in items if is_visible(item, npc_id, knowledge, facts)]


def open_gates(collection: LoreCollection, facts: LoreFacts) -> tuple[str, ...]:
    """Ids of the state-gated entries whose gates hold for `facts`: with the stage, what
    the visible set depends on, so searches can cache it without keying on raw trust."""
    return tuple(item.id for item in collection.gated if gate_reason(item.entry, facts) is None)


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
