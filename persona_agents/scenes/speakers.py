"""Who answers a player's line in a group scene: pure rules, tried in this order.

1. **addressed**: the NPCs the game names (`addressed`, e.g. the one the player clicked),
   else the NPCs the line addresses by name. A name is the persona's `name`, each word of
   it that is not a title ("Hale" of "Captain Hale"), or its id, as a whole word in any
   case. Names set off as a vocative ("Pip, ...", "what do you think, Brann?", "Brann and
   Pip, ...") win over names merely mentioned ("Did Pip sell you that, Brann?" is for
   Brann); with no vocative, every NPC named answers. Several, in the order named.
2. **topic**: the NPC whose authored player lines (the persona's `lines[].examples` and
   `example_lines[].player`) and role come closest in meaning to the line (sentence
   embeddings: the mean cosine of its two closest sentences), if that is at least
   `TOPIC_MIN_SCORE` and `TOPIC_MARGIN` ahead of the next NPC. Sentences like another
   present NPC's ("Hello there.", "Thanks a lot!") are left out (`TopicIndex`): they say
   nothing about whom a line is for. Only what the studio wrote for players to say is
   used, never lore: an NPC does not jump in because it holds a secret.
3. **turn**: the NPC present who spoke least recently in the scene (never: first, in
   the game's order of the NPCs).

At most `max_speakers` NPCs answer one line. What the rules miss, and how they were
measured on a labelled set, is in docs/memory.md ("Group scenes").
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from ..fileutil import atomic_write
from ..persona import Persona

#: A topic must score at least this (cosine) ...
TOPIC_MIN_SCORE = 0.45
#: ... and be this far ahead of the next NPC's score.
TOPIC_MARGIN = 0.06
#: A sentence as close as this to another present NPC's says nothing about whom a line is for.
SHARED_SIMILARITY = 0.6
DEFAULT_MAX_SPEAKERS = 2

#: Words of a name that are not the name itself: "Captain Hale" is addressed as "Hale".
TITLES = frozenset({
    "captain", "old", "young", "mother", "father", "uncle", "aunt", "sir", "lady", "lord", "master", "mistress",
    "brother", "sister", "the", "mr", "mrs", "ms", "dr", "doctor", "good", "dame", "sergeant", "of",
})
#: Words that may stand before a vocative name ("Hey Pip, ...", "Thanks, Pip.").
_GREETINGS = ("hey", "hi", "hello", "oi", "ho", "listen", "look", "well", "ok", "okay", "so", "now", "please",
              "thanks", "thank you", "morning", "evening", "good morning", "good evening", "good day", "sorry",
              "excuse me", "yes", "no", "right", "alright", "dear")
_BEFORE = re.compile(r"(?:^|[,.!?:;]|\b(?:" + "|".join(re.escape(g) for g in _GREETINGS) + r"))\s*$", re.IGNORECASE)
_AFTER = re.compile(r"^\s*(?:$|[,.!?:;])")
#: What may join names in one vocative: "Brann and Pip, ...", "Pip, Brann, ...".
_JOIN = re.compile(r"^\s*(?:,\s*(?:and\s+|or\s+)?|(?:and|or|&)\s+)$", re.IGNORECASE)

#: Scores (NPC id -> cosine) of a line against the NPCs present; None: no topic rule.
TopicScorer = Callable[[str, Sequence[str]], Mapping[str, float]]


@dataclass(frozen=True)
class SpeakerChoice:
    """The NPCs that answer, in speaking order, and why: `reason` is `addressed`, `topic`
    or `turn`; `detail` says more (how they were addressed, the topic scores)."""

    speakers: tuple[str, ...]
    reason: str
    detail: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        return {"speakers": list(self.speakers), "reason": self.reason, "detail": dict(self.detail)}


def name_forms(persona: Persona) -> list[str]:
    """How a line may call this NPC: its name, the words of its name that are not titles,
    its id."""
    words = [w for w in re.findall(r"[\w'-]+", persona.name) if w.lower() not in TITLES and len(w) > 1]
    forms = [persona.name, *words, persona.id]
    return list(dict.fromkeys(f for f in forms if f.strip()))


@dataclass(frozen=True)
class _Mention:
    npc_id: str
    start: int
    end: int


def _mentions(utterance: str, personas: Mapping[str, Persona], npcs: Sequence[str]) -> list[_Mention]:
    """Each present NPC's name in the line, the longest form at each place, in line order."""
    found: list[_Mention] = []
    for npc_id in npcs:
        for form in sorted(name_forms(personas[npc_id]), key=len, reverse=True):
            for match in re.finditer(r"(?<![\w'-])" + re.escape(form) + r"(?![\w-])", utterance, re.IGNORECASE):
                if not any(m.start <= match.start() < m.end or match.start() <= m.start < match.end()
                           for m in found):
                    found.append(_Mention(npc_id, match.start(), match.end()))
    return sorted(found, key=lambda m: m.start)


def addressed_by_name(utterance: str, personas: Mapping[str, Persona], npcs: Sequence[str]) -> tuple[list[str], str]:
    """(NPC ids the line addresses, in the order named; "vocative" or "named"), or ([], "")."""
    mentions = _mentions(utterance, personas, npcs)
    if not mentions:
        return [], ""
    # Runs of names joined by "and" or commas ("Brann and Pip, ...") are one vocative.
    runs: list[list[_Mention]] = []
    for mention in mentions:
        if runs and _JOIN.match(utterance[runs[-1][-1].end:mention.start]):
            runs[-1].append(mention)
        else:
            runs.append([mention])
    vocative = [m.npc_id for run in runs
                if _BEFORE.search(utterance[:run[0].start]) and _AFTER.match(utterance[run[-1].end:])
                for m in run]
    if vocative:
        return list(dict.fromkeys(vocative)), "vocative"
    return list(dict.fromkeys(m.npc_id for m in mentions)), "named"


def by_turn(npcs: Sequence[str], last_spoke: Mapping[str, int]) -> str:
    """The NPC present who spoke least recently (never: first, in the game's order)."""
    return min(npcs, key=lambda npc: (last_spoke.get(npc, -1), npcs.index(npc)))


def by_topic(scores: Mapping[str, float], min_score: float = TOPIC_MIN_SCORE,
             margin: float = TOPIC_MARGIN) -> str | None:
    """The NPC whose topics the line is about, if one stands out; else None."""
    if not scores:
        return None
    ranked = sorted(scores.items(), key=lambda item: -item[1])
    best, score = ranked[0]
    runner_up = ranked[1][1] if len(ranked) > 1 else -1.0
    return best if score >= min_score and score - runner_up >= margin else None


def choose_speakers(
    npcs: Sequence[str],
    personas: Mapping[str, Persona],
    utterance: str,
    last_spoke: Mapping[str, int],
    *,
    addressed: Sequence[str] = (),
    max_speakers: int = DEFAULT_MAX_SPEAKERS,
    topic: TopicScorer | None = None,
    min_score: float = TOPIC_MIN_SCORE,
    margin: float = TOPIC_MARGIN,
) -> SpeakerChoice:
    """Who answers `utterance` among the NPCs present (`npcs`, the game's order)."""
    npcs = list(npcs)
    if addressed:
        return SpeakerChoice(tuple(list(dict.fromkeys(addressed))[:max_speakers]), "addressed",
                             MappingProxyType({"how": "game"}))
    named, how = addressed_by_name(utterance, personas, npcs)
    if named:
        return SpeakerChoice(tuple(named[:max_speakers]), "addressed", MappingProxyType({"how": how}))
    scores = dict(topic(utterance, npcs)) if topic is not None and len(npcs) > 1 else {}
    detail: dict[str, Any] = {"topic_scores": {k: round(v, 3) for k, v in scores.items()}} if scores else {}
    chosen = by_topic(scores, min_score, margin)
    if chosen is not None:
        return SpeakerChoice((chosen,), "topic", MappingProxyType(detail))
    return SpeakerChoice((by_turn(npcs, last_spoke),), "turn", MappingProxyType(detail))


def topic_sentences(persona: Persona) -> list[str]:
    """What an NPC is asked about, as the studio wrote it: its role, its example player
    lines and the player lines of its authored lines."""
    sentences = [persona.role.strip()] if persona.role.strip() else []
    sentences += [line.player for line in persona.example_lines]
    sentences += [example for line in persona.lines for example in line.examples]
    return list(dict.fromkeys(" ".join(s.split()) for s in sentences if s.strip()))


class TopicIndex:
    """Each NPC's topic sentences, embedded once (and kept on disk under `cache_dir`),
    scoring a line against the NPCs present (a `TopicScorer`).

    A sentence counts for an NPC only if no other NPC present has one like it (cosine
    below `SHARED_SIMILARITY`): greetings, thanks and the weather are everyone's, and say
    nothing about whom a line is for. An NPC's score is the mean cosine of the line with
    its two closest sentences that count (its role always counts). `embedder()` returns
    an object with `encode(texts)` (L2-normalised rows) and `fingerprint` (the lore
    embedder)."""

    def __init__(self, personas: Mapping[str, Persona], embedder: Callable[[], Any], cache_dir: Path | None = None):
        self.personas = personas
        self.embedder = embedder
        self.cache_dir = cache_dir
        self._vectors: dict[str, Any] = {}
        self._kept: dict[tuple[str, ...], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _embed(self, sentences: list[str]) -> Any:
        import numpy as np

        embedder = self.embedder()
        path = None
        if self.cache_dir is not None:
            key = hashlib.sha256("\n".join([embedder.fingerprint, *sentences]).encode("utf-8")).hexdigest()[:32]
            path = self.cache_dir / f"{key}.npy"
            if path.is_file():
                try:
                    return np.load(path)
                except (OSError, ValueError):
                    pass  # a damaged cache file is made again
        vectors = np.asarray(embedder.encode(sentences), dtype="float32")
        if path is not None:
            buffer = io.BytesIO()
            np.save(buffer, vectors)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, buffer.getvalue())
            except OSError:
                pass  # a cache that cannot be written is made again next time
        return vectors

    def vectors(self, npc_id: str) -> Any:
        with self._lock:
            if npc_id not in self._vectors:
                self._vectors[npc_id] = self._embed(topic_sentences(self.personas[npc_id]))
            return self._vectors[npc_id]

    def _counting(self, npcs: Sequence[str]) -> dict[str, Any]:
        """NPC id -> the vectors of its sentences that count among `npcs`."""
        import numpy as np

        key = tuple(sorted(npcs))
        if key not in self._kept:
            every = {npc: self.vectors(npc) for npc in key}
            kept = {}
            for npc, vectors in every.items():
                others = [every[o] for o in key if o != npc]
                if not others or not len(vectors):
                    kept[npc] = vectors
                    continue
                closest = (vectors @ np.concatenate(others).T).max(axis=1)
                mask = closest < SHARED_SIMILARITY
                mask[0] = True  # the role
                kept[npc] = vectors[mask]
            self._kept[key] = kept
        return self._kept[key]

    def __call__(self, utterance: str, npcs: Sequence[str]) -> dict[str, float]:
        import numpy as np

        kept = self._counting(npcs)
        query = np.asarray(self.embedder().encode([utterance]), dtype="float32")[0]
        scores = {}
        for npc in npcs:
            sims = np.sort(kept[npc] @ query) if len(kept[npc]) else np.zeros(1)
            scores[npc] = float(sims[-2:].mean())
        return scores
