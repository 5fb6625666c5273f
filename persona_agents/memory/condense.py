"""A finished turn -> the memories it leaves, by rules.

Why rules and not the embedded model: a 135M model asked to summarise invents facts
about as often as it keeps them, and a second model pass per turn would cost more than
the turn's own prompt pass. The rules keep what a player tells an NPC about themselves
in the player's own words (quoted, so nothing is paraphrased wrongly: "I promise I'll
find Jason", "My name is Aldric", "I lost my sword on the road") and what the game did
on the turn (the fired events, with their payloads). What they miss: facts said in other
shapes ("Aldric's the name"), and anything the NPC said; a studio can add memories of
its own through a plugin or edit them through the API.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from ..turn import FiredFlag, Memory

#: A sentence that tells something about the speaker: who they are, what they have,
#: want, did or promise. Questions are not statements and are skipped.
SELF_STATEMENT = re.compile(
    r"\b(?:my name(?:'s| is)|call me|i am|i'm|i was|i have|i've|i had|i carry|i own|i will|i'll|i promise|"
    r"i swear|i vow|i need|i want|i lost|i found|i saw|i killed|i come from|i came from|i work|i live|i owe|"
    r"i hate|i love|i fear|i met|i stole|i sold|i bought|i built|my (?:father|mother|brother|sister|wife|"
    r"husband|son|daughter|friend|home|village|family|master|lord|lady))\b",
    re.IGNORECASE,
)
#: A sentence longer than this is cut (at a word) before it is kept.
MAX_FACT_CHARS = 160
#: At most this many facts from one player line.
MAX_FACTS_PER_TURN = 2
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")


def player_facts(utterance: str) -> list[str]:
    """The player's statements about themselves in one line, as they said them."""
    facts = []
    for match in _SENTENCE.finditer(" ".join(utterance.split())):
        sentence = match.group(0).strip()
        if not sentence or sentence.endswith("?") or not SELF_STATEMENT.search(sentence):
            continue
        if len(sentence) > MAX_FACT_CHARS:
            sentence = sentence[:MAX_FACT_CHARS].rsplit(" ", 1)[0] + "..."
        facts.append(sentence)
        if len(facts) == MAX_FACTS_PER_TURN:
            break
    return facts


def event_text(flag: FiredFlag, description: str | None = None, actor: str = "this NPC (you)") -> str:
    """An event in words: its name, the game's description with `actor` for "the NPC", and
    the payload. The description makes a memory findable by meaning; ids alone are not."""
    payload = ", ".join(f"{key}={value}" for key, value in sorted(flag.payload.items()))
    what = f"{flag.name} ({description.replace('the NPC', actor)})" if description else flag.name
    return f"{what}, {payload}" if payload else what


def condense_turn(turn_number: int, utterance: str, fired: Iterable[FiredFlag],
                  descriptions: Mapping[str, str] | None = None) -> list[Memory]:
    """The memories one turn leaves: the player's statements, then the events that fired
    (`descriptions`: the game's event descriptions, by name)."""
    descriptions = descriptions or {}
    memories = [Memory(None, turn_number, "fact", f'The player said: "{fact}"') for fact in player_facts(utterance)]
    memories += [Memory(None, turn_number, "event",
                        f"On turn {turn_number}: {event_text(flag, descriptions.get(flag.name))}.")
                 for flag in fired]
    return memories
