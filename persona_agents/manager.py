"""The agent manager: personas, pipelines and conversations for one process.

It loads and validates every persona of a folder up front, builds each NPC's pipeline
on first use (sharing loaded models between NPCs), and runs turns: it loads the
conversation from the state store, runs the pipeline through the `run_turn` hook, and
commits the result as one transaction. Nothing is written before the pipeline has
finished, so a failing turn leaves the store as it was. Turns for the same (player,
NPC) are ordered by a lock; turns for different players run in parallel.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .errors import InputError, MemoryNotFoundError, RequestIdConflictError, UnknownNpcError
from .game import DEFAULT_GAME, GameDefinition, load_game
from .memory import condense_turn
from .memory.word import word_of_turn
from .persona_loader import LoadedPersona, load_personas
from .pipeline import Pipeline
from .plugins import PluginHost, StepInfo, load_plugins
from .runtime import Runtime, plugins_dir_of
from .store import ConcurrentTurnError, StateStore, StoredConversation
from .store.store import DuplicateRequestError, TurnWrite
from .turn import Exchange, GameContext, Memory, NpcState, Turn, TurnResponse, response_from_dict

#: Attempts when another process commits a turn for the same (player, NPC) first.
MAX_TURN_ATTEMPTS = 5


@dataclass(frozen=True)
class PlayedTurn:
    """A turn that has run and is not yet written: the finished Turn, the response, and
    what committing it writes."""

    done: Turn
    response: TurnResponse
    write: TurnWrite


def initial_state(loaded: LoadedPersona, game: GameDefinition = DEFAULT_GAME) -> NpcState:
    s = loaded.persona.initial_state
    return NpcState(trust=s.trust, relationship=s.relationship, mood=s.mood, quest_stage=s.quest_stage,
                    axes=game.initial_axes())


def next_state(state: NpcState, turn: Turn, game: GameDefinition = DEFAULT_GAME) -> NpcState:
    """The state after a turn: deltas applied within range; the stage and the mood moved as
    the fired flags declare (the persona's rule first, then the game's event; the game's
    own stage in a request still wins on the next turn)."""
    stage, mood = state.quest_stage, state.mood
    trust = round(min(1.0, max(0.0, state.trust + turn.deltas.trust)), 6)
    relationship = round(min(1.0, max(-1.0, state.relationship + turn.deltas.relationship)), 6)
    for mood_rule in turn.persona.mood_rules:  # the feelings first: the first rule that holds
        if mood_rule.holds(trust, relationship):
            mood = mood_rule.mood
            break
    fired = [flag.name for flag in turn.flags]
    for name in fired:  # then what happened: an event's mood wins
        rule = turn.persona.flag_rules.get(name)
        mood = (rule.sets_mood if rule and rule.sets_mood else None) or mood
    stage = game.stage_after(stage, fired, turn.persona.flag_rules)
    axes = {name: round(state.axes.get(name, spec.initial) + turn.deltas.axes.get(name, 0.0), 6)
            for name, spec in game.extra_axes.items()}
    return NpcState(trust=trust, relationship=relationship, mood=mood, quest_stage=stage, axes=axes)


def _context_record(ctx: GameContext) -> dict[str, Any]:
    return {"quest_stage": ctx.quest_stage, "location": ctx.location, "items": list(ctx.items),
            "actions": list(ctx.actions), "game_state": dict(ctx.game_state)}


def client_request(utterance: str, context: GameContext, seed: int | None) -> dict[str, Any]:
    """What the client sent, as stored in a turn record's "client" key: the utterance before
    preprocessing and the seed before the turn offset, so a repeat can be recognised."""
    return {"utterance": utterance, "seed": seed, "context": _context_record(context)}


def request_record(turn: Turn, request_id: str | None, client: dict[str, Any] | None = None) -> dict[str, Any]:
    record = {"utterance": turn.utterance, "request_id": request_id, "seed": turn.seed,
              "context": _context_record(turn.context)}
    if client is not None:
        record["client"] = client
    return record


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=list))


def same_request(stored: dict[str, Any], client: dict[str, Any]) -> bool:
    """Does a stored turn record answer this client request (same utterance, context, seed)?

    Records written before the "client" key existed hold the preprocessed utterance and the
    effective seed: for those, the utterance is compared with whitespace collapsed and the
    seed is not compared."""
    if "client" in stored:
        return _json(stored["client"]) == _json(client)
    return (" ".join(str(stored.get("utterance", "")).split()) == " ".join(client["utterance"].split())
            and _json(stored.get("context")) == _json(client["context"]))


class AgentManager:
    def __init__(
        self,
        npcs_dir: str | Path = "npcs",
        plugins_dir: str | Path | None = None,
        host: PluginHost | None = None,
        runtime: Runtime | None = None,
        store: StateStore | None = None,
    ):
        self.npcs_dir = Path(npcs_dir)
        # A studio's local plugins live beside its NPC folder unless told otherwise.
        self.plugins_dir = plugins_dir_of(self.npcs_dir, plugins_dir)
        self.host = host or load_plugins(self.plugins_dir)
        self.runtime = runtime or Runtime(npcs_dir=self.npcs_dir)
        self.game: GameDefinition = load_game(self.npcs_dir)
        self.personas: dict[str, LoadedPersona] = load_personas(self.npcs_dir, self.host.registry)
        # Without a store, conversations live as long as this process.
        self.store = store or StateStore.in_memory()
        self._pipelines: dict[str, Pipeline] = {}
        self._lock = threading.Lock()
        #: (player, NPC) -> [lock, threads holding or waiting on it]; an entry goes away at zero.
        self._turn_locks: dict[tuple[str, str], list] = {}
        #: Group scenes' topic index (persona_agents/scenes/speakers.py), made on first use.
        self.scene_topics: Any = None

    # -- personas and pipelines ------------------------------------------------------
    def npc_ids(self) -> list[str]:
        return sorted(self.personas)

    def get_persona(self, npc_id: str) -> LoadedPersona:
        try:
            return self.personas[npc_id]
        except KeyError:
            raise UnknownNpcError(npc_id, self.npc_ids(), str(self.npcs_dir)) from None

    def pipeline(self, npc_id: str) -> Pipeline:
        loaded = self.get_persona(npc_id)
        with self._lock:
            if npc_id not in self._pipelines:
                registry = self.host.registry
                steps = {
                    # the step names were checked when the personas loaded
                    stage: [cast(StepInfo, registry.get(name)).cls(options, loaded.persona, self.runtime)
                            for name, options in entries]
                    for stage, entries in loaded.step_options.items()
                }
                self._pipelines[npc_id] = Pipeline(loaded.persona, steps, self.game)
            return self._pipelines[npc_id]

    def warm_up(self, npc_id: str) -> None:
        self.pipeline(npc_id).warm_up()

    # -- conversations ---------------------------------------------------------------
    def conversation(self, player_id: str, npc_id: str) -> StoredConversation:
        return self.store.load(player_id, npc_id, initial_state(self.get_persona(npc_id), self.game))

    def _memories_of(self, done: Turn) -> list[Memory]:
        descriptions = {name: event.description for name, event in self.game.events.items()}
        return condense_turn(done.turn_number, done.utterance, done.flags, descriptions)

    def memories(self, player_id: str, npc_id: str) -> tuple[Memory, ...]:
        """Every memory the NPC holds about the player, oldest first (the game may inspect them)."""
        self.get_persona(npc_id)
        return self.store.memories(player_id, npc_id)

    def forget(self, player_id: str, npc_id: str, memory_id: int | None = None) -> int:
        """Delete one memory, or all the NPC holds about the player; returns how many."""
        self.get_persona(npc_id)
        with self._turn_lock(player_id, npc_id):
            removed = self.store.forget(player_id, npc_id, memory_id)
        if memory_id is not None and removed == 0:
            raise MemoryNotFoundError(player_id, npc_id, memory_id)
        return removed

    def reset(self, player_id: str, npc_id: str) -> NpcState:
        self.get_persona(npc_id)
        with self._turn_lock(player_id, npc_id):
            self.store.reset(player_id, npc_id)
        return self.conversation(player_id, npc_id).state

    @contextmanager
    def _turn_lock(self, player_id: str, npc_id: str):
        """Hold the (player, NPC) turn lock; the table keeps only keys in use (refcounted)."""
        key = (player_id, npc_id)
        with self._lock:
            entry = self._turn_locks.get(key)
            if entry is None:
                entry = self._turn_locks[key] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._turn_locks[key]

    # -- turns -----------------------------------------------------------------------
    def turn(
        self,
        npc_id: str,
        utterance: str,
        player_id: str = "player",
        context: GameContext | None = None,
        seed: int | None = None,
        request_id: str | None = None,
    ) -> TurnResponse:
        """Run one turn and commit it. A repeated `request_id` with the same request returns the
        stored response; with a different request it raises RequestIdConflictError."""
        pipeline = self.pipeline(npc_id)
        loaded = self.get_persona(npc_id)
        context = context or GameContext()
        if context.quest_stage and context.quest_stage not in self.game.quest_stages:
            # The game's own stage must be one it declared: a typo would silently close every stage gate.
            raise InputError("quest_stage", f"unknown quest stage {context.quest_stage!r}; valid quest stages: "
                             f"{', '.join(self.game.quest_stages)}")
        client = client_request(utterance, context, seed)
        with self._turn_lock(player_id, npc_id):
            for attempt in range(MAX_TURN_ATTEMPTS):
                if request_id is not None:
                    found = self.store.find_request_and_response(player_id, npc_id, request_id)
                    if found is not None:
                        stored_request, stored_response = found
                        if not same_request(stored_request, client):
                            raise RequestIdConflictError(request_id)
                        return response_from_dict(stored_response)
                convo = self.store.load(player_id, npc_id, initial_state(loaded, self.game))
                try:
                    return self._run_and_commit(pipeline, loaded, convo, npc_id, player_id, utterance, context, seed,
                                                request_id, client)
                except DuplicateRequestError:
                    continue  # another process answered this request: return its response
                except ConcurrentTurnError:
                    if attempt == MAX_TURN_ATTEMPTS - 1:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_and_commit(self, pipeline, loaded, convo, npc_id, player_id, utterance, context, seed, request_id,
                        client=None):
        played = self.play(pipeline, loaded, convo, npc_id, player_id, utterance, context, seed, request_id, client)
        self.store.write_turn(played.write)
        self.host.hook.turn_completed(turn=played.done, response=played.response)
        return played.response

    def play(self, pipeline: Pipeline, loaded: LoadedPersona, convo: StoredConversation, npc_id: str,
             player_id: str, utterance: str, context: GameContext, seed: int | None, request_id: str | None,
             client: dict[str, Any] | None = None, history: tuple[Exchange, ...] | None = None,
             scene: dict[str, Any] | None = None) -> PlayedTurn:
        """Run one NPC's turn on a loaded conversation and return what it would write,
        without writing it (a group scene commits several together). `history` replaces
        the stored one (what the NPC heard in a scene); `scene` goes into the turn record
        and the response's meta."""
        state = convo.state
        if context.quest_stage:  # the game's own state wins over what we stored
            state = dataclasses.replace(state, quest_stage=context.quest_stage)
        turn = Turn(
            npc_id=npc_id,
            player_id=player_id,
            utterance=utterance,
            persona=loaded.persona,
            state=state,
            context=context,
            history=convo.history if history is None else history,
            turn_number=convo.turns + 1,
            seed=None if seed is None else seed + convo.turns,
            flag_history=convo.flag_history,
            delta_history=convo.delta_history,
            memories=convo.memories,
        )
        done: Turn = self.host.hook.run_turn(turn=turn, pipeline=pipeline)
        new_state = next_state(state, done, self.game)
        generation = done.generation
        extra = {"scene": scene} if scene is not None else {}
        response = TurnResponse(
            text=done.reply,
            deltas=done.deltas,
            flags=done.flags,
            flag_probs=generation.flag_probs if generation else None,
            flags_rejected=done.flags_rejected,
            state=new_state,
            meta={**done.meta, "npc_id": npc_id, "player_id": player_id, "turn": done.turn_number, **extra},
        )
        write = TurnWrite(
            player_id, npc_id, convo.version, new_state, done.turn_number,
            Exchange(player=done.utterance, npc=done.reply),
            tuple((f.name, f.payload) for f in done.flags),
            {**request_record(done, request_id, client), **extra}, response.to_dict(), request_id,
            memories=tuple(self._memories_of(done)) if loaded.persona.memory.condense == "rules" else (),
            heard=tuple(word_of_turn(self.game, {i: p.persona for i, p in self.personas.items()}, npc_id,
                                     done.turn_number, done.utterance, done.flags)),
        )
        return PlayedTurn(done, response, write)

    # -- group scenes ----------------------------------------------------------------
    def scene_turn(self, scene_id: str, npcs: list[str] | tuple[str, ...], utterance: str,
                   player_id: str = "player", **options: Any):
        """Play one turn of a group scene and commit it atomically; returns a SceneResponse.
        See persona_agents/scenes/runner.py (`run_scene_turn`) for the options."""
        from .scenes.runner import run_scene_turn

        return run_scene_turn(self, scene_id, npcs, utterance, player_id, **options)
