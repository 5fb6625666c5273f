"""Request and response models of the HTTP API (pydantic, at the edge).

Every limit a client can hit is declared here, so it shows in /openapi.json and a bad
request fails with a 422 problem naming the field before any model work starts. The
NPC's own `normalize_input.max_chars` (usually 500) is checked later, in the pipeline,
and also answers 422 naming `utterance`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

#: Hard cap on a player's line at the edge; a persona's normalize_input limit is usually lower.
MAX_UTTERANCE_CHARS = 4000
MAX_ID_CHARS = 128
#: Names (quest stage, location, items, mood): the store keeps quest stages in 100 characters.
MAX_NAME_CHARS = 100
MAX_LIST_ITEMS = 200
MAX_GAME_STATE_KEYS = 64
#: Ids (player_id, session_id, request_id; the player path segment) may hold any printable
#: character (UUIDs, e-mails, "guild:42") except `/`, and not only dots: every id a turn
#: accepts must also work as a path segment of /v1/players/{player_id}/..., where `/` would
#: split the path and "." or ".." are removed by clients. Never control characters.
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f/]*[^\x00-\x1f\x7f-\x9f/.][^\x00-\x1f\x7f-\x9f/]*$"
#: What the API docs say about ids.
ID_RULE = (f"Ids are 1 to {MAX_ID_CHARS} printable characters (letters, digits, spaces, punctuation: "
           "UUIDs, e-mails, `guild:42`) except `/`; no control characters, and not only dots.")

#: No NUL character: PostgreSQL's text cannot hold one (a name is stored with the turn).
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS, pattern=NO_NUL)]
StateKey = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=NO_NUL)]
#: One game_state value, as JSON; the persona's request_budget then bounds it in tokens.
MAX_STATE_VALUE_CHARS = 256


def _bounded_json(value: Any) -> Any:
    """A game_state value no longer than MAX_STATE_VALUE_CHARS once written as JSON, and
    one every state database can store: no NaN or Infinity, no NUL character."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise ValueError("holds NaN or Infinity, which JSON and the state database cannot store; "
                             "send a finite number, a string or null") from None
        # an integer past Python's digit limit
        raise ValueError(f"is a number too long to accept; at most {MAX_STATE_VALUE_CHARS} characters") from None
    if "\\u0000" in text or "\x00" in text:
        raise ValueError("holds a NUL character, which the state database cannot store")
    size = len(text)
    if size > MAX_STATE_VALUE_CHARS:
        raise ValueError(f"is {size} characters as JSON; at most {MAX_STATE_VALUE_CHARS} are accepted")
    return value


StateValue = Annotated[JsonValue, AfterValidator(_bounded_json)]


class _Strict(BaseModel):
    # NaN and Infinity are not JSON, and no state database stores them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# -- turns ---------------------------------------------------------------------------
class TurnRequest(_Strict):
    """One player line to one NPC, with what the game knows about the moment."""

    player_id: str = Field(
        min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
        description=f"The player's id: state and history are kept per (player, NPC). {ID_RULE}",
    )
    utterance: str = Field(
        min_length=1, max_length=MAX_UTTERANCE_CHARS, pattern=NO_NUL,
        description=f"What the player says (at most {MAX_UTTERANCE_CHARS} characters here; "
        "the NPC's normalize_input step usually allows 500).",
    )
    request_id: str | None = Field(
        None, min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
        description="Idempotency key: repeating it with the same request returns the stored response and "
        "changes nothing; reusing it with a different request is a 409 (request_id_conflict). " + ID_RULE,
    )
    quest_stage: str | None = Field(
        None, min_length=1, max_length=MAX_NAME_CHARS, pattern=NO_NUL,
        description="The game's quest stage for this NPC; it wins over the stored stage.",
    )
    location: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS, pattern=NO_NUL,
                                 description="Where the player is.")
    items: list[Name] = Field(
        default_factory=list, max_length=MAX_LIST_ITEMS,
        description="Items the player holds (flag rules may require them).",
    )
    actions: list[Name] = Field(
        default_factory=list, max_length=MAX_LIST_ITEMS,
        description="Actions the player has done (flag rules may require them).",
    )
    game_state: dict[StateKey, StateValue] = Field(
        default_factory=dict, max_length=MAX_GAME_STATE_KEYS,
        description=f"Free game state shown to the prompt as key=value pairs (each value at most "
        f"{MAX_STATE_VALUE_CHARS} characters as JSON; the NPC's request_budget bounds them in tokens).",
    )
    seed: int | None = Field(
        None, ge=0, le=2**31 - 1,
        description="Sampling seed for a reproducible reply (default: the persona's, else random).",
    )


class DeltasOut(BaseModel):
    trust: float = Field(description="Change of the NPC's trust in the player this turn.")
    relationship: float = Field(description="Change of the NPC's warmth towards the player this turn.")
    axes: dict[str, float] | None = Field(None, description="Changes of the game's extra state axes, as the fired "
                                          "events declare them; absent where the game declares none.")


class FiredFlagOut(BaseModel):
    name: str = Field(description="The event the game should apply, e.g. give_item.")
    payload: dict[str, Any] = Field(description="What the game needs with it: item, quest, place...")


class RejectedFlagOut(BaseModel):
    name: str
    reason: str = Field(description="stage, trust_below, relationship_below, missing_item, missing_action, "
                                    "once_only, cooldown or not_allowed.")
    detail: str


class NpcStateOut(BaseModel):
    trust: float = Field(description="0..1")
    relationship: float = Field(description="-1..1")
    mood: str
    quest_stage: str
    axes: dict[str, float] | None = Field(None, description="The game's extra state axes (`_game.yaml`); absent "
                                          "where the game declares none.")


class TurnOut(BaseModel):
    """The NPC's reply and what the game must apply (see README, "What a turn returns")."""

    text: str = Field(description="The NPC's reply, marker-free.")
    deltas: DeltasOut
    flags: list[FiredFlagOut] = Field(description="Flags that fired, with payloads.")
    flag_probs: dict[str, float] | None = Field(description="Flag head probabilities; null without state heads.")
    flags_rejected: list[RejectedFlagOut] = Field(description="Proposed flags the game rules refused, with reasons.")
    state: NpcStateOut = Field(description="The NPC's state towards the player after this turn.")
    meta: dict[str, Any] = Field(description="Model, seed, lore ids, stage timings, steps, turn number.")


class Decision(BaseModel):
    """The data of a streamed `decision` event: what the game applies this turn."""

    flags: list[FiredFlagOut]
    flags_rejected: list[RejectedFlagOut]
    deltas: DeltasOut


class TextPiece(BaseModel):
    """The data of a streamed `text` event."""

    text: str = Field(description="The next piece of the reply (marker-free).")


def _sse_event(name: str, schema_name: str) -> dict[str, Any]:
    data = {"type": "string", "contentMediaType": "application/json",
            "contentSchema": {"$ref": f"#/components/schemas/{schema_name}"}}
    return {"type": "object", "required": ["event", "data"],
            "properties": {"event": {"const": name}, "data": data, "id": {"type": "string"}}}


#: One event of the turn stream (OpenAPI 3.2 `itemSchema` of text/event-stream).
SSE_EVENT_SCHEMA = {"oneOf": [_sse_event("decision", "Decision"), _sse_event("text", "TextPiece"),
                              _sse_event("final", "TurnOut"),
                              _sse_event("error", "Problem")]}


# -- group scenes --------------------------------------------------------------------
#: The most NPCs (and other players) a scene turn names.
MAX_SCENE_MEMBERS = 16
SceneMember = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]


class SceneTurnRequest(TurnRequest):
    """One player line to a group scene: the NPCs present hear it, the framework chooses who
    answers. The context fields (location, items, actions, game_state, seed) are the
    single-NPC turn's and apply to every NPC; `quest_stage` is replaced by `quest_stages`."""

    quest_stage: None = Field(None, description="Not used in a scene: give `quest_stages`, per NPC.")
    npcs: list[SceneMember] = Field(
        min_length=1, max_length=MAX_SCENE_MEMBERS,
        description="The NPCs present, in the game's order (the turn rule's tie-break). Only they hear the line "
        "and the replies; an NPC not named is absent and hears nothing of this turn.")
    players: list[SceneMember] = Field(
        default_factory=list, max_length=MAX_SCENE_MEMBERS,
        description="Other players present: the NPCs' view of the scene shows their lines too (prefixed with "
        "their ids). Each player's state with each NPC stays their own.")
    addressed: list[SceneMember] = Field(
        default_factory=list, max_length=MAX_SCENE_MEMBERS,
        description="NPCs the game says the line is for (e.g. the one the player clicked), in speaking order; "
        "empty: the framework chooses (named in the line, else by topic, else whose turn it is).")
    max_speakers: int = Field(2, ge=1, le=MAX_SCENE_MEMBERS, description="At most this many NPCs answer the line.")
    quest_stages: dict[SceneMember, Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=NO_NUL)]] = \
        Field(default_factory=dict, max_length=MAX_SCENE_MEMBERS,
              description="The game's quest stage per NPC present; it wins over the stored stage.")


class SceneReplyOut(BaseModel):
    npc_id: str
    name: str
    reason: Literal["addressed", "topic", "turn"] = Field(
        description="Why this NPC answers: `addressed` (by the game or by name in the line), `topic` (the line is "
        "about what it knows), `turn` (the one who spoke least recently).")
    turn: TurnOut = Field(description="The NPC's turn, as POST /v1/npcs/{npc_id}/turns returns it.")


class SceneTurnOut(BaseModel):
    """A committed scene turn: every speaking NPC's turn, in speaking order."""

    scene_id: str
    player_id: str
    scene_turn: int = Field(description="The scene turn's number, counted per (scene, player).")
    present: list[str] = Field(description="The NPCs that heard the line and the replies.")
    speakers: list[str] = Field(description="The NPCs that answered, in speaking order.")
    reason: Literal["addressed", "topic", "turn"]
    choice: dict[str, Any] = Field(description="How the speakers were chosen (`detail.how`, `detail.topic_scores`).")
    replies: list[SceneReplyOut]


class SceneSpeakers(BaseModel):
    """The data of a streamed `speakers` event: who will answer, before anyone speaks."""

    speakers: list[str]
    reason: Literal["addressed", "topic", "turn"]
    detail: dict[str, Any]


class SceneText(BaseModel):
    """The data of a streamed scene `text` event: the next piece of one NPC's reply."""

    npc_id: str
    text: str


def _sse_inline(name: str, model: type[BaseModel]) -> dict[str, Any]:
    data = {"type": "string", "contentMediaType": "application/json", "contentSchema": model.model_json_schema()}
    return {"type": "object", "required": ["event", "data"],
            "properties": {"event": {"const": name}, "data": data, "id": {"type": "string"}}}


#: One event of the scene stream (`speakers` and `text` described inline: no response model holds them).
SCENE_SSE_EVENT_SCHEMA = {"oneOf": [_sse_inline("speakers", SceneSpeakers), _sse_inline("text", SceneText),
                                    _sse_event("reply", "SceneReplyOut"), _sse_event("final", "SceneTurnOut"),
                                    _sse_event("error", "Problem")]}


# -- NPCs and state ------------------------------------------------------------------
class NpcSummary(BaseModel):
    id: str
    name: str
    role: str
    location: str | None
    language: str
    traits: list[str]
    initial_state: NpcStateOut
    flags: list[str] = Field(description="Flags this NPC has rules for (the only ones that can fire by default).")


class NpcList(BaseModel):
    npcs: list[NpcSummary]


class NpcDetail(NpcSummary):
    steps: dict[str, list[str]] = Field(description="The NPC's pipeline: step names per stage, in order.")
    persona: dict[str, Any] = Field(description="The whole persona with _defaults.yaml merged in.")


class FlagFiredOut(BaseModel):
    flag: str
    turn: int


class ExchangeOut(BaseModel):
    player: str
    npc: str


class MemoryOut(BaseModel):
    id: int
    turn: int = Field(description="The turn it comes from (the teller's turn for word heard from another NPC).")
    kind: Literal["fact", "event", "heard"] = Field(
        description="`fact`: the player's own words about themselves; `event`: what the game did on that turn; "
        "`heard`: word from another NPC (`source`).")
    text: str
    source: str | None = Field(None, description="The NPC the word came from (kind `heard`).")
    visible_from: int = Field(0, description="Word on its way: the NPC knows it once the player has played this "
                              "many turns (with any NPC); 0: known now.")


class MemoryList(BaseModel):
    player_id: str
    npc_id: str
    memories: list[MemoryOut] = Field(description="Oldest first.")


class Forgotten(BaseModel):
    player_id: str
    npc_id: str
    removed: int


class PlayerNpcState(BaseModel):
    player_id: str
    npc_id: str
    state: NpcStateOut
    turns: int = Field(description="Turns played so far (0: nothing stored, the persona's initial state).")
    flags_fired: list[FlagFiredOut]
    history: list[ExchangeOut] = Field(description="The latest exchanges, oldest first (up to 50).")


# -- health --------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "starting", "unavailable"]
    database: Literal["ok", "unreachable"]
    npcs: dict[str, Literal["loading", "ready", "error"]] = Field(description="Pipeline warm-up per NPC.")
    errors: dict[str, str] = Field(default_factory=dict, description="Why an NPC could not be warmed up.")


# -- the seed's /ask -----------------------------------------------------------------
class _Open(BaseModel):
    """Seed shapes accept unknown keys: a game server written for the seed works unchanged."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


Named = Name | dict[str, JsonValue]


class AskPlayerState(_Open):
    items: list[Named] = Field(default_factory=list, max_length=MAX_LIST_ITEMS,
                               description="Item names, or objects with an `id` or `name`.")
    actions: list[Named] = Field(default_factory=list, max_length=MAX_LIST_ITEMS,
                                 description="Action names, or objects with an `id` or `name`.")
    location: str | None = Field(None, max_length=MAX_NAME_CHARS)
    position: JsonValue = Field(None, description="The seed's position: a place name, or coordinates (ignored).")


class AskGameState(_Open):
    quest_stage: str | None = Field(None, max_length=MAX_NAME_CHARS, pattern=NO_NUL)
    location: str | None = Field(None, max_length=MAX_NAME_CHARS, pattern=NO_NUL)


class AskNpcState(_Open):
    # The seed's data writes relationship as a label ("close_friend") or a number; both are
    # accepted, and neither is used: the store holds the NPC's state.
    trust: float | Name | None = None
    relationship: float | Name | None = None
    mood: str | None = Field(None, max_length=MAX_NAME_CHARS)
    quest_stage: str | None = Field(None, max_length=MAX_NAME_CHARS)


class AskContext(_Open):
    player_state: AskPlayerState = Field(default_factory=AskPlayerState)
    game_state: AskGameState = Field(default_factory=AskGameState)
    npc_state: AskNpcState = Field(default_factory=AskNpcState)


class AskMinDeltas(_Open):
    trust: float | None = None
    relationship: float | None = None


class AskRequire(_Open):
    """Conditions the game asks to hold for the reply to be `valid` (see persona_agents.server.ask)."""

    words: list[Name] = Field(default_factory=list, max_length=MAX_LIST_ITEMS,
                              description="Any of these in user_input.")
    items: list[Name] = Field(default_factory=list, max_length=MAX_LIST_ITEMS,
                              description="All held (player_state.items).")
    actions: list[Name] = Field(default_factory=list, max_length=MAX_LIST_ITEMS,
                                description="All done (player_state.actions).")
    game_state: dict[str, JsonValue] = Field(default_factory=dict, max_length=MAX_GAME_STATE_KEYS,
                                             description="Each key equals the sent game_state's value.")
    min_deltas: AskMinDeltas | None = Field(None, description="The turn's deltas reach at least these values.")


class AskExchange(_Open):
    player: str = Field("", max_length=MAX_UTTERANCE_CHARS)
    npc: str = Field("", max_length=MAX_UTTERANCE_CHARS)


class AskRequest(_Open):
    """The seed's game-server request (`POST /ask`)."""

    session_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                            description=f"The game's session: stands for the player. {ID_RULE}")
    npc_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="The NPC spoken to.")
    user_input: str = Field(min_length=1, max_length=MAX_UTTERANCE_CHARS, description="What the player says.")
    context: AskContext = Field(default_factory=AskContext)
    require: AskRequire | None = None
    npc_config: dict[str, JsonValue] | None = Field(None, description="Accepted and ignored: personas live in YAML.")
    dialogue_history: list[AskExchange] = Field(
        default_factory=list, max_length=100,
        description="Accepted; the stored history of (session, NPC) is used instead.",
    )
    request_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                                   description=f"Extension: idempotency key, as in /v1 turns. {ID_RULE}")


class AskDeltas(BaseModel):
    trust: float
    relationship: float


class AskResponse(BaseModel):
    """The seed's response shape."""

    session_id: str
    npc_output_text: str
    deltas: AskDeltas
    flags: dict[str, Literal[0, 1]] = Field(description="Every flag of the vocabulary: 1 fired this turn, 0 not.")
    valid: bool = Field(description="A reply was produced and every `require` condition holds.")
    meta: dict[str, Any] = Field(description="The turn's meta plus state, flag_payloads, flags_rejected, "
                                             "require_unmet and ignored_fields.")
