"""The test plan format (YAML). One file holds one plan, or `plans: [...]`.

```yaml
plans:
  - name: Brann mends the sword only with ore
    npc: blacksmith_village_center
    player: tester              # optional
    start: {trust: 0.4, quest_stage: in_progress}        # optional starting state
    context: {items: [broken_sword], location: village_square}
    turns:
      - say: "Here is the ore, mend my sword."
        expect:
          no_flags: [give_item]
          deltas: {trust: {direction: down}}
      - say: "Now I really have it."
        gain_items: [iron_ore]           # context changes before this turn
        expect:
          flags: [give_item]
          state: {trust: {min: 0.3}}
          reply: {not_matches: ["(?i)as an ai"]}
          lore: {retrieved: [brann_ore_collapsed_mine]}
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    min: float | None = None
    max: float | None = None

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min - 1e-9) and (self.max is None or value <= self.max + 1e-9)

    def describe(self) -> str:
        parts = (([f">= {self.min:g}"] if self.min is not None else [])
                 + ([f"<= {self.max:g}"] if self.max is not None else []))
        return " and ".join(parts) or "any value"


class DeltaExpectation(Range):
    direction: Literal["up", "down", "none", "any"] = Field("any", description="Sign of the change (none: |d| < 0.02).")


class StateExpectation(_Strict):
    trust: Range | None = None
    relationship: Range | None = None
    quest_stage: str | None = None
    axes: dict[str, Range] = Field(default_factory=dict, description="The game's extra axes after the turn, "
                                   "by name ({reputation: {min: 0.1}}).")


class ReplyExpectation(_Strict):
    matches: list[str] = Field(default_factory=list, description="Regexes the reply must match (re.search).")
    not_matches: list[str] = Field(default_factory=list, description="Regexes the reply must not match.")


class LoreExpectation(_Strict):
    retrieved: list[str] = Field(default_factory=list)
    not_retrieved: list[str] = Field(default_factory=list)


class MemoryExpectation(_Strict):
    """Long-term memories (the `recall_memories` step) put into this turn's prompt, named by
    the turn they come from: `recalled: [2]` passes when a memory of turn 2 was recalled."""

    recalled: list[int] = Field(default_factory=list, description="Turns whose memories must be recalled.")
    not_recalled: list[int] = Field(default_factory=list, description="Turns whose memories must not be.")


class Expectations(_Strict):
    flags: list[str] = Field(default_factory=list, description="Flags that must fire this turn.")
    no_flags: list[str] = Field(default_factory=list, description="Flags that must not fire this turn.")
    deltas: dict[str, DeltaExpectation] = Field(default_factory=dict, description="By axis: trust, "
                                                 "relationship, or one of the game's extra axes.")
    state: StateExpectation | None = None
    reply: ReplyExpectation | None = None
    lore: LoreExpectation | None = None
    memories: MemoryExpectation | None = None
    speakers: list[str] | None = Field(None, description="A scene turn: the NPCs that answer, in speaking order.")
    speaker_reason: Literal["addressed", "topic", "turn"] | None = Field(
        None, description="A scene turn: why they answer (named or addressed, by topic, or whose turn it is).")


class Context(_Strict):
    quest_stage: str | None = None
    location: str | None = None
    items: list[str] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)
    game_state: dict[str, Any] = Field(default_factory=dict)


class Start(_Strict):
    trust: float | None = Field(None, ge=0, le=1)
    relationship: float | None = Field(None, ge=-1, le=1)
    mood: str | None = None
    quest_stage: str | None = None
    axes: dict[str, float] = Field(default_factory=dict, description="The game's extra axes at the start, by "
                                   "name; the others start at the game's initial value.")


#: What a scene turn may expect: who answers, and the events of all its replies together.
SCENE_EXPECTATIONS = {"speakers", "speaker_reason", "flags", "no_flags"}


class PlanTurn(_Strict):
    say: str = Field(min_length=1)
    npc: str | None = Field(None, description="Say it to another NPC (the same player walks over; word that "
                            "travels between NPCs is tested this way); absent: the plan's NPC.")
    scene: list[str] | None = Field(None, description="Say it in a group scene of these NPCs (ids); the scene "
                                    "decides who answers (expect `speakers`, `speaker_reason`, `flags`).")
    gain_items: list[str] = Field(default_factory=list)
    lose_items: list[str] = Field(default_factory=list)
    add_actions: list[str] = Field(default_factory=list)
    set_stage: str | None = Field(None, description="The game moves the quest stage before this turn.")
    location: str | None = None
    expect: Expectations = Field(default_factory=Expectations)


class Plan(_Strict):
    name: str
    npc: str
    player: str = "plan-tester"
    start: Start = Field(default_factory=Start)
    context: Context = Field(default_factory=Context)
    turns: list[PlanTurn] = Field(min_length=1)


class PlanFile(_Strict):
    plans: list[Plan] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _single(cls, value: Any) -> Any:
        if isinstance(value, dict) and "plans" not in value:
            return {"plans": [value]}
        if isinstance(value, list):
            return {"plans": value}
        return value
