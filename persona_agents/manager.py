"""The agent manager: personas, pipelines and conversations for one process.

It loads and validates every persona of a folder up front, builds each NPC's pipeline
on first use (sharing loaded models between NPCs), keeps each conversation's history
and state per (player, NPC), and turns a request into a TurnResponse. Plugins see each
turn through the `run_turn` wrapper hook and the `turn_completed` observer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UnknownNpcError
from .persona_loader import LoadedPersona, load_personas
from .pipeline import Pipeline
from .plugins import PluginHost, load_plugins
from .runtime import Runtime
from .turn import Exchange, GameContext, NpcState, Turn, TurnResponse


@dataclass
class Conversation:
    state: NpcState
    history: list[Exchange] = field(default_factory=list)
    turns: int = 0


def initial_state(loaded: LoadedPersona) -> NpcState:
    s = loaded.persona.initial_state
    return NpcState(trust=s.trust, relationship=s.relationship, mood=s.mood, quest_stage=s.quest_stage)


def clamp_state(state: NpcState, trust_delta: float, relationship_delta: float) -> NpcState:
    return NpcState(
        trust=min(1.0, max(0.0, state.trust + trust_delta)),
        relationship=min(1.0, max(-1.0, state.relationship + relationship_delta)),
        mood=state.mood,
        quest_stage=state.quest_stage,
    )


class AgentManager:
    def __init__(
        self,
        npcs_dir: str | Path = "npcs",
        plugins_dir: str | Path | None = None,
        host: PluginHost | None = None,
        runtime: Runtime | None = None,
    ):
        self.npcs_dir = Path(npcs_dir)
        # A studio's local plugins live beside its NPC folder unless told otherwise.
        self.plugins_dir = Path(plugins_dir) if plugins_dir is not None else self.npcs_dir.parent / "plugins"
        self.host = host or load_plugins(self.plugins_dir)
        self.runtime = runtime or Runtime(npcs_dir=self.npcs_dir)
        self.personas: dict[str, LoadedPersona] = load_personas(self.npcs_dir, self.host.registry)
        self._pipelines: dict[str, Pipeline] = {}
        self._conversations: dict[tuple[str, str], Conversation] = {}
        self._lock = threading.RLock()

    # -- personas and pipelines ------------------------------------------------------
    def npc_ids(self) -> list[str]:
        return sorted(self.personas)

    def get_persona(self, npc_id: str) -> LoadedPersona:
        try:
            return self.personas[npc_id]
        except KeyError:
            raise UnknownNpcError(npc_id, self.npc_ids(), str(self.npcs_dir)) from None

    def pipeline(self, npc_id: str) -> Pipeline:
        with self._lock:
            if npc_id not in self._pipelines:
                loaded = self.get_persona(npc_id)
                steps = {
                    stage: [self.host.registry.get(name).cls(options, loaded.persona, self.runtime) for name, options in entries]
                    for stage, entries in loaded.step_options.items()
                }
                self._pipelines[npc_id] = Pipeline(loaded.persona, steps)
            return self._pipelines[npc_id]

    def warm_up(self, npc_id: str) -> None:
        self.pipeline(npc_id).warm_up()

    # -- conversations ---------------------------------------------------------------
    def conversation(self, player_id: str, npc_id: str) -> Conversation:
        key = (player_id, npc_id)
        with self._lock:
            if key not in self._conversations:
                self._conversations[key] = Conversation(state=initial_state(self.get_persona(npc_id)))
            return self._conversations[key]

    def reset(self, player_id: str, npc_id: str) -> NpcState:
        with self._lock:
            self._conversations.pop((player_id, npc_id), None)
            return self.conversation(player_id, npc_id).state

    # -- turns -----------------------------------------------------------------------
    def turn(
        self,
        npc_id: str,
        utterance: str,
        player_id: str = "player",
        context: GameContext | None = None,
        seed: int | None = None,
    ) -> TurnResponse:
        pipeline = self.pipeline(npc_id)
        loaded = self.get_persona(npc_id)
        convo = self.conversation(player_id, npc_id)
        context = context or GameContext()
        state = convo.state
        if context.quest_stage:  # the game's own state wins over what we stored
            state = NpcState(state.trust, state.relationship, state.mood, context.quest_stage)
        turn = Turn(
            npc_id=npc_id,
            player_id=player_id,
            utterance=utterance,
            persona=loaded.persona,
            state=state,
            context=context,
            history=tuple(convo.history),
            turn_number=convo.turns + 1,
            seed=None if seed is None else seed + convo.turns,
        )
        done: Turn = self.host.hook.run_turn(turn=turn, pipeline=pipeline)
        new_state = clamp_state(state, done.deltas.trust, done.deltas.relationship)
        with self._lock:
            convo.state = new_state
            convo.history.append(Exchange(player=done.utterance, npc=done.reply))
            convo.turns += 1
        generation = done.generation
        response = TurnResponse(
            text=done.reply,
            deltas=done.deltas,
            flags=done.flags,
            flag_probs=generation.flag_probs if generation else None,
            flags_rejected=done.flags_rejected,
            state=new_state,
            meta={**done.meta, "npc_id": npc_id, "player_id": player_id, "turn": done.turn_number},
        )
        self.host.hook.turn_completed(turn=done, response=response)
        return response

    def describe(self, npc_id: str) -> dict[str, Any]:
        loaded = self.get_persona(npc_id)
        data = loaded.persona.model_dump(mode="json")
        data["_file"] = str(loaded.path)
        return data
