"""Word that travels (issue 30): a turn's events and the player's statements reach other
NPCs as `heard` memories, by the game's `word_travels` rules (game.py `WordRule`).

A rule names what spreads (events, and the player's statements with `facts: true`), whose
turns spread it (`tellers`, absent: any NPC's) and who hears: listed NPCs, NPCs of a
faction (persona `knowledge.factions`, as for faction-scoped lore) or NPCs at a place
(persona `location`). No other NPC hears it, and the teller never hears itself. The word
arrives `delay_turns` of the player's turns (with any NPC) after the telling turn: the
store keeps it hidden until then.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ..game import GameDefinition, WordRule
from ..persona import Persona
from ..turn import FiredFlag, Memory
from .condense import event_text, player_facts


def hearers(rule: WordRule, teller: str, personas: Mapping[str, Persona]) -> list[str]:
    """NPC ids a rule reaches from `teller`'s turn, in id order."""
    reach = rule.to
    return sorted(npc_id for npc_id, persona in personas.items() if npc_id != teller and (
        npc_id in reach.npcs or set(reach.factions) & set(persona.knowledge.factions)
        or (persona.location is not None and persona.location in reach.locations)))


def word_of_turn(game: GameDefinition, personas: Mapping[str, Persona], teller: str, turn_number: int,
                 utterance: str, fired: Iterable[FiredFlag]) -> list[tuple[str, Memory, int]]:
    """(hearer NPC id, memory, delay in the player's turns) for every rule the turn matches."""
    fired = list(fired)
    name = personas[teller].name if teller in personas else teller
    descriptions = {event: spec.description for event, spec in game.events.items()}
    out: list[tuple[str, Memory, int]] = []
    for rule in game.word_travels:
        if rule.tellers is not None and teller not in rule.tellers:
            continue
        texts = [f"{name} did {event_text(flag, descriptions.get(flag.name), actor=name)} for the player."
                 for flag in fired if flag.name in rule.events]
        if rule.facts:
            texts += [f'The player told {name}: "{fact}"' for fact in player_facts(utterance)]
        for hearer in hearers(rule, teller, personas) if texts else []:
            out += [(hearer, Memory(None, turn_number, "heard", text, source=teller), rule.delay_turns)
                    for text in texts]
    return out


def unknown_npcs(game: GameDefinition, npc_ids: Iterable[str]) -> list[str]:
    """`_game.yaml` problems: word rules that name NPCs the folder does not have."""
    known = set(npc_ids)
    problems = []
    for number, rule in enumerate(game.word_travels):
        for field, names in (("tellers", rule.tellers or []), ("to.npcs", rule.to.npcs)):
            missing = [n for n in names if n not in known]
            if missing:
                problems.append(f"word_travels.{number}.{field}: unknown NPC {', '.join(map(repr, missing))}; "
                                f"available: {', '.join(sorted(known))}")
    return problems
