"""The persona schema: what one NPC's YAML file may say.

Pydantic models validate untrusted YAML; unknown keys are rejected everywhere so a
typo never passes silently. Step options are validated later, against the registry of
steps (see `persona_loader.py`), because only the step knows its options.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STAGES: tuple[str, ...] = ("preprocess", "retrieve", "prompt", "generate", "postprocess")
#: (minimum, maximum) number of steps per stage; None means unbounded.
STAGE_CARDINALITY: dict[str, tuple[int, int | None]] = {
    "preprocess": (0, None),
    "retrieve": (0, None),  # each step adds its lines: lore by meaning, by keyword, memories
    "prompt": (1, 1),
    "generate": (1, 1),
    "postprocess": (0, None),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExampleLine(_Strict):
    player: str = Field(description="What the player says.")
    npc: str = Field(description="How this NPC answers, in its own voice.")


class AuthoredLine(_Strict):
    """A line the writers wrote, and when it fits (the `authored_lines` step says it)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_]*$", description="Stable id, recorded in a turn's meta.")
    text: str = Field(min_length=1, description="What the NPC says, verbatim.")
    events: list[str] = Field(
        default_factory=list, description="Flags this line goes with: it fits only a turn on which exactly these "
        "fired (none: a turn on which none fired).")
    refuses: list[str] = Field(
        default_factory=list, description="Flags this line refuses in words: it fits only when the game refused "
        "one of them this turn.")
    stages: list[str] | None = Field(None, description="Quest stages in which it fits; absent: any.")
    min_trust: float | None = Field(None, ge=0.0, le=1.0)
    max_trust: float | None = Field(None, ge=0.0, le=1.0)
    min_relationship: float | None = Field(None, ge=-1.0, le=1.0)
    max_relationship: float | None = Field(None, ge=-1.0, le=1.0)
    examples: list[str] = Field(
        default_factory=list, description="Player lines or topics it answers; matched by meaning.")


class InitialState(_Strict):
    trust: float = Field(0.3, ge=0.0, le=1.0, description="How far the NPC believes the player (0..1).")
    relationship: float = Field(0.0, ge=-1.0, le=1.0, description="Warmth towards the player (-1..1).")
    mood: str = Field("neutral", description="The NPC's mood at the start.")
    quest_stage: str = Field("not_started", description="Stage of this NPC's quest at the start.")


class Knowledge(_Strict):
    lore: list[str] = Field(
        default_factory=list,
        description="Lore files (names without suffix, under npcs/lore/) this NPC may draw on; "
        "each entry's scope and stages decide what it actually knows.",
    )
    factions: list[str] = Field(
        default_factory=list, description="Factions this NPC belongs to: it knows their faction-scoped lore."
    )


class FlagRule(_Strict):
    """When the game lets a flag fire for this NPC (enforced by the `game_rules` step)."""

    stages: list[str] | None = Field(None, description="Quest stages in which the flag may fire; absent: any.")
    min_trust: float | None = Field(None, ge=0.0, le=1.0)
    min_relationship: float | None = Field(None, ge=-1.0, le=1.0)
    requires_items: list[str] = Field(default_factory=list, description="Items the player must hold (all of them).")
    requires_actions: list[str] = Field(default_factory=list, description="Actions the player must have done.")
    any_of: list["FlagRule"] = Field(
        default_factory=list,
        description="Alternatives: the flag may fire if any one of these rules holds (e.g. a pass OR trust >= 0.6).",
    )
    once: bool = Field(False, description="Fire at most once per player.")
    cooldown_turns: int | None = Field(None, ge=1, description="Turns to wait before the flag may fire again.")
    payload: dict[str, Any] = Field(
        default_factory=dict, description="What the game needs with the event: item, quest, place..."
    )
    allowed: bool = Field(True, description="False forbids the flag for this NPC entirely.")
    means: str | None = Field(
        None, description="What the event means for this NPC, with its condition in words (\"hands over the map "
        "fragment, but only to a friend\"); the model reads it to decide. Absent: the game's description.")
    sets_stage: str | None = Field(
        None, description="Quest stage this NPC's quest moves to when the flag fires (default: the event's "
        "sets_stage in the game definition).")
    sets_mood: str | None = Field(None, description="Mood the NPC takes on when the flag fires.")
    changes: dict[str, float] = Field(
        default_factory=dict, description="How the game's extra state axes move when the flag fires "
        "({reputation: 0.2}), axis by axis over the event's `changes` in the game definition.")


class MoodRule(_Strict):
    """The NPC's mood follows its feelings: after a turn, the first rule whose bounds hold
    for the new state sets the mood (issue 27); events may set one too (`sets_mood`)."""

    mood: str = Field(min_length=1, description="The mood the NPC takes on.")
    min_trust: float | None = Field(None, ge=0.0, le=1.0)
    max_trust: float | None = Field(None, ge=0.0, le=1.0)
    min_relationship: float | None = Field(None, ge=-1.0, le=1.0)
    max_relationship: float | None = Field(None, ge=-1.0, le=1.0)

    def holds(self, trust: float, relationship: float) -> bool:
        return ((self.min_trust is None or trust >= self.min_trust)
                and (self.max_trust is None or trust <= self.max_trust)
                and (self.min_relationship is None or relationship >= self.min_relationship)
                and (self.max_relationship is None or relationship <= self.max_relationship))


class GainWindow(_Strict):
    """A cap on gains over a run of turns, so no run of lines farms an axis (issue 33)."""

    turns: int = Field(ge=2, le=100, description="Length of the window, in turns (this one included).")
    max_up: float = Field(ge=0.0, le=2.0, description="Largest net increase of the axis within any such window "
                          "(the sum of the deltas applied on those turns).")


class AxisPolicy(_Strict):
    max_up: float = Field(1.0, ge=0.0, le=2.0, description="Largest increase applied in one turn.")
    max_down: float = Field(1.0, ge=0.0, le=2.0, description="Largest decrease applied in one turn.")
    min: float | None = Field(None, description="Lowest value this NPC's axis may reach.")
    max: float | None = Field(None, description="Highest value this NPC's axis may reach.")
    window: GainWindow | None = Field(
        None, description="Cap on gains over several turns (e.g. {turns: 5, max_up: 0.1}): lines that each "
        "earn a little cannot add up to a trust gate in a few turns.")


class DeltaPolicy(_Strict):
    trust: AxisPolicy = Field(default_factory=AxisPolicy)
    relationship: AxisPolicy = Field(default_factory=AxisPolicy)


class RequestBudget(_Strict):
    """How much of the prompt a request may fill, in tokens of the model that reads it.

    The core checks every turn against it before any model work (see
    `persona_agents/request_budget.py`): a value or section over its budget is refused
    (422 naming the field), the stored history is truncated, oldest exchanges first.
    """

    utterance: int = Field(128, ge=1, le=8192, description="The player's line.")
    value: int = Field(16, ge=1, le=8192, description="Each single value: an item, an action, the location, "
                       "the quest stage, one game_state key=value pair.")
    items: int = Field(48, ge=1, le=8192, description="All items together, as the prompt lists them.")
    actions: int = Field(48, ge=1, le=8192, description="All actions together, as the prompt lists them.")
    game_state: int = Field(64, ge=1, le=8192, description="All game_state pairs together, as the prompt lists them.")
    history: int = Field(192, ge=0, le=65536, description="Earlier exchanges shown to the model; older ones "
                         "are left out of the prompt (not refused) once the newest fill this budget.")


class MemorySettings(_Strict):
    """What the NPC keeps about a player beyond the history window (persona_agents/memory/).
    The `recall_memories` retrieve step puts the relevant ones into the prompt."""

    condense: Literal["rules", "off"] = Field(
        "rules", description="How a turn becomes memories: `rules` keeps the player's statements about "
        "themselves in their own words and the events that fired; `off` keeps none.")


class GenerationSettings(_Strict):
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="0 means greedy decoding.")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_new_tokens: int = Field(48, ge=1, le=2048)
    repetition_penalty: float = Field(1.1, ge=0.5, le=3.0)
    seed: int | None = Field(None, description="Fixed seed: the same line gets the same reply.")


class StepSpec(_Strict):
    """One named step of a stage with its options (validated by the step itself)."""

    name: str = Field(description="A registered step name; `persona-agents steps` lists them.")
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # "normalize_input" is shorthand for {"name": "normalize_input"}.
        if isinstance(value, str):
            return {"name": value}
        return value


class PipelineSpec(_Strict):
    preprocess: list[StepSpec] = Field(default_factory=list)
    retrieve: list[StepSpec] = Field(default_factory=list)
    prompt: list[StepSpec] = Field(default_factory=list)
    generate: list[StepSpec] = Field(default_factory=list)
    postprocess: list[StepSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cardinality(self) -> "PipelineSpec":
        problems = []
        for stage, (low, high) in STAGE_CARDINALITY.items():
            n = len(getattr(self, stage))
            if n < low or (high is not None and n > high):
                want = (f"exactly {low}" if low == high
                        else (f"at most {high}" if high is not None else f"at least {low}"))
                problems.append(f"stage '{stage}' takes {want} step(s), got {n}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Persona(_Strict):
    """One NPC, as a writer authors it in `npcs/<id>.yaml`."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Stable id the game uses (snake_case).")
    name: str
    role: str = Field(description="One line: who the NPC is in the world.")
    backstory: str = ""
    location: str | None = Field(None, description="Where the player meets the NPC.")
    traits: list[str] = Field(default_factory=list)
    speaking_style: str = ""
    language: str = Field("en", description="Language the NPC speaks (BCP 47 code).")
    example_lines: list[ExampleLine] = Field(default_factory=list)
    lines: list[AuthoredLine] = Field(
        default_factory=list, description="The writers' own lines, said verbatim where they fit (step authored_lines).")
    initial_state: InitialState = Field(default_factory=InitialState)
    knowledge: Knowledge = Field(default_factory=Knowledge)
    flag_rules: dict[str, FlagRule] = Field(default_factory=dict)
    delta_policy: DeltaPolicy = Field(default_factory=DeltaPolicy)
    mood_rules: list[MoodRule] = Field(
        default_factory=list, description="Moods set by the state after a turn, first match wins (e.g. "
        "{mood: hostile, max_relationship: -0.5}); a fired event's `sets_mood` wins over them.")
    request_budget: RequestBudget = Field(default_factory=RequestBudget)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    pipeline: PipelineSpec

    @field_validator("lines")
    @classmethod
    def _unique_line_ids(cls, lines: list[AuthoredLine]) -> list[AuthoredLine]:
        counts = Counter(line.id for line in lines)
        repeated = sorted(line_id for line_id, n in counts.items() if n > 1)
        if repeated:
            raise ValueError(f"line id(s) used more than once: {', '.join(repeated)}; give each line its own id")
        return lines



def persona_json_schema() -> dict[str, Any]:
    """The JSON Schema editors use to complete and check persona files."""
    schema = Persona.model_json_schema()
    schema["title"] = "persona-agents NPC persona"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


Stage = Literal["preprocess", "retrieve", "prompt", "generate", "postprocess"]
