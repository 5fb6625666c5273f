"""`authored_lines` (postprocess, after `game_rules`): the writers' own lines, where they fit.

A persona's `lines:` are lines its writers wrote, each with when it fits: the events
that fired this turn (`events`, exactly), a refusal the game made (`refuses`), quest
stages, trust and relationship bounds, and example player lines matched by meaning. By
the time this step runs the game has decided (the heads proposed, `game_rules` approved
or refused), so the line is chosen to agree with the decision:

- a line whose `events` are not exactly the fired flags never fits, so a hand-over line
  is never said on a refusal and a refusal never on a hand-over;
- a line that `refuses` a flag fits only when the game refused that flag this turn;
- among the lines that fit, the one whose examples (or text) are closest in meaning to
  the player's line wins, a refusal line first where the game refused something, and a
  line said in the last few exchanges loses out.

Modes (option `mode`):
- `authored`: say the best fitting line verbatim; the model's reply only when none fits
  (an event-bound line needs less similarity than small talk: the decision already says
  it fits).
- `grounded`: the model writes the reply with the best fitting lines in its prompt
  (`<LINES>` after the decision, sectioned version 2; the adapter is trained to stay close
  to them); as in `free`, a line replaces a reply that is empty or breaks the world.
- `free`: keep the model's reply; a line replaces it only when the reply is empty or
  breaks the world's guard (a word that does not belong in the world).

`meta.reply_source` says `authored` (with `meta.line_id` and its score) or `model`;
`meta.reply_guard` says why a model reply was replaced or kept despite the guard.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from persona_agents.hookspecs import hookimpl
from persona_agents.persona import AuthoredLine
from persona_agents.steps import Step, StepOptions
from persona_agents.turn import Turn, effective_stage

#: Words that do not belong in a pre-modern fantasy world; extend per NPC with the
#: step's `forbidden_words` option.
OUT_OF_WORLD_WORDS = (
    "phone", "telephone", "smartphone", "internet", "online", "computer", "laptop", "video game", "videogame",
    "social media", "email", "e-mail", "website", "app", "television", "tv", "radio", "car", "cars", "airplane",
    "train station", "electricity", "wifi", "wi-fi", "selfie", "text me", "facebook", "instagram",
    "twitter", "youtube", "google", "ai", "chatbot", "language model", "netflix", "dollars",
)
#: Replies said in the last N exchanges lose this much score (no line on repeat).
RECENT_EXCHANGES = 4
RECENT_PENALTY = 0.25
REFUSAL_BONUS = 0.15


def forbidden_pattern(words) -> re.Pattern:
    escaped = sorted((re.escape(w.lower()) for w in words if w.strip()), key=len, reverse=True)
    return re.compile(r"(?<![\w-])(?:" + "|".join(escaped) + r")(?![\w-])", re.IGNORECASE)


def breaks_world(text: str, pattern: re.Pattern) -> list[str]:
    return sorted({m.group(0).lower() for m in pattern.finditer(text)})


def fits_state(line: AuthoredLine, turn: Turn) -> bool:
    s = turn.state
    if line.stages is not None and effective_stage(turn) not in line.stages:
        return False
    if line.min_trust is not None and s.trust < line.min_trust:
        return False
    if line.max_trust is not None and s.trust > line.max_trust:
        return False
    if line.min_relationship is not None and s.relationship < line.min_relationship:
        return False
    if line.max_relationship is not None and s.relationship > line.max_relationship:
        return False
    return True


def fits_decision(line: AuthoredLine, fired: frozenset[str], refused: frozenset[str]) -> bool:
    """Exactly the fired events, and a refusal only where the game refused."""
    if frozenset(line.events) != fired:
        return False
    return not line.refuses or bool(refused.intersection(line.refuses))


def rank_lines(lines, vectors, turn: Turn, query, min_score: float,
               min_event_score: float) -> list[tuple[AuthoredLine, float]]:
    """The lines that fit the decided `turn` (its fired and refused events, its state),
    best first by meaning (`vectors[i]`: line i's example vectors; `query`: the player
    line's), each with its similarity; see the module docstring for the scoring."""
    fired = frozenset(f.name for f in turn.flags)
    refused = frozenset(r.name for r in turn.flags_rejected)
    recent = {e.npc.strip() for e in turn.history[-RECENT_EXCHANGES:]}
    scored: list[tuple[float, int, AuthoredLine, float]] = []
    for line, line_vectors in zip(lines, vectors):
        if not fits_decision(line, fired, refused) or not fits_state(line, turn):
            continue
        similarity = float((line_vectors @ query).max())
        score = similarity + (REFUSAL_BONUS if line.refuses else 0.0)
        if line.text.strip() in recent:
            score -= RECENT_PENALTY
        if similarity < (min_event_score if line.events or line.refuses else min_score):
            continue
        scored.append((score, -len(scored), line, round(similarity, 3)))
    scored.sort(reverse=True, key=lambda item: (item[0], item[1]))
    return [(line, similarity) for _, _, line, similarity in scored]


class AuthoredLines(Step):
    name = "authored_lines"
    stage = "postprocess"
    description = "Say the writers' own line that fits the game's decision, the state and the player's words."

    class Options(StepOptions):
        mode: Literal["authored", "grounded", "free"] = Field(
            "authored", description="`authored`: the best fitting line, else the model's reply; `grounded`: the "
            "model's reply, written with the fitting lines in its prompt (an adapter trained on sectioned version "
            "2); `free`: the model's reply. In `grounded` and `free` a line replaces the reply only when it is empty "
            "or breaks the world's words.")
        grounding_lines: int = Field(2, ge=1, le=8, description="`grounded`: fitting lines shown to the model.")
        min_score: float = Field(0.45, ge=-1.0, le=1.0, description="Similarity a line without events needs.")
        min_event_score: float = Field(0.0, ge=-1.0, le=1.0, description="Similarity a line bound to this turn's "
                                       "events or refusals needs (the decision already says it fits).")
        forbidden_words: list[str] = Field(default_factory=list, description="Words added to the built-in "
                                           "out-of-world list for this NPC.")
        embedder: str = Field("embedded", description="Sentence embedder for the meaning match.")

    options: Options

    def __init__(self, options, persona, runtime):
        super().__init__(options, persona, runtime)
        self._embedder = None
        self._vectors: list = []
        self._queries: dict[str, object] = {}
        self._pattern = forbidden_pattern([*OUT_OF_WORLD_WORDS, *options.forbidden_words])

    def warm_up(self) -> None:
        if self._embedder is not None or not self.persona.lines:
            return
        embedder = self.runtime.embedders.get(self.options.embedder)
        # Each line is matched by its examples, or its own text when it has none; one
        # encode call for all of them (a few hundred sentences per NPC).
        texts = [line.examples or [line.text] for line in self.persona.lines]
        vectors = embedder.encode([t for group in texts for t in group], batch_size=64)
        starts = [0]
        for group in texts:
            starts.append(starts[-1] + len(group))
        self._vectors = [vectors[a:b] for a, b in zip(starts, starts[1:])]
        self._embedder = embedder

    def prepare(self, turn: Turn) -> None:
        # Embedded here, on the turn's own thread: `replaces_reply` runs on the compute
        # thread between the prompt pass and decoding, where it must not wait for the embedder.
        if self.persona.lines:
            self._query(turn.utterance)

    def _query(self, utterance: str):
        vector = self._queries.get(utterance)
        if vector is None:
            self.warm_up()
            vector = self._embedder.encode([utterance])[0]
            if len(self._queries) >= 256:  # a few turns' worth; oldest first out
                self._queries.pop(next(iter(self._queries)), None)
            self._queries[utterance] = vector
        return vector

    def replaces_reply(self, turn: Turn) -> bool:
        """In `authored` mode, whether a line fits this decided turn (the model's words
        would be discarded, so the generate step may skip them)."""
        if self.options.mode != "authored" or turn.utterance not in self._queries:
            return False
        return self.choose(turn) is not None

    def choose(self, turn: Turn) -> tuple[AuthoredLine, float] | None:
        """The best fitting line and its score, or None."""
        ranked = self.ranked(turn)
        return (ranked[0][0], ranked[0][1]) if ranked else None

    def ranked(self, turn: Turn) -> list[tuple[AuthoredLine, float]]:
        """The fitting lines, best first, with their similarity."""
        if not self.persona.lines:
            return []
        self.warm_up()
        return rank_lines(self.persona.lines, self._vectors, turn, self._query(turn.utterance),
                          self.options.min_score, self.options.min_event_score)

    def grounding(self, turn: Turn) -> tuple[str, ...]:
        """In `grounded` mode, the fitting lines the model reads before it writes its reply."""
        if self.options.mode != "grounded" or turn.utterance not in self._queries:
            return ()
        return tuple(line.text.strip() for line, _ in self.ranked(turn)[: self.options.grounding_lines])

    def run(self, turn: Turn) -> Turn:
        reply = turn.reply.strip()
        broken = breaks_world(reply, self._pattern)
        wants_line = self.options.mode == "authored" or not reply or broken
        if self.options.mode == "grounded":
            turn = turn.with_meta(grounding_lines=[line.id for line, _ in
                                                   self.ranked(turn)[: self.options.grounding_lines]])
        chosen = self.choose(turn) if wants_line else None
        if chosen is not None:
            line, similarity = chosen
            meta = {"reply_source": "authored", "line_id": line.id, "line_score": similarity}
            if self.options.mode != "authored":
                meta["reply_guard"] = "empty model reply" if not reply else "out-of-world words: " + ", ".join(broken)
            return turn.replace(reply=line.text.strip()).with_meta(**meta)
        meta = {"reply_source": "model"}
        if not reply:
            meta["reply_guard"] = "empty model reply and no authored line fits"
        elif broken:
            meta["reply_guard"] = "out-of-world words kept (no authored line fits): " + ", ".join(broken)
        return turn.with_meta(**meta)


@hookimpl
def register_steps(register):
    register(AuthoredLines)
