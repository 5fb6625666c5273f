"""The game definition: the events, quest stages, state axes and moods of one game.

A studio declares its game once, in `_game.yaml` beside its personas (issue 27):

    events:
      rent_room: {description: the NPC lets the player a room now, payload: [room]}
      quest_start: {description: ..., sets_stage: in_progress}
    quest_stages: [not_started, in_progress, complete]
    axes:
      trust: {min: 0.0, max: 1.0, initial: 0.3}
      relationship: {min: -1.0, max: 1.0, initial: 0.0}
      reputation: {min: -1.0, max: 1.0, initial: 0.0}   # an extra axis: moved by events
    moods: [neutral, gruff, wary]          # empty or absent: any mood

Personas, test plans, training data and adapters are checked against it, and each
event's description is what the model reads to decide by meaning (issue 26). Without the
file, `DEFAULT_GAME` (the vocabulary of labeling.md) applies, so older projects keep
working unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import PersonaFileError
from .fileutil import load_yaml
from .flags import DEFAULT_FLAGS, DEFAULT_QUEST_STAGES

GAME_FILE = "_game.yaml"
_NAME = r"^[a-z][a-z0-9_]*$"
#: Keys of a state that an extra axis may not take.
RESERVED_STATE_KEYS = ("mood", "quest_stage", "turns", "axes")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventSpec(_Strict):
    description: str = Field(min_length=1, description="What the event means in the game, in words; the model "
                             "reads it to decide (\"the NPC lets the player a room now\").")
    payload: list[str] = Field(default_factory=list, description="Fields the game needs with the event "
                               "(item, quest, room...); a persona's rule gives their values.")
    sets_stage: str | None = Field(None, description="Quest stage the NPC's quest moves to when the event fires "
                                   "(a persona's rule may say otherwise).")
    changes: dict[str, float] = Field(default_factory=dict, description="How the game's extra state axes move "
                                      "when the event fires ({reputation: 0.1}); a persona's rule may say "
                                      "otherwise, axis by axis.")


class AxisSpec(_Strict):
    min: float
    max: float
    initial: float
    description: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> "AxisSpec":
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        if not self.min <= self.initial <= self.max:
            raise ValueError(f"initial ({self.initial}) must lie in [{self.min}, {self.max}]")
        return self


#: The axes every game has: the state heads learn their changes from the data. A game may
#: declare more (`extra_axes`): those are the game's own, moved only by the events that
#: fire (`changes:`), never by the model, and shown to it in the prompt's state.
BUILT_IN_AXES: dict[str, AxisSpec] = {
    "trust": AxisSpec(min=0.0, max=1.0, initial=0.3,
                      description="how far the NPC believes the player is honest and reliable"),
    "relationship": AxisSpec(min=-1.0, max=1.0, initial=0.0, description="warmth and affinity towards the player"),
}


class WordReach(_Strict):
    """Which NPCs word reaches (any that matches one of these; never the teller itself)."""

    npcs: list[str] = Field(default_factory=list, description="NPC ids.")
    factions: list[str] = Field(default_factory=list, description="NPCs of these factions (persona "
                                "`knowledge.factions`), as faction-scoped lore reaches them.")
    locations: list[str] = Field(default_factory=list, description="NPCs at these places (persona `location`).")


class WordRule(_Strict):
    """Word that travels (issue 30): what happened between the player and one NPC becomes a
    memory (`heard`, with its source) of other NPCs, after a delay."""

    events: list[str] = Field(default_factory=list, description="Fired events that spread.")
    facts: bool = Field(False, description="The player's statements about themselves spread too.")
    tellers: list[str] | None = Field(None, description="NPC ids whose turns spread; absent: every NPC's.")
    to: WordReach = Field(description="Who hears of it.")
    delay_turns: int = Field(0, ge=0, le=10_000, description="The player's turns (with any NPC) after the "
                             "telling turn before the word arrives.")


class GameDefinition(_Strict):
    events: dict[str, EventSpec] = Field(description="The game's events, by name, in the order adapters use.")
    quest_stages: list[str] = Field(default_factory=lambda: list(DEFAULT_QUEST_STAGES), min_length=1)
    axes: dict[str, AxisSpec] = Field(default_factory=lambda: dict(BUILT_IN_AXES))
    moods: list[str] = Field(default_factory=list, description="Declared moods; empty: any mood string.")
    word_travels: list[WordRule] = Field(default_factory=list, description="How word of what the player did "
                                         "and said reaches other NPCs (persona_agents/memory/word.py).")

    @field_validator("events")
    @classmethod
    def _event_names(cls, events: dict[str, EventSpec]) -> dict[str, EventSpec]:
        bad = [name for name in events if not re.match(_NAME, name)]
        if bad:
            raise ValueError(f"event name(s) {', '.join(map(repr, bad))} must be snake_case (a-z, 0-9, _)")
        if not events:
            raise ValueError("declare at least one event")
        return events

    @field_validator("axes")
    @classmethod
    def _known_axes(cls, axes: dict[str, AxisSpec]) -> dict[str, AxisSpec]:
        bad = [name for name in axes if not re.match(_NAME, name) or name in RESERVED_STATE_KEYS]
        if bad:
            raise ValueError(f"axis name(s) {', '.join(map(repr, bad))} must be snake_case and not one of "
                             f"{', '.join(RESERVED_STATE_KEYS)}")
        for name, spec in BUILT_IN_AXES.items():
            given = axes.get(name)
            if given is not None and (given.min, given.max) != (spec.min, spec.max):
                raise ValueError(f"{name}: the range of a built-in axis is fixed at [{spec.min}, {spec.max}] "
                                 f"(the heads and the rules use it); declare another axis for another range")
        missing = [name for name in BUILT_IN_AXES if name not in axes]
        if missing:
            raise ValueError(f"axes must declare {', '.join(missing)} (the state store and heads need both)")
        return axes

    @model_validator(mode="after")
    def _stages_declared(self) -> "GameDefinition":
        for name, event in self.events.items():
            if event.sets_stage is not None and event.sets_stage not in self.quest_stages:
                raise ValueError(f"events.{name}.sets_stage: {event.sets_stage!r} is not a declared quest stage; "
                                 f"declared: {', '.join(self.quest_stages)}")
        for number, rule in enumerate(self.word_travels):
            unknown = self.unknown_events(rule.events)
            if unknown:
                raise ValueError(f"word_travels.{number}.events: {', '.join(unknown)} not declared; "
                                 f"{self.events_hint()}")
            if not rule.events and not rule.facts:
                raise ValueError(f"word_travels.{number}: nothing spreads; name events, or set facts: true")
        for name, event in self.events.items():
            unknown = [axis for axis in event.changes if axis not in self.extra_axes]
            if unknown:
                raise ValueError(f"events.{name}.changes: {', '.join(unknown)} not an extra axis of this game; "
                                 f"{self.extra_axes_hint()}")
        return self

    # -- questions the rest of the code asks ---------------------------------------
    @property
    def event_names(self) -> tuple[str, ...]:
        return tuple(self.events)

    def unknown_events(self, names) -> list[str]:
        return [n for n in names if n not in self.events]

    def unknown_stages(self, names) -> list[str]:
        return [n for n in names if n not in self.quest_stages]

    def stage_after(self, stage: str, fired: Iterable[str], flag_rules: Mapping[str, Any]) -> str:
        """The quest stage after events fired: each fired event moves it as the persona's
        rule says (`sets_stage`), else as the game's event does, else leaves it."""
        for name in fired:
            rule = flag_rules.get(name)
            event = self.events.get(name)
            stage = (getattr(rule, "sets_stage", None) or (event.sets_stage if event else None) or stage)
        return stage

    @property
    def extra_axes(self) -> dict[str, AxisSpec]:
        """The game's own state axes beyond trust and relationship, in declared order."""
        return {name: spec for name, spec in self.axes.items() if name not in BUILT_IN_AXES}

    def initial_axes(self) -> dict[str, float]:
        return {name: spec.initial for name, spec in self.extra_axes.items()}

    def axis_changes(self, current: Mapping[str, float], fired: Iterable[str],
                     flag_rules: Mapping[str, Any]) -> dict[str, float]:
        """How each extra axis moves on a turn: every fired event adds its change (the
        persona's rule `changes` first, axis by axis, else the game event's), bounded so the
        value stays in the axis's range. Every extra axis is listed, unmoved ones with 0."""
        changes = {}
        for axis, spec in self.extra_axes.items():
            total = 0.0
            for name in fired:
                rule_changes = getattr(flag_rules.get(name), "changes", None) or {}
                event = self.events.get(name)
                total += rule_changes.get(axis, event.changes.get(axis, 0.0) if event else 0.0)
            value = current.get(axis, spec.initial)
            changes[axis] = round(max(spec.min, min(spec.max, value + total)) - value, 6)
        return changes

    def extra_axes_hint(self) -> str:
        return ("declared extra axes: " + ", ".join(self.extra_axes)) if self.extra_axes else \
            "this game declares no extra axes (add one under axes: in _game.yaml)"

    def events_hint(self) -> str:
        return "declared events: " + ", ".join(self.events)

    def stages_hint(self) -> str:
        return "declared quest stages: " + ", ".join(self.quest_stages)


_DEFAULT_DESCRIPTIONS = {
    "give_item": ("the NPC hands the player an item now", ["item"], None),
    "give_hint": ("the NPC gives actionable information that helps the player progress: where to go, what to "
                  "bring, who to ask, a clue", [], None),
    "npc_main_story": ("the NPC reveals a main-story fact: its own part in the central mystery, or the mystery "
                       "itself", [], None),
    "quest_start": ("the NPC gives the player a task and the task begins now", ["quest"], "in_progress"),
    "quest_complete": ("the NPC acknowledges that the player has finished its task", ["quest"], "complete"),
    "unlock_hidden_path": ("the NPC opens, or reveals access to, a restricted or hidden place", [], None),
    "open_trade": ("the NPC opens its shop or a trade", [], None),
    "end_conversation": ("the NPC ends the conversation: walks away, refuses to talk further", [], None),
}

#: The game of a folder without `_game.yaml`: labeling.md's eight events and three stages.
DEFAULT_GAME = GameDefinition(events={
    name: EventSpec(description=_DEFAULT_DESCRIPTIONS[name][0], payload=_DEFAULT_DESCRIPTIONS[name][1],
                    sets_stage=_DEFAULT_DESCRIPTIONS[name][2])
    for name in DEFAULT_FLAGS
})


def game_file(npcs_dir: str | Path) -> Path:
    return Path(npcs_dir) / GAME_FILE


def _loc(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def parse_game(data: Any, source: str) -> GameDefinition:
    """A GameDefinition from parsed YAML, or PersonaFileError naming `source` and the field."""
    if not isinstance(data, dict):
        raise PersonaFileError([f"{source}: top level: expected a mapping with events, quest_stages, axes, moods"])
    try:
        return GameDefinition.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field (valid: events, quest_stages, axes, moods, word_travels; an event takes " \
                      "description, payload, sets_stage, changes; a word_travels rule events, facts, tellers, to, " \
                      "delay_turns)"
            problems.append(f"{source}: {_loc(err['loc'])}: {msg}")
        raise PersonaFileError(problems) from None


def load_game(npcs_dir: str | Path) -> GameDefinition:
    """The game of a persona folder: its `_game.yaml`, or DEFAULT_GAME without one."""
    path = game_file(npcs_dir)
    if not path.is_file():
        return DEFAULT_GAME
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise PersonaFileError([f"{path}: {where}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    return parse_game(data, str(path))
