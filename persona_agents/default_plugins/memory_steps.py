"""`recall_memories` (retrieve, after the lore steps): what the NPC remembers about this
player, beyond the history window, into the prompt's lore lines.

The memories (persona_agents/memory/) the store loaded with the conversation are ranked
by meaning against the player's line (all-MiniLM-L6-v2 cosine, as `faiss_lore` ranks
lore); those within the history window the prompt already shows are left out, and the
best that pass `min_score` and fit `max_memory_tokens` are added after the lore as
"You remember (turn N): ..." lines. A memory quotes the player, so its text is
neutralised like any player text before it reaches the prompt.
`meta["memories"]` lists the ids and scores used.
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock
from typing import Any

from pydantic import Field

from persona_agents.hookspecs import hookimpl
from persona_agents.lore.retrieval import estimate_tokens
from persona_agents.markers import neutralize
from persona_agents.steps import Step, StepOptions
from persona_agents.turn import LoreChunk, Memory, Turn

#: Memory vectors kept per step (a memory's text never changes, so it is encoded once).
VECTOR_CACHE = 4096


def memory_line(memory: Memory) -> str:
    heard = f" (heard from {memory.source})" if memory.source else ""
    return f"You remember{heard} (turn {memory.turn}): {neutralize(memory.text)}"


class RecallMemories(Step):
    name = "recall_memories"
    stage = "retrieve"
    description = ("What the NPC remembers about the player beyond the history window (facts the player "
                   "stated, events, word from other NPCs), the closest in meaning to the line, into the lore lines.")

    class Options(StepOptions):
        k: int = Field(2, ge=1, le=20, description="How many memories at most.")
        min_score: float = Field(0.35, ge=-1.0, le=1.0,
                                 description="Cosine similarity a memory needs to the player's line.")
        max_memory_tokens: int = Field(80, ge=1, le=4096, description="Token budget of the memory lines "
                                       "(words plus punctuation marks, as for lore).")
        skip_recent_turns: int = Field(4, ge=0, le=50, description="Memories from the last N turns are left "
                                       "out: the prompt's history shows those exchanges already (match the "
                                       "prompt step's history_turns).")
        embedder: str = Field("embedded", description="Sentence-transformers model, as for `faiss_lore`.")

    options: Options

    def __init__(self, options, persona, runtime):
        super().__init__(options, persona, runtime)
        self._embedder = None
        self._vectors: OrderedDict[str, Any] = OrderedDict()
        self._lock = Lock()

    def warm_up(self) -> None:
        self._embedder = self.runtime.embedders.get(self.options.embedder)

    def _vectors_of(self, texts: list[str]):
        import numpy as np

        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            fresh = self._embedder.encode(missing)
            with self._lock:
                for text, vector in zip(missing, fresh):
                    self._vectors[text] = vector
                while len(self._vectors) > VECTOR_CACHE:
                    self._vectors.popitem(last=False)
        with self._lock:
            return np.stack([self._vectors[t] for t in texts])

    def run(self, turn: Turn) -> Turn:
        window_start = turn.turn_number - self.options.skip_recent_turns
        # Word heard from others is never in this conversation's history (its turn is the teller's).
        candidates = [m for m in turn.memories if m.kind == "heard" or m.turn < window_start]
        if not candidates:
            return turn.with_meta(memories=[])
        if self._embedder is None:
            self.warm_up()
        query = self._embedder.encode([turn.utterance])[0]
        scores = self._vectors_of([m.text for m in candidates]) @ query
        ranked = sorted(zip(candidates, scores.tolist()), key=lambda pair: (-pair[1], -pair[0].turn))
        kept: list[tuple[Memory, float, str]] = []
        used = 0
        for memory, score in ranked:
            if score < self.options.min_score or len(kept) == self.options.k:
                break
            line = memory_line(memory)
            cost = estimate_tokens(line)
            if used + cost <= self.options.max_memory_tokens:
                kept.append((memory, score, line))
                used += cost
        chunks = tuple(LoreChunk(f"memory:{m.id}", line, round(score, 4)) for m, score, line in kept)
        return turn.replace(lore=turn.lore + chunks).with_meta(
            memories=[{"id": m.id, "turn": m.turn, "score": round(score, 4)} for m, score, _ in kept])


@hookimpl
def register_steps(register):
    register(RecallMemories)
