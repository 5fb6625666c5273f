"""One turn of a group scene: who answers, each speaker's own pipeline, one commit.

The game names the scene, the NPCs present and (optionally) other players present with
each scene turn; it stays the authority on who is where, and nothing about membership
is stored. A turn:

1. checks the request (every NPC present known, `addressed` among them) and holds the
   (player, NPC) turn lock of every NPC present, in id order;
2. chooses the speakers (speakers.py) from the line and who spoke last in the scene;
3. runs each speaker's own pipeline, in speaking order, on its own state, rules and
   memories, with the history it heard (hearing.py): the lines of the speakers before
   it this turn included;
4. commits every speaker's turn and the lines each NPC present heard in ONE transaction
   (`StateStore.commit_scene_turn`). Nothing is written before every pipeline has
   finished: a failure in any of them, or a killed process, leaves the store as before.

A repeated `request_id` answers the stored scene turn; another process committing first
for one of the speakers re-runs the whole scene turn on the new state.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from ..errors import InputError, ModelLoadError, RequestIdConflictError
from ..manager import MAX_TURN_ATTEMPTS, AgentManager, PlayedTurn, client_request, same_request
from ..store.store import ConcurrentTurnError, DuplicateRequestError, HeardLine, SceneLine
from ..streaming import stream_to
from ..turn import GameContext, TurnResponse, response_from_dict
from .hearing import scene_history
from .speakers import DEFAULT_MAX_SPEAKERS, SpeakerChoice, TopicIndex, choose_speakers

log = logging.getLogger("persona_agents.scenes")

#: The most NPCs one scene turn may hold.
MAX_SCENE_NPCS = 16


@dataclass(frozen=True)
class SceneReply:
    npc_id: str
    name: str
    reason: str
    response: TurnResponse

    def to_dict(self) -> dict[str, Any]:
        return {"npc_id": self.npc_id, "name": self.name, "reason": self.reason, "turn": self.response.to_dict()}


@dataclass(frozen=True)
class SceneResponse:
    """A committed scene turn: the replies in speaking order, who was present (heard)."""

    scene_id: str
    player_id: str
    scene_turn: int
    replies: tuple[SceneReply, ...]
    present: tuple[str, ...]
    choice: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        return {"scene_id": self.scene_id, "player_id": self.player_id, "scene_turn": self.scene_turn,
                "present": list(self.present), "speakers": [r.npc_id for r in self.replies],
                "reason": self.choice.get("reason"), "choice": dict(self.choice),
                "replies": [r.to_dict() for r in self.replies]}


def check_scene(manager: AgentManager, npcs: Sequence[str], addressed: Sequence[str] = (),
                quest_stages: Mapping[str, str] | None = None) -> None:
    """InputError naming the field for a scene request the game got wrong."""
    if not npcs:
        raise InputError("npcs", "name at least one NPC present in the scene")
    if len(npcs) > MAX_SCENE_NPCS:
        raise InputError("npcs", f"{len(npcs)} NPCs; a scene holds at most {MAX_SCENE_NPCS}")
    for index, npc_id in enumerate(npcs):
        if npc_id not in manager.personas:
            raise InputError(f"npcs.{index}", f"unknown NPC {npc_id!r}; available: {', '.join(manager.npc_ids())}")
        if npc_id in npcs[:index]:
            raise InputError(f"npcs.{index}", f"{npc_id!r} is named twice")
    for index, npc_id in enumerate(addressed):
        if npc_id not in npcs:
            raise InputError(f"addressed.{index}", f"{npc_id!r} is not in the scene; present: {', '.join(npcs)}")
    for npc_id, stage in (quest_stages or {}).items():
        if npc_id not in npcs:
            raise InputError(f"quest_stages.{npc_id}", f"{npc_id!r} is not in the scene; present: {', '.join(npcs)}")
        if stage not in manager.game.quest_stages:
            raise InputError(f"quest_stages.{npc_id}", f"unknown quest stage {stage!r}; valid quest stages: "
                             f"{', '.join(manager.game.quest_stages)}")


def topic_index(manager: AgentManager) -> TopicIndex:
    """The manager's topic index over its personas (made once, on the shared embedder)."""
    if manager.scene_topics is None:
        personas = {i: p.persona for i, p in manager.personas.items()}
        manager.scene_topics = TopicIndex(personas, lambda: manager.runtime.embedders.get("embedded"),
                                          manager.runtime.cache_dir / "scene-topics")
    return manager.scene_topics


@contextlib.contextmanager
def _locks(manager: AgentManager, player_id: str, npcs: Sequence[str]):
    with contextlib.ExitStack() as stack:
        for npc_id in sorted(npcs):
            stack.enter_context(manager._turn_lock(player_id, npc_id))
        yield


def _client(utterance: str, context: GameContext, seed: int | None, scene_id: str, npcs: Sequence[str],
            players: Sequence[str], addressed: Sequence[str], quest_stages: Mapping[str, str],
            max_speakers: int) -> dict[str, Any]:
    return {**client_request(utterance, context, seed), "scene": scene_id, "npcs": list(npcs),
            "players": sorted(players), "addressed": list(addressed),
            "quest_stages": dict(sorted(quest_stages.items())), "max_speakers": max_speakers}


def _stored(manager: AgentManager, scene_id: str, player_id: str, request_id: str,
            client: dict[str, Any]) -> SceneResponse | None:
    """The stored answer to a repeated request_id, None for a new one; RequestIdConflictError
    for an id used with another request."""
    records = manager.store.find_request_records(player_id, request_id)
    if not records:
        return None
    if not all((request.get("scene") or {}).get("id") == scene_id and same_request(request, client)
               for _, request, _ in records):
        raise RequestIdConflictError(request_id)
    records.sort(key=lambda r: r[1]["scene"]["position"])
    scene = records[0][1]["scene"]
    replies = tuple(SceneReply(npc, manager.get_persona(npc).persona.name, request["scene"]["reason"],
                               response_from_dict(response)) for npc, request, response in records)
    return SceneResponse(scene_id, player_id, scene["turn"], replies, tuple(scene["present"]),
                         MappingProxyType(scene.get("choice", {})))


def run_scene_turn(
    manager: AgentManager,
    scene_id: str,
    npcs: Sequence[str],
    utterance: str,
    player_id: str = "player",
    *,
    players: Sequence[str] = (),
    addressed: Sequence[str] = (),
    context: GameContext | None = None,
    quest_stages: Mapping[str, str] | None = None,
    seed: int | None = None,
    request_id: str | None = None,
    max_speakers: int = DEFAULT_MAX_SPEAKERS,
    topics: bool = True,
    on_choice: Callable[[SpeakerChoice], None] | None = None,
    on_text: Callable[[str, str], None] | None = None,
    on_reply: Callable[[SceneReply], None] | None = None,
) -> SceneResponse:
    """Run one scene turn and commit it (see the module docstring). `on_choice`, `on_text`
    (npc_id, piece) and `on_reply` report progress as it happens (the SSE stream); a reply
    reported is committed only once the call returns."""
    npcs, players, addressed = list(npcs), [p for p in players if p != player_id], list(addressed)
    quest_stages = dict(quest_stages or {})
    check_scene(manager, npcs, addressed, quest_stages)
    if max_speakers < 1:
        raise InputError("max_speakers", "at least 1")
    context = context or GameContext()
    for npc_id in npcs:
        manager.pipeline(npc_id)  # built before any lock is held
    client = _client(utterance, context, seed, scene_id, npcs, players, addressed, quest_stages, max_speakers)
    with _locks(manager, player_id, npcs):
        for attempt in range(MAX_TURN_ATTEMPTS):
            if request_id is not None:
                stored = _stored(manager, scene_id, player_id, request_id, client)
                if stored is not None:
                    return stored
            status = manager.store.scene_status(scene_id, player_id, players)
            choice = choose_speakers(npcs, {n: manager.get_persona(n).persona for n in npcs}, utterance,
                                     status.last_spoke, addressed=addressed, max_speakers=max_speakers,
                                     topic=_topic_scorer(manager) if topics else None)
            if on_choice is not None:
                on_choice(choice)
            played, said = _speak(manager, scene_id, npcs, utterance, player_id, players, choice, status.next_turn,
                                  context, quest_stages, seed, request_id, client, on_text, on_reply)
            lines = [SceneLine(i, line.speaker, line.speaker_name, line.player_text, line.text, tuple(npcs))
                     for i, line in enumerate(said)]
            try:
                manager.store.commit_scene_turn(scene_id, player_id, status.next_turn, [p.write for p in played],
                                                lines)
            except DuplicateRequestError:
                # Another process answered this request meanwhile: its answer is the answer.
                stored = _stored(manager, scene_id, player_id, request_id or "", client)
                if stored is not None:
                    return stored
                raise
            except ConcurrentTurnError:
                if attempt == MAX_TURN_ATTEMPTS - 1:
                    raise
                continue
            for turn in played:
                manager.host.hook.turn_completed(turn=turn.done, response=turn.response)
            replies = tuple(SceneReply(p.done.npc_id, manager.get_persona(p.done.npc_id).persona.name,
                                       choice.reason, p.response) for p in played)
            return SceneResponse(scene_id, player_id, status.next_turn, replies, tuple(npcs),
                                 MappingProxyType(choice.to_dict()))
    raise AssertionError("unreachable")  # pragma: no cover


def _speak(manager: AgentManager, scene_id: str, npcs: list[str], utterance: str, player_id: str,
           players: list[str], choice: SpeakerChoice, scene_turn: int, context: GameContext,
           quest_stages: Mapping[str, str], seed: int | None, request_id: str | None, client: dict[str, Any],
           on_text: Callable[[str, str], None] | None,
           on_reply: Callable[[SceneReply], None] | None) -> tuple[list[PlayedTurn], list[HeardLine]]:
    """Each speaker's pipeline, in speaking order, each hearing the ones before it; nothing
    is written. Returns the played turns and the lines said."""
    played: list[PlayedTurn] = []
    said: list[HeardLine] = []
    for position, npc_id in enumerate(choice.speakers):
        loaded = manager.get_persona(npc_id)
        convo = manager.conversation(player_id, npc_id)
        view = manager.store.scene_view(scene_id, npc_id, player_id, players)
        history = scene_history(npc_id, player_id, convo.history, convo.turns, view, said)
        scene = {"id": scene_id, "turn": scene_turn, "position": position, "reason": choice.reason,
                 "present": npcs, "choice": choice.to_dict()}
        stage = quest_stages.get(npc_id)
        npc_context = context if stage is None else GameContext(
            quest_stage=stage, location=context.location, items=context.items, actions=context.actions,
            game_state=context.game_state)
        with stream_to(_sink(on_text, npc_id)):
            turn = manager.play(manager.pipeline(npc_id), loaded, convo, npc_id, player_id, utterance, npc_context,
                                seed, request_id, client, history=history, scene=scene)
        played.append(turn)
        said.append(HeardLine(player_id, turn.done.utterance, npc_id, loaded.persona.name, turn.done.reply))
        if on_reply is not None:
            on_reply(SceneReply(npc_id, loaded.persona.name, choice.reason, turn.response))
    return played, said


def _sink(on_text: Callable[[str, str], None] | None, npc_id: str) -> Callable[[str], None] | None:
    """One speaker's text pieces, told with its id."""
    if on_text is None:
        return None
    report = on_text

    def sink(piece: str) -> None:
        report(npc_id, piece)
    return sink


def _topic_scorer(manager: AgentManager) -> Callable[[str, Sequence[str]], Mapping[str, float]]:
    """The topic rule's scores; without a sentence embedder the rule is skipped (logged),
    and who answers falls to the turn rule."""
    index = topic_index(manager)

    def scores(utterance: str, npcs: Sequence[str]) -> Mapping[str, float]:
        try:
            return index(utterance, npcs)
        except ModelLoadError as exc:
            log.warning("scene topics are off: %s", exc)
            return {}
    return scores
