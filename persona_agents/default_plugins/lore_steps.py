"""`faiss_lore` and `keyword_lore` (retrieve): lore the NPC may know, into `turn.lore`.

Both filter by the NPC's knowledge scope, the turn's quest stage and the entries' gates
(the NPC's trust and relationship before the turn, the items and actions the game sends)
*before* ranking (see `persona_agents/lore/scope.py`), so a secret gated like a flag never
reaches the prompt before the game allows it. They keep what fits the lore token budget,
add it to `turn.lore` after what earlier retrieve steps found, and report
`meta["lore"] = [{"id": ..., "score": ...}]`. Lore files are re-read when they change,
and changed entries re-embedded, on the next turn.
"""

from __future__ import annotations

from pydantic import Field

from persona_agents.hookspecs import hookimpl
from persona_agents.lore.retrieval import LoreHit, keyword_search, semantic_search, within_budget
from persona_agents.lore.scope import LoreFacts, check_knowledge
from persona_agents.steps import Step, StepOptions
from persona_agents.turn import LoreChunk, Turn

_BUDGET_HELP = (
    "Token budget of the lore section, counted as words plus punctuation marks (an estimate "
    "that does not depend on the model); the best entries that fit are kept."
)


def _with_lore(turn: Turn, hits: list[LoreHit]) -> Turn:
    """The turn with these hits added after the lore of earlier retrieve steps (an entry
    another step already found is not repeated)."""
    have = {chunk.id for chunk in turn.lore}
    chunks = tuple(LoreChunk(hit.item.id, hit.item.text, round(hit.score, 4)) for hit in hits
                   if hit.item.id not in have)
    listed = list(turn.meta.get("lore", []))
    return turn.replace(lore=turn.lore + chunks).with_meta(
        lore=listed + [{"id": c.id, "score": c.score} for c in chunks])


class FaissLore(Step):
    name = "faiss_lore"
    stage = "retrieve"
    description = ("Lore the NPC may know at this quest stage and state (entries' gates), ranked by meaning "
                   "(sentence embeddings + faiss).")

    class Options(StepOptions):
        k: int = Field(4, ge=1, le=50, description="How many entries at most.")
        min_score: float = Field(
            0.3, ge=-1.0, le=1.0,
            description="Cosine similarity an entry needs to be used (roughly 0.2 loose, 0.5 strict).",
        )
        max_lore_tokens: int = Field(200, ge=1, le=8192, description=_BUDGET_HELP)
        embedder: str = Field(
            "embedded",
            description="Sentence-transformers model: `embedded` (all-MiniLM-L6-v2, offline), a model folder, "
            "or a model id in the local Hugging Face cache.",
        )
        history_turns: int = Field(
            0, ge=0, le=10, description="Earlier player lines added to the search query (helps follow-up questions)."
        )

    options: Options

    def __init__(self, options, persona, runtime):
        super().__init__(options, persona, runtime)
        self._index = None

    def warm_up(self) -> None:
        embedder = self.runtime.embedders.get(self.options.embedder)
        index = self.runtime.lore.index(self.runtime.npcs_dir, embedder, self.runtime.cache_dir)
        check_knowledge(self.persona.id, self.persona.knowledge, index.ensure_current())
        self._index = index

    def run(self, turn: Turn) -> Turn:
        if self._index is None:
            self.warm_up()
        n = self.options.history_turns
        earlier = [exchange.player for exchange in turn.history[-n:]] if n else []
        hits = semantic_search(
            self._index,
            " ".join([*earlier, turn.utterance]),
            turn.persona.id,
            turn.persona.knowledge,
            LoreFacts.of_turn(turn),
            k=self.options.k,
            min_score=self.options.min_score,
        )
        return _with_lore(turn, within_budget(hits, self.options.max_lore_tokens))


class KeywordLore(Step):
    name = "keyword_lore"
    stage = "retrieve"
    description = ("Lore the NPC may know at this quest stage and state (entries' gates), triggered by its "
                   "keywords in the conversation.")

    class Options(StepOptions):
        max_entries: int = Field(3, ge=1, le=50, description="How many entries at most.")
        scan_history_turns: int = Field(
            2, ge=0, le=50, description="Earlier exchanges (player and NPC lines) searched for keywords too."
        )
        max_lore_tokens: int = Field(200, ge=1, le=8192, description=_BUDGET_HELP)

    options: Options

    def __init__(self, options, persona, runtime):
        super().__init__(options, persona, runtime)
        self._folder = None

    def warm_up(self) -> None:
        folder = self.runtime.lore.folder(self.runtime.npcs_dir)
        check_knowledge(self.persona.id, self.persona.knowledge, folder.current())
        self._folder = folder

    def run(self, turn: Turn) -> Turn:
        if self._folder is None:
            self.warm_up()
        n = self.options.scan_history_turns
        history = [line for ex in (turn.history[-n:] if n else ()) for line in (ex.player, ex.npc)]
        hits = keyword_search(
            self._folder.current(),
            turn.utterance,
            history,
            turn.persona.id,
            turn.persona.knowledge,
            LoreFacts.of_turn(turn),
            self.options.max_entries,
        )
        return _with_lore(turn, within_budget(hits, self.options.max_lore_tokens))


@hookimpl
def register_steps(register):
    register(FaissLore)
    register(KeywordLore)
