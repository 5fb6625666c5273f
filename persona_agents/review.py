"""Blind reviews of NPC replies: a packet with the candidates shuffled, then the scores unblinded.

Quality of lines is judged by people (or reviewer agents) who do not know which
configuration wrote which reply. `make_packet` plays N held-out turns (a JSONL file in the
training-data format, e.g. training/data/heldout_fresh.jsonl) through two or more
configurations (an NPC folder each: its personas and pipelines), optionally with the
data's own reply as a reference, and writes:

- `packet.md`: per turn, what a reviewer needs (the NPC, its state, items, the recent
  history, the player's line) and the candidates A, B, C... in an order shuffled per
  turn, each with the events the game applied with it (so a reply that contradicts its
  own decision shows);
- `key.json`: which letter was which configuration (keep it from the reviewers);
- `auto.json`: automatic figures per configuration (empty replies, out-of-world words,
  authored share, mean length, turn time).

Reviewers return a JSON list of `{"turn": 1, "candidate": "A", "sense": 1-5,
"character": 1-5, "ship": true|false}`; `unblind` turns one or more such files and the
key into a table per configuration.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import PersonaAgentsError
from .turn import Turn

RUBRIC = """Score each candidate reply on its own:
- sense (1-5): does it answer what the player said, agree with the world, the NPC's state and the
  events the game applied with it (a reply that hands something over while the events say it was
  refused, or refuses while the events say it was given, is a 1)?
- character (1-5): does it sound like this NPC (role, traits, speaking style)?
- ship (true/false): would a studio's writer ship this line as is?"""


class ReviewError(PersonaAgentsError):
    pass


@dataclass(frozen=True)
class Candidate:
    config: str
    text: str
    events: tuple[str, ...]
    refused: tuple[str, ...]
    meta: dict[str, Any]


def sample_examples(path: str | Path, personas: dict, turns: int, seed: int):
    from .multihead.data import load_examples

    examples = load_examples([path], personas=personas)
    if turns > len(examples):
        raise ReviewError(f"{path} has {len(examples)} turns; asked for {turns}. Ask for fewer with --turns.")
    rng = random.Random(seed)
    return rng.sample(examples, turns)


def play(manager, turn: Turn, seed: int) -> tuple[Candidate, float]:
    """One held-out turn through a configuration's pipeline (nothing is stored)."""
    persona = manager.get_persona(turn.npc_id).persona
    started = time.perf_counter()
    done = manager.pipeline(turn.npc_id).run(turn.replace(persona=persona, seed=seed))
    elapsed = time.perf_counter() - started
    shown = {k: done.meta.get(k) for k in ("reply_source", "line_id", "reply_guard") if k in done.meta}
    return Candidate("", done.reply, tuple(f.name for f in done.flags), tuple(r.name for r in done.flags_rejected),
                     shown), elapsed


def _turn_header(number: int, turn: Turn) -> list[str]:
    p, s, ctx = turn.persona, turn.state, turn.context
    lines = [f"## Turn {number}: {p.name} ({p.id})", "",
             f"- Who: {p.name}, {p.role.strip()}",
             f"- Style: {p.speaking_style.strip() or '-'}",
             f"- State before the turn: trust {s.trust:.2f}, relationship {s.relationship:+.2f}, mood {s.mood}, "
             f"quest stage {ctx.quest_stage or s.quest_stage}",
             f"- Player carries: {', '.join(ctx.items) or 'nothing'}; has done: {', '.join(ctx.actions) or 'nothing'}"]
    if turn.history:
        lines.append("- Earlier in this conversation:")
        lines += [f"  - Player: {e.player}\n  - {p.name}: {e.npc}" for e in turn.history[-4:]]
    lines += ["", f"**Player:** {turn.utterance}", ""]
    return lines


def make_packet(data: str | Path, configs: Sequence[tuple[str, str | Path]], out: str | Path, turns: int = 60,
                seed: int = 7, reference: bool = False, world: str | Path | None = None, progress=None) -> dict:
    """Play `turns` sampled turns through each configuration; write packet.md, key.json, auto.json."""
    from .manager import AgentManager

    if len(configs) + int(reference) < 2:
        raise ReviewError("A blind review needs at least two candidates per turn: give two --config, or one and "
                          "--reference.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    managers = {name: AgentManager(folder) for name, folder in configs}
    first = next(iter(managers.values()))
    examples = sample_examples(data, {i: first.get_persona(i).persona for i in first.npc_ids()}, turns, seed)
    rng = random.Random(seed + 1)
    packet = ["# Blind review packet", "", RUBRIC, ""]
    if world and Path(world).is_file():
        packet += ["## The world", "", Path(world).read_text(encoding="utf-8").strip(), ""]
    key: list[dict[str, Any]] = []
    played: dict[str, list[tuple[Candidate, float]]] = {name: [] for name in managers}
    for number, example in enumerate(examples, start=1):
        candidates = []
        for name, manager in managers.items():
            candidate, elapsed = play(manager, example.turn, seed=seed + number)
            candidate = Candidate(name, candidate.text, candidate.events, candidate.refused, candidate.meta)
            played[name].append((candidate, elapsed))
            candidates.append(candidate)
        if reference:
            candidates.append(Candidate("reference", example.response, example.flags, (), {}))
        rng.shuffle(candidates)
        packet += _turn_header(number, example.turn)
        letters = {}
        for letter, candidate in zip("ABCDEFGH", candidates):
            applied = ", ".join(candidate.events) or "none"
            refused = f"; refused: {', '.join(candidate.refused)}" if candidate.refused else ""
            packet.append(f"- **{letter}** (events applied: {applied}{refused}): {candidate.text or '(empty)'}")
            letters[letter] = candidate.config
        packet.append("")
        key.append({"turn": number, "source": example.source, **letters})
        if progress:
            progress(number, len(examples))
    (out / "packet.md").write_text("\n".join(packet) + "\n", encoding="utf-8")
    (out / "key.json").write_text(json.dumps(key, indent=1) + "\n", encoding="utf-8")
    auto = {name: automatic_figures(runs) for name, runs in played.items()}
    (out / "auto.json").write_text(json.dumps(auto, indent=1) + "\n", encoding="utf-8")
    return auto


def automatic_figures(runs: list[tuple[Candidate, float]]) -> dict[str, Any]:
    from .default_plugins.authored_lines import OUT_OF_WORLD_WORDS, breaks_world, forbidden_pattern

    pattern = forbidden_pattern(OUT_OF_WORLD_WORDS)
    texts = [c.text for c, _ in runs]
    n = max(1, len(runs))
    return {
        "turns": len(runs),
        "empty_replies": sum(1 for t in texts if not t.strip()),
        "out_of_world_replies": sum(1 for t in texts if breaks_world(t, pattern)),
        "authored_share": round(sum(1 for c, _ in runs if c.meta.get("reply_source") == "authored") / n, 3),
        "distinct_replies": len(set(texts)),
        "mean_words": round(statistics.fmean(len(t.split()) for t in texts), 1) if texts else 0.0,
        "median_turn_s": round(statistics.median(e for _, e in runs), 3) if runs else 0.0,
    }


def _load_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReviewError(f"{path}: cannot read JSON ({exc}).") from None


def unblind(key_path: str | Path, score_paths: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """Per configuration: mean sense, mean character, ship count, per reviewer and together."""
    key = {row["turn"]: row for row in _load_json(key_path)}
    table: dict[str, dict[str, Any]] = {}
    for reviewer, path in enumerate(score_paths, start=1):
        scores = _load_json(path)
        if not isinstance(scores, list):
            raise ReviewError(f"{path}: expected a JSON list of {{turn, candidate, sense, character, ship}}.")
        for i, s in enumerate(scores):
            try:
                config = key[int(s["turn"])][str(s["candidate"])]
                sense, character, ship = float(s["sense"]), float(s["character"]), bool(s["ship"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ReviewError(f"{path}: entry {i}: {exc!r}; each entry needs turn, candidate (a letter of that "
                                  "turn), sense, character and ship.") from None
            row = table.setdefault(config, {"scores": []})
            row["scores"].append((reviewer, sense, character, ship))
    for config, row in table.items():
        scores = row.pop("scores")
        row["ratings"] = len(scores)
        row["sense"] = round(statistics.fmean(s for _, s, _, _ in scores), 2)
        row["character"] = round(statistics.fmean(c for _, _, c, _ in scores), 2)
        row["ship_share"] = round(sum(1 for *_, ok in scores if ok) / len(scores), 3)
        row["per_reviewer"] = {
            r: {"sense": round(statistics.fmean(s for rr, s, _, _ in scores if rr == r), 2),
                "character": round(statistics.fmean(c for rr, _, c, _ in scores if rr == r), 2),
                "ship": sum(1 for rr, *_, ok in scores if rr == r and ok),
                "of": sum(1 for rr, *_ in scores if rr == r)}
            for r in sorted({rr for rr, *_ in scores})}
    return table


def format_table(table: dict[str, dict[str, Any]]) -> str:
    lines = ["| replies from | sense (1-5) | character (1-5) | would ship | per reviewer (sense/character/ship) |",
             "|---|---|---|---|---|"]
    for config, row in sorted(table.items()):
        per = "; ".join(f"#{r}: {v['sense']}/{v['character']}/{v['ship']} of {v['of']}"
                        for r, v in row["per_reviewer"].items())
        lines.append(f"| {config} | {row['sense']} | {row['character']} | {row['ship_share']:.0%} | {per} |")
    return "\n".join(lines)
