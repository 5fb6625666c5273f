"""The endpoints. Turns run in the scheduler's turn pool (scheduler.py: per-player
queues, a bounded wait), reads and health checks in anyio's own threads, never on the
event loop.

`AgentManager.turn` orders turns per (player, NPC) and commits each one atomically, so
concurrent requests for different players run side by side and requests for the same
player and NPC run one after the other.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Callable

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import InputError
from ..game import GameDefinition
from ..manager import AgentManager, initial_state
from ..persona_loader import LoadedPersona
from ..scenes.runner import check_scene
from ..streaming import decisions_to, stream_to
from ..turn import GameContext
from .ask import ask_field, ask_response, ask_to_turn
from .problems import Problem, describe_exception
from .scheduler import Ticket
from .schemas import (
    ID_PATTERN,
    MAX_ID_CHARS,
    SCENE_SSE_EVENT_SCHEMA,
    SSE_EVENT_SCHEMA,
    AskRequest,
    AskResponse,
    Forgotten,
    Health,
    MemoryList,
    NpcDetail,
    NpcList,
    PlayerNpcState,
    Readiness,
    SceneTurnOut,
    SceneTurnRequest,
    TurnOut,
    TurnRequest,
)

router = APIRouter()

NpcId = Annotated[str, Path(max_length=MAX_ID_CHARS, description="The NPC's id (GET /v1/npcs lists them).")]
PlayerId = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN, description="The player's id.")]

_DESCRIPTIONS = {
    401: "Missing or wrong API key.", 404: "Unknown NPC (the problem lists the available ids).",
    409: "Another server process kept winning the race for this player and NPC; retry (code concurrent_turn). "
         "Or the request_id was already used for this player and NPC with a different request (utterance, "
         "context or seed); send a new request_id (code request_id_conflict, field request_id).",
    413: "Request body too large.", 422: "Invalid request; `field` names the bad field.",
    429: "The player is over the rate limit, or already has as many turns running and queued as allowed; "
         "see Retry-After.", 500: "Internal error (details in the server log).",
    503: "The model or the state database is unavailable, or the turn queue is full (see Retry-After).",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before the next turn.", "schema": {"type": "integer"}}}
_RETRY_CODES = (429, 503)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses (served as application/problem+json; see app.py)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": Problem, "description": _DESCRIPTIONS[code]}
        if code in _RETRY_CODES:
            out[code]["headers"] = _RETRY_AFTER
    return out


TURN_ERRORS = errors(401, 404, 409, 413, 422, 429, 500, 503)
READ_ERRORS = errors(401, 404, 422, 500, 503)


def _manager(request: Request) -> AgentManager:
    return request.app.state.manager


def _context(body: TurnRequest) -> GameContext:
    return GameContext(quest_stage=body.quest_stage, location=body.location, items=tuple(body.items),
                       actions=tuple(body.actions), game_state=dict(body.game_state))


def _admit(request: Request, npc_id: str, player_id: str, field: str = "player_id") -> tuple[AgentManager, Ticket]:
    """404 for an unknown NPC (before it counts against the limit), the rate limit, then
    the scheduler's admission (429 for a player with too many turns in flight, 503 for a
    full queue); the ticket runs the turn in the turn pool (scheduler.py)."""
    manager = _manager(request)
    manager.get_persona(npc_id)
    request.app.state.limiter.hit(player_id, field)
    return manager, request.app.state.scheduler.admit(player_id, field)


#: Responses leave out the fields the route did not set: a game without extra state axes
#: gets no `axes` keys (rather than nulls) in deltas and states.
ONLY_SET: dict[str, Any] = {"response_model_exclude_unset": True}


# -- turns ---------------------------------------------------------------------------
@router.post("/v1/npcs/{npc_id}/turns", response_model=TurnOut, **ONLY_SET, responses=TURN_ERRORS, tags=["turns"],
             summary="Play one turn: the NPC's reply, deltas, flags and state")
async def create_turn(npc_id: NpcId, body: TurnRequest, request: Request) -> dict[str, Any]:
    manager, ticket = _admit(request, npc_id, body.player_id)
    response = await ticket.run(
        manager.turn, npc_id, body.utterance, player_id=body.player_id, context=_context(body),
        seed=body.seed, request_id=body.request_id,
    )
    return response.to_dict()


class SSEResponse(StreamingResponse):
    # Not fastapi.sse.EventSourceResponse: that one makes FastAPI expect a generator endpoint.
    media_type = "text/event-stream"


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode("utf-8")


@router.post(
    "/v1/npcs/{npc_id}/turns/stream", response_class=SSEResponse, tags=["turns"],
    summary="Play one turn as Server-Sent Events",
    description="Events: one `decision` (the flags with payloads, refused flags and deltas the game applies; "
    "before any text where the NPC decides before it speaks), `text` (`{\"text\": piece}`, marker-free, as soon "
    "as tokens exist, or the whole reply once postprocessing has passed it), then one `final` "
    "(the whole turn body, as POST /turns returns it; its `text` is the full reply after postprocessing) or one "
    "`error` (a problem body, e.g. status 422 for an utterance over the NPC's limit). An unknown NPC, a bad "
    "body, a missing key or the rate limit are answered before the stream starts, with a problem response.",
    responses={200: {"description": "text/event-stream: decision, text..., then final; or error.",
                     "content": {"text/event-stream": {"itemSchema": SSE_EVENT_SCHEMA}}}, **TURN_ERRORS},
)
async def stream_turn(npc_id: NpcId, body: TurnRequest, request: Request) -> SSEResponse:
    manager, ticket = _admit(request, npc_id, body.player_id)

    def work(put: Callable[[str, Any], None]):
        # Text as tokens are generated; the decision once, as soon as the game has decided.
        with stream_to(lambda piece: put("text", {"text": piece})), decisions_to(lambda d: put("decision", d)):
            return manager.turn(npc_id, body.utterance, player_id=body.player_id, context=_context(body),
                                seed=body.seed, request_id=body.request_id)

    return _stream(request, ticket, work)


def _stream(request: Request, ticket: Ticket, work: Callable[[Callable[[str, Any], None]], Any]) -> SSEResponse:
    """Server-Sent Events of a turn run by `ticket`: `work(put)` runs in a worker thread and
    calls `put(event, data)` as it goes; its result is the `final` event, an exception the
    `error` event (a problem body). The turn runs to its end even if the client goes away:
    it is committed like any other."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    path = request.url.path

    def put(kind: str, data: Any) -> None:  # called in the worker thread
        loop.call_soon_threadsafe(queue.put_nowait, (kind, data))

    async def produce() -> None:
        try:
            response = await ticket.run(work, put)
            queue.put_nowait(("final", response.to_dict()))
        except Exception as exc:  # noqa: BLE001 - becomes an `error` event with a problem body
            queue.put_nowait(("error", describe_exception(exc, path)[1]))

    task = asyncio.create_task(produce())
    tasks: set = request.app.state.background_tasks
    tasks.add(task)
    task.add_done_callback(tasks.discard)

    async def events():
        while True:
            kind, data = await queue.get()
            yield _sse(kind, data)
            if kind in ("final", "error"):
                return

    return SSEResponse(events(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- group scenes --------------------------------------------------------------------
SceneId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                              description="The game's id of the scene: its lines are kept per scene.")]
SCENE_ERRORS = errors(401, 409, 413, 422, 429, 500, 503)
_SCENE_NOTE = ("The NPCs present are named with each turn (`npcs`): only they hear the line and the replies. Who "
               "answers: the NPCs in `addressed`, else those named in the line, else the one whose topics the line "
               "is about, else the one who spoke least recently; at most `max_speakers`. Each runs its own "
               "pipeline on its own state; the scene turn is committed in one transaction, or not at all. An NPC "
               "in `npcs` that is not served is a 422 naming `npcs.<index>`.")


def _scene_options(body: SceneTurnRequest) -> dict[str, Any]:
    return {"players": body.players, "addressed": body.addressed, "context": _context(body),
            "quest_stages": body.quest_stages, "seed": body.seed, "request_id": body.request_id,
            "max_speakers": body.max_speakers}


def _admit_scene(request: Request, body: SceneTurnRequest) -> tuple[AgentManager, Ticket]:
    """As `_admit`: the request's NPCs checked first (422 naming the field), then the rate
    limit and the scheduler. A scene turn is one of the player's turns for both."""
    manager = _manager(request)
    check_scene(manager, body.npcs, body.addressed, body.quest_stages)
    request.app.state.limiter.hit(body.player_id, "player_id")
    return manager, request.app.state.scheduler.admit(body.player_id, "player_id")


@router.post("/v1/scenes/{scene_id}/turns", response_model=SceneTurnOut, **ONLY_SET, responses=SCENE_ERRORS,
             tags=["scenes"],
             summary="Play one turn of a group scene: who answers, and each speaking NPC's turn",
             description=_SCENE_NOTE)
async def create_scene_turn(scene_id: SceneId, body: SceneTurnRequest, request: Request) -> dict[str, Any]:
    manager, ticket = _admit_scene(request, body)
    response = await ticket.run(manager.scene_turn, scene_id, body.npcs, body.utterance, body.player_id,
                                **_scene_options(body))
    return response.to_dict()


@router.post(
    "/v1/scenes/{scene_id}/turns/stream", response_class=SSEResponse, tags=["scenes"],
    summary="Play one turn of a group scene as Server-Sent Events",
    description=_SCENE_NOTE + " Events: one `speakers` (who will answer and why), `text` (`{\"npc_id\", \"text\"}`: "
    "the next piece of that NPC's reply, speakers one after another), one `reply` per NPC as it finishes (as in "
    "`replies` of POST /turns; not yet committed), then one `final` (the committed scene turn, as POST /turns "
    "returns it) or one `error` (a problem body: nothing of the scene turn was written).",
    responses={200: {"description": "text/event-stream: speakers, text..., reply..., then final; or error.",
                     "content": {"text/event-stream": {"itemSchema": SCENE_SSE_EVENT_SCHEMA}}}, **SCENE_ERRORS},
)
async def stream_scene_turn(scene_id: SceneId, body: SceneTurnRequest, request: Request) -> SSEResponse:
    manager, ticket = _admit_scene(request, body)

    def work(put: Callable[[str, Any], None]):
        return manager.scene_turn(
            scene_id, body.npcs, body.utterance, body.player_id, **_scene_options(body),
            on_choice=lambda choice: put("speakers", choice.to_dict()),
            on_text=lambda npc_id, piece: put("text", {"npc_id": npc_id, "text": piece}),
            on_reply=lambda reply: put("reply", reply.to_dict()))

    return _stream(request, ticket, work)


@router.post("/ask", response_model=AskResponse, responses=TURN_ERRORS, tags=["seed compatibility"],
             summary="The seed engine's /ask: one turn in the seed's request and response shapes",
             description="`session_id` stands for the player. See persona_agents/server/ask.py for the full mapping.")
async def ask(body: AskRequest, request: Request) -> dict[str, Any]:
    context, ignored = ask_to_turn(body)
    manager, ticket = _admit(request, body.npc_id, body.session_id, field="session_id")
    try:
        response = await ticket.run(
            manager.turn, body.npc_id, body.user_input, player_id=body.session_id, context=context,
            request_id=body.request_id,
        )
    except InputError as exc:
        field = ask_field(exc.field)
        if field == exc.field:
            raise
        raise InputError(field, str(exc).removeprefix(f"{exc.field}: ")) from None  # the seed's names for them
    return ask_response(body, context, response, ignored, manager.game.event_names)


# -- NPCs ----------------------------------------------------------------------------
def _summary(loaded: LoadedPersona, game: GameDefinition) -> dict[str, Any]:
    p = loaded.persona
    return {"id": p.id, "name": p.name, "role": p.role.strip(), "location": p.location, "language": p.language,
            "traits": list(p.traits), "initial_state": initial_state(loaded, game).to_dict(),
            "flags": sorted(p.flag_rules)}


@router.get("/v1/npcs", response_model=NpcList, **ONLY_SET, responses=errors(401, 500), tags=["npcs"],
            summary="The NPCs served")
async def list_npcs(request: Request) -> dict[str, Any]:
    manager = _manager(request)
    return {"npcs": [_summary(manager.get_persona(i), manager.game) for i in manager.npc_ids()]}


@router.get("/v1/npcs/{npc_id}", response_model=NpcDetail, **ONLY_SET, responses=READ_ERRORS, tags=["npcs"],
            summary="One NPC: its persona (defaults merged) and pipeline")
async def get_npc(npc_id: NpcId, request: Request) -> dict[str, Any]:
    manager = _manager(request)
    loaded = manager.get_persona(npc_id)
    steps = {stage: [name for name, _ in entries] for stage, entries in loaded.step_options.items()}
    return {**_summary(loaded, manager.game), "steps": steps, "persona": loaded.persona.model_dump(mode="json")}


# -- per-player state ----------------------------------------------------------------
def _state_body(manager: AgentManager, player_id: str, npc_id: str) -> dict[str, Any]:
    convo = manager.conversation(player_id, npc_id)
    fired = sorted(((turn, flag) for flag, turns in convo.flag_history.items() for turn in turns))
    return {"player_id": player_id, "npc_id": npc_id, "state": convo.state.to_dict(), "turns": convo.turns,
            "flags_fired": [{"flag": flag, "turn": turn} for turn, flag in fired],
            "history": [{"player": e.player, "npc": e.npc} for e in convo.history]}


@router.get("/v1/players/{player_id}/npcs/{npc_id}/state", response_model=PlayerNpcState, **ONLY_SET,
            responses=READ_ERRORS,
            tags=["state"], summary="The NPC's stored state towards a player, fired flags and recent history")
def get_state(player_id: PlayerId, npc_id: NpcId, request: Request) -> dict[str, Any]:
    return _state_body(_manager(request), player_id, npc_id)


@router.delete("/v1/players/{player_id}/npcs/{npc_id}/state", response_model=PlayerNpcState, **ONLY_SET,
               responses=READ_ERRORS, tags=["state"],
               summary="Forget the conversation: state, history, flags and turn records; returns the initial state")
def delete_state(player_id: PlayerId, npc_id: NpcId, request: Request) -> dict[str, Any]:
    manager = _manager(request)
    manager.reset(player_id, npc_id)
    return _state_body(manager, player_id, npc_id)


# -- long-term memories ----------------------------------------------------------------
@router.get("/v1/players/{player_id}/npcs/{npc_id}/memories", response_model=MemoryList, responses=READ_ERRORS,
            tags=["state"], summary="What the NPC remembers about the player beyond the history window")
def get_memories(player_id: PlayerId, npc_id: NpcId, request: Request) -> dict[str, Any]:
    memories = _manager(request).memories(player_id, npc_id)
    return {"player_id": player_id, "npc_id": npc_id, "memories": [m.to_dict() for m in memories]}


@router.delete("/v1/players/{player_id}/npcs/{npc_id}/memories", response_model=Forgotten, responses=READ_ERRORS,
               tags=["state"], summary="Forget everything the NPC remembers about the player (state and history stay)")
def delete_memories(player_id: PlayerId, npc_id: NpcId, request: Request) -> dict[str, Any]:
    return {"player_id": player_id, "npc_id": npc_id, "removed": _manager(request).forget(player_id, npc_id)}


@router.delete("/v1/players/{player_id}/npcs/{npc_id}/memories/{memory_id}", response_model=Forgotten,
               responses=READ_ERRORS, tags=["state"], summary="Forget one memory (a studio correcting what an NPC "
               "believes)")
def delete_memory(player_id: PlayerId, npc_id: NpcId, memory_id: Annotated[int, Path(ge=1)],
                  request: Request) -> dict[str, Any]:
    removed = _manager(request).forget(player_id, npc_id, memory_id)
    return {"player_id": player_id, "npc_id": npc_id, "removed": removed}


# -- health --------------------------------------------------------------------------
@router.get("/healthz", response_model=Health, tags=["health"], summary="Liveness: the process is up (no key needed)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, tags=["health"],
            responses={503: {"model": Readiness,
                             "description": "Still warming up, or a model or the database is unavailable."},
                       **errors(401)},
            summary="Readiness: every NPC's pipeline warmed up and the database reachable")
async def readyz(request: Request):
    warm = request.app.state.warmup
    database = "ok" if await run_in_threadpool(_database_ok, _manager(request)) else "unreachable"
    npcs, failures = warm.snapshot()
    if database != "ok" or failures:
        status = "unavailable"
    elif all(s == "ready" for s in npcs.values()):
        status = "ready"
    else:
        status = "starting"
    body = {"status": status, "database": database, "npcs": npcs, "errors": failures}
    return JSONResponse(body, status_code=200 if status == "ready" else 503)


def _database_ok(manager: AgentManager) -> bool:
    try:
        manager.store.count("states")
        return True
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False
