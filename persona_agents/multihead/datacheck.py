"""Checking labelled dialogue data against the personas and the game, before training.

`load_examples` checks each record on its own (fields, types, flag names). This module
checks what only the whole file and the personas can tell: that every labelled flag is
one the persona's rules allow in the record's state (else the game would refuse it and
the model would learn a flag it can never fire), that a conversation's state moves as
its deltas and events say, that the replies are distinct and in-world, and how many
examples each event has (issue 26: too few to learn from is said, not found out later).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..default_plugins.authored_lines import OUT_OF_WORLD_WORDS
from ..game import GameDefinition, load_game
from ..persona import Persona
from ..rules import allowed_flags
from .data import load_examples, load_personas_for_data

#: Fewer labelled examples of an event than this, and `train` warns (issue 26; see
#: training/README.md for what was measured per event).
MIN_EXAMPLES_PER_EVENT = 20
#: Tolerance when comparing a turn's tags with the previous turn's tags plus its delta.
STATE_TOLERANCE = 0.011


@dataclass
class DataReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    turns_per_npc: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    no_flag: int = 0
    total: int = 0
    distinct_replies: int = 0

    def summary(self) -> str:
        share = self.no_flag / self.total if self.total else 0.0
        lines = [f"{self.total} turns, {len(self.turns_per_npc)} NPCs, {self.distinct_replies} distinct replies, "
                 f"{share:.0%} with no flag"]
        lines.append("events: " + ", ".join(f"{name} {n}" for name, n in sorted(self.events.items())))
        return "\n".join(lines)


def thin_events(examples, flags) -> list[str]:
    """One warning per event of `flags` with fewer than MIN_EXAMPLES_PER_EVENT labelled
    examples (`train` logs them: such an event is rarely learnt; see training/generalist)."""
    counts = Counter(f for e in examples for f in e.flags)
    return [f"event {name!r} has {counts.get(name, 0)} labelled example(s); fewer than {MIN_EXAMPLES_PER_EVENT} "
            "are rarely learnt: write more turns where it fires (or leave it to the few-shot evidence of "
            "the persona's lines)" for name in flags if counts.get(name, 0) < MIN_EXAMPLES_PER_EVENT]


def load_data_personas(npcs_dirs: Iterable[str | Path]) -> tuple[dict[str, Persona], dict[str, GameDefinition]]:
    """Personas of several folders (ids must not clash) and, per NPC id, its folder's game."""
    personas: dict[str, Persona] = {}
    games: dict[str, GameDefinition] = {}
    for npcs_dir in npcs_dirs:
        game = load_game(npcs_dir)
        for npc_id, persona in load_personas_for_data(npcs_dir).items():
            personas[npc_id] = persona
            games[npc_id] = game
    return personas, games


def _out_of_world(text: str) -> list[str]:
    lowered = text.lower()
    return [w for w in OUT_OF_WORLD_WORDS if re.search(rf"\b{re.escape(w)}\b", lowered)]


def check_files(paths: list[str | Path], npcs_dirs: list[str | Path]) -> DataReport:
    """Every problem of the files against the personas of `npcs_dirs` (record-level problems
    raise TrainingDataError from `load_examples`, as `train` does)."""
    report = DataReport()
    personas, games = load_data_personas(npcs_dirs)
    vocabulary: list[str] = []
    for game in {id(g): g for g in games.values()}.values():
        vocabulary += [e for e in game.event_names if e not in vocabulary]
    examples = load_examples(paths, vocabulary, personas)
    raw: dict[str, dict] = {}
    for path in paths:
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                raw[f"{path}:{number}"] = json.loads(line)

    replies = Counter(e.response for e in examples)
    report.distinct_replies = len(replies)
    conversations: dict[str, list] = defaultdict(list)
    for example in examples:
        where, turn = example.source, example.turn
        report.total += 1
        report.turns_per_npc[turn.npc_id] += 1
        report.events.update(example.flags)
        report.no_flag += not example.flags
        if turn.npc_id not in personas:
            report.errors.append(f"{where}: npc_id: no persona {turn.npc_id!r} in {', '.join(map(str, npcs_dirs))}")
            continue
        game = games[turn.npc_id]
        bad = game.unknown_events(example.flags)
        if bad:
            report.errors.append(f"{where}: flag: {', '.join(bad)} not declared by this NPC's game; "
                                 f"{game.events_hint()}")
        if turn.context.quest_stage and turn.context.quest_stage not in game.quest_stages:
            report.errors.append(f"{where}: tags.quest_stage: {turn.context.quest_stage!r}; {game.stages_hint()}")
        allowed = allowed_flags(turn)
        for flag in example.flags:
            if flag not in allowed:
                report.errors.append(f"{where}: flag: {flag!r} is not allowed by {turn.npc_id}'s flag_rules in this "
                                     f"state (stage {turn.state.quest_stage}, trust {turn.state.trust:.2f}, "
                                     f"relationship {turn.state.relationship:+.2f}, items {list(turn.context.items)}); "
                                     "fix the label or the state")
        words = _out_of_world(example.response)
        if words:
            report.errors.append(f"{where}: response: out-of-world word(s) {', '.join(words)}")
        if replies[example.response] > 1:
            report.warnings.append(f"{where}: response: said {replies[example.response]} times in the data")
        if example.conversation_id:
            conversations[example.conversation_id].append((where, example))
    for cid, turns in conversations.items():
        _check_conversation(cid, turns, raw, games, report)
    for npc_id, game in games.items():
        if report.turns_per_npc.get(npc_id):
            for name, rule in personas[npc_id].flag_rules.items():
                count = sum(1 for e in examples if e.turn.npc_id == npc_id and name in e.flags)
                if rule.allowed and count < 3:
                    report.warnings.append(f"{npc_id}: event {name!r} is labelled {count} time(s); write at least 3")
    if report.total and report.no_flag / report.total < 1 / 3:
        report.warnings.append(f"only {report.no_flag / report.total:.0%} of turns fire no flag; "
                               "a realistic set has at least a third")
    return report


def _check_conversation(cid: str, turns: list, raw: dict, games: dict, report: DataReport) -> None:
    for (where_a, a), (where_b, b) in zip(turns, turns[1:]):
        ra, rb = raw[where_a], raw[where_b]
        game = games.get(a.turn.npc_id)
        for index, axis, low, high in ((0, "trust", 0.0, 1.0), (1, "relationship", -1.0, 1.0)):
            before = getattr(a.turn.state, axis)
            if not isinstance(ra["tags"].get(axis), (int, float)) or not isinstance(rb["tags"].get(axis), (int, float)):
                continue
            want = round(min(high, max(low, before + a.delta[index])), 2)
            got = getattr(b.turn.state, axis)
            if abs(want - got) > STATE_TOLERANCE:
                report.errors.append(f"{where_b}: tags.{axis}: {got} but the previous turn ({where_a}) was {before} "
                                     f"with delta {a.delta[index]:+}: expected {want}")
        stage = a.turn.state.quest_stage
        if game is not None:
            stage = game.stage_after(stage, a.flags, a.turn.persona.flag_rules)
        if b.turn.state.quest_stage != stage:
            # A warning only: the game may move a stage itself (the sample world completes
            # find_jason once the player holds Jason's letter).
            report.warnings.append(f"{where_b}: tags.quest_stage: {b.turn.state.quest_stage!r}, expected {stage!r} "
                                   f"after the previous turn's events {list(a.flags)}")
        expected_context = list(ra["context"]) + [{"role": "player", "text": ra["player_utterance"]},
                                                  {"role": "npc", "text": ra["response"]}]
        if rb["context"] != expected_context:
            report.errors.append(f"{where_b}: context: must be the earlier turns of {cid} in order "
                                 f"(the previous record's context + its player_utterance and response)")
