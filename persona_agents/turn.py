"""The values that flow through a pipeline: small frozen dataclasses.

A `Turn` starts from the request, the persona, a snapshot of the NPC's state and the
conversation history; each stage returns a new `Turn` with its part filled in
(`dataclasses.replace`), so a step can never corrupt what an earlier one produced.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .persona import Persona


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True)
class NpcState:
    trust: float
    relationship: float
    mood: str
    quest_stage: str
    #: The game's extra state axes (`_game.yaml` `axes:` beyond trust and relationship),
    #: by name; empty in a game that declares none.
    axes: Mapping[str, float] = field(default_factory=lambda: _frozen_mapping(None))

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", _frozen_mapping(self.axes))

    def to_dict(self) -> dict[str, Any]:
        """The state as a game reads it; `axes` only where the game declares extra axes, so
        a game without them sees the same shape as before."""
        data: dict[str, Any] = {"trust": self.trust, "relationship": self.relationship, "mood": self.mood,
                                "quest_stage": self.quest_stage}
        if self.axes:
            data["axes"] = dict(self.axes)
        return data


@dataclass(frozen=True)
class GameContext:
    """What the game tells us about this turn; it overrides stored state where given."""

    quest_stage: str | None = None
    location: str | None = None
    items: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    game_state: Mapping[str, Any] = field(default_factory=lambda: _frozen_mapping(None))


@dataclass(frozen=True)
class Exchange:
    """One earlier turn of the conversation."""

    player: str
    npc: str


@dataclass(frozen=True)
class Memory:
    """Something the NPC remembers about this player (persona_agents/memory/): `kind` is
    `fact` (the player's own words), `event` (what happened on a turn) or `heard` (word
    from another NPC, named by `source`); `turn` is the turn it comes from."""

    id: int | None
    turn: int
    kind: str
    text: str
    source: str | None = None
    #: Word still on its way is hidden from turns until the player has played this many
    #: turns (with any NPC); 0 for everything else.
    visible_from: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LoreChunk:
    id: str
    text: str
    score: float


@dataclass(frozen=True)
class Prompt:
    """What a prompt step hands to the generate step.

    `format` is "chat" (a list of role/content messages the generator renders with the
    model's chat template) or "sectioned" (the seed's marker format, already rendered
    as `text`). Stop markers end the NPC's reply if the model writes them.
    """

    format: str
    text: str | None = None
    messages: tuple[Mapping[str, str], ...] = ()
    stop_markers: tuple[str, ...] = ()
    #: The sectioned layout's version. Version 2's text ends after `<STATE>`: the generate
    #: step writes the game's decision and `<NPC>` after it (`prompt_format.render_decision`).
    version: int = 1


@dataclass(frozen=True)
class Deltas:
    trust: float = 0.0
    relationship: float = 0.0
    #: The changes of the game's extra axes, as the fired events declare them (the core
    #: sets them after the rules, `GameDefinition.axis_changes`); empty without extra axes.
    axes: Mapping[str, float] = field(default_factory=lambda: _frozen_mapping(None))

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", _frozen_mapping(self.axes))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"trust": self.trust, "relationship": self.relationship}
        if self.axes:
            data["axes"] = dict(self.axes)
        return data


@dataclass(frozen=True)
class Generation:
    """The generate step's result. `deltas` and `flag_probs` are None without state heads;
    `flags` are the flags whose probability reached their calibrated threshold."""

    text: str
    model: str
    new_tokens: int
    finished: bool
    deltas: Deltas | None = None
    flag_probs: Mapping[str, float] | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class FiredFlag:
    name: str
    payload: Mapping[str, Any] = field(default_factory=lambda: _frozen_mapping(None))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "payload": dict(self.payload)}


@dataclass(frozen=True)
class RejectedFlag:
    name: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class Turn:
    """Everything one turn knows. Stages fill `lore`, `prompt`, `generation`, then the
    outcome fields (`reply`, `deltas`, `flags`, ...) that postprocess steps refine."""

    npc_id: str
    player_id: str
    utterance: str
    persona: Persona
    state: NpcState
    context: GameContext = field(default_factory=GameContext)
    history: tuple[Exchange, ...] = ()
    turn_number: int = 1
    seed: int | None = None
    #: flag name -> turn numbers at which it fired before, for once-only and cooldown rules.
    flag_history: Mapping[str, tuple[int, ...]] = field(default_factory=lambda: _frozen_mapping(None))
    #: Deltas applied on the latest earlier turns, oldest first, for `delta_policy` windows.
    delta_history: tuple["Deltas", ...] = ()
    #: What the NPC remembers about this player from earlier turns, oldest first.
    memories: tuple[Memory, ...] = ()
    lore: tuple[LoreChunk, ...] = ()
    prompt: Prompt | None = None
    generation: Generation | None = None
    reply: str = ""
    deltas: Deltas = field(default_factory=Deltas)
    flags: tuple[FiredFlag, ...] = ()
    flags_rejected: tuple[RejectedFlag, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=lambda: _frozen_mapping(None))

    def replace(self, **changes: Any) -> "Turn":
        return dataclasses.replace(self, **changes)

    def with_meta(self, **entries: Any) -> "Turn":
        """A copy with `entries` added to `meta` (steps report what they did here)."""
        merged = dict(self.meta)
        merged.update(entries)
        return dataclasses.replace(self, meta=_frozen_mapping(merged))


def effective_stage(turn: Turn) -> str:
    """The quest stage this turn is played at: the game's (request) stage wins over the stored one."""
    return turn.context.quest_stage or turn.state.quest_stage


@dataclass(frozen=True)
class TurnResponse:
    text: str
    deltas: Deltas
    flags: tuple[FiredFlag, ...]
    flag_probs: Mapping[str, float] | None
    flags_rejected: tuple[RejectedFlag, ...]
    state: NpcState
    meta: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "deltas": self.deltas.to_dict(),
            "flags": [f.to_dict() for f in self.flags],
            "flag_probs": dict(self.flag_probs) if self.flag_probs is not None else None,
            "flags_rejected": [f.to_dict() for f in self.flags_rejected],
            "state": self.state.to_dict(),
            "meta": _plain(self.meta),
        }


def response_from_dict(data: Mapping[str, Any]) -> TurnResponse:
    """A TurnResponse back from its `to_dict()` form (stored responses, replays)."""
    return TurnResponse(
        text=data["text"],
        deltas=Deltas(**data["deltas"]),
        flags=tuple(FiredFlag(f["name"], _frozen_mapping(f.get("payload"))) for f in data["flags"]),
        flag_probs=data.get("flag_probs"),
        flags_rejected=tuple(RejectedFlag(**f) for f in data.get("flags_rejected", [])),
        state=NpcState(**data["state"]),
        meta=_frozen_mapping(data.get("meta")),
    )


def _plain(value: Any) -> Any:
    """Mappings and tuples as JSON-ready dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
