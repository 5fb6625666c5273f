"""Training and evaluation data: JSONL in the seed's format, validated line by line.

One JSON object per line (UTF-8):

    npc_id            str, the persona id (npcs/<id>.yaml gives name, role, backstory)
    tags              {location?, quest_stage?, relationship?, trust?, npc_mood?, ...}:
                      the NPC's state *before* the turn; `relationship` is a number in
                      [-1, 1] or a label (RELATIONSHIP_LABELS), `trust` a number in [0, 1]
    context           [{role: "player"|"npc", text}]: earlier turns, oldest first
    player_utterance  str
    response          str, the NPC's reply (the LM learns it)
    delta             [trust_change, relationship_change], each in [-1, 1]
    flag              [names] from the flag vocabulary (may be empty)
    conversation_id?  str;  player_state? {items: [..], actions: [..]};
    game_state?       {key: value};  lore? str or [str] (shown as LORE lines)

Each record becomes a `persona_agents.turn.Turn`, so `render_sectioned` gives exactly the
prompt the `sectioned` step renders at inference. Every problem is reported at once, as
`file:line: field: message. Fix: ...`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import TrainingDataError
from ..flags import DEFAULT_FLAGS
from ..persona import Persona
from ..turn import Exchange, GameContext, LoreChunk, NpcState, RejectedFlag, Turn

#: Relationship labels (as the seed writes them) -> the number the prompt shows. Each is
#: the middle of its band in training/data/README.md: enemy < -0.5 <= rival < -0.2 <=
#: stranger < 0.2 <= acquaintance < 0.5 <= friend < 0.8 <= close_friend.
RELATIONSHIP_LABELS: dict[str, float] = {
    "enemy": -0.75,
    "hostile": -0.6,
    "rival": -0.35,
    "stranger": 0.0,
    "neutral": 0.0,
    "acquaintance": 0.35,
    "friendly": 0.5,
    "friend": 0.65,
    "ally": 0.7,
    "close_friend": 0.9,
    "family": 0.9,
}

REQUIRED = ("npc_id", "tags", "context", "player_utterance", "response", "delta", "flag")
OPTIONAL = ("conversation_id", "player_state", "game_state", "lore")


@dataclass(frozen=True)
class Example:
    """One validated record: the turn to render, and what the model should produce."""

    turn: Turn
    response: str
    delta: tuple[float, float]
    flags: tuple[str, ...]
    source: str  # "file:line", for messages
    conversation_id: str | None = None
    #: Prompt version 2 only: the writers' lines shown after the decision (grounding.py),
    #: and refusals the decision states beyond what the rules make of `flags`.
    grounding: tuple[str, ...] = ()
    refused: tuple[RejectedFlag, ...] = ()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def relationship_value(value: Any) -> float:
    """A number in [-1, 1], or a label of RELATIONSHIP_LABELS; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a number or a label, got a boolean")
    if isinstance(value, (int, float)):
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"number {value} is outside [-1, 1]")
        return float(value)
    if isinstance(value, str):
        key = value.strip().lower().replace(" ", "_").replace("-", "_")
        if key in RELATIONSHIP_LABELS:
            return RELATIONSHIP_LABELS[key]
        raise ValueError(f"unknown label {value!r}; labels: {', '.join(RELATIONSHIP_LABELS)}")
    raise ValueError(f"expected a number in [-1, 1] or a label, got {type(value).__name__}")


class _Problems:
    def __init__(self, where: str):
        self.where = where
        self.items: list[str] = []

    def add(self, field: str, message: str, fix: str) -> None:
        self.items.append(f"{self.where}: {field}: {message}. Fix: {fix}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _str_list(record: dict, key: str, field: str, p: _Problems) -> tuple[str, ...]:
    value = record.get(key, [])
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        p.add(field, f"expected a list of strings, got {json.dumps(value, ensure_ascii=False)[:60]}",
              f'write "{key}": ["..."] (or [] for none)')
        return ()
    return tuple(value)


def _history(context: Any, p: _Problems) -> tuple[Exchange, ...]:
    if not isinstance(context, list):
        p.add("context", f"expected a list of {{role, text}} objects, got {type(context).__name__}",
              'write "context": [] for a first line, or [{"role": "player", "text": "..."}, ...]')
        return ()
    exchanges: list[Exchange] = []
    pending: str | None = None
    for i, item in enumerate(context):
        field = f"context[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            p.add(field, "expected an object with a string 'text'", 'write {"role": "player", "text": "..."}')
            continue
        role = item.get("role")
        if role == "player":
            if pending is not None:  # two player lines in a row: the NPC said nothing
                exchanges.append(Exchange(player=pending, npc=""))
            pending = item["text"]
        elif role == "npc":
            exchanges.append(Exchange(player=pending or "", npc=item["text"]))
            pending = None
        else:
            p.add(f"{field}.role", f"unknown role {role!r}", 'use "player" or "npc"')
    if pending is not None:
        exchanges.append(Exchange(player=pending, npc=""))
    return tuple(exchanges)


def minimal_persona(npc_id: str) -> Persona:
    """A stand-in for an NPC without a persona file: the prompt still carries its id."""
    return Persona(
        id=npc_id if re.fullmatch(r"[a-z][a-z0-9_]*", npc_id) else "unknown_npc",
        name=npc_id, role="a character of the game.",
        pipeline={"prompt": ["sectioned"], "generate": ["multihead"]},
    )


def parse_record(record: Any, where: str, flags: Sequence[str], personas: dict[str, Persona],
                 axes: Mapping[str, Any] | None = None) -> tuple[Example | None, list[str]]:
    """One record -> (Example, []) or (None, problems). `axes`: the game's extra state axes
    (name -> AxisSpec), read from the record's tags like trust (absent: the initial value)."""
    p = _Problems(where)
    if not isinstance(record, dict):
        p.add("line", f"expected a JSON object, got {type(record).__name__}", "write one {...} object per line")
        return None, p.items
    for key in REQUIRED:
        if key not in record:
            p.add(key, "missing", f'add "{key}" (required fields: {", ".join(REQUIRED)})')
    unknown = sorted(set(record) - set(REQUIRED) - set(OPTIONAL))
    for key in unknown:
        p.add(key, "unknown field", f"remove it, or use one of: {', '.join(REQUIRED + OPTIONAL)}")
    if p.items:
        return None, p.items

    npc_id = record["npc_id"]
    if not isinstance(npc_id, str) or not npc_id.strip():
        p.add("npc_id", "expected a non-empty string", 'write "npc_id": "blacksmith_village_center"')
        npc_id = "unknown_npc"
    persona = personas.get(npc_id) or minimal_persona(npc_id)
    init = persona.initial_state

    tags = record["tags"]
    trust, relationship, mood, stage, location = init.trust, init.relationship, init.mood, None, None
    extra: dict[str, float] = {name: spec.initial for name, spec in (axes or {}).items()}
    if not isinstance(tags, dict):
        p.add("tags", f"expected an object, got {type(tags).__name__}",
            'write "tags": {"trust": 0.5, "relationship": 0.0}')
    else:
        if "trust" in tags:
            if _number(tags["trust"]) and 0.0 <= tags["trust"] <= 1.0:
                trust = float(tags["trust"])
            else:
                p.add("tags.trust", f"expected a number in [0, 1], got {tags['trust']!r}", 'write "trust": 0.4')
        if "relationship" in tags:
            try:
                relationship = relationship_value(tags["relationship"])
            except ValueError as exc:
                p.add("tags.relationship", str(exc), 'write a number in [-1, 1] or a label such as "friend"')
        mood = str(tags.get("npc_mood", tags.get("mood", mood)))
        for name, spec in (axes or {}).items():
            if name in tags:
                if _number(tags[name]) and spec.min <= tags[name] <= spec.max:
                    extra[name] = float(tags[name])
                else:
                    p.add(f"tags.{name}", f"expected a number in [{spec.min:g}, {spec.max:g}] (the game's axis), "
                          f"got {tags[name]!r}", f'write "{name}": {spec.initial:g}')
        stage = tags.get("quest_stage")
        location = tags.get("location")
        for key, value in (("quest_stage", stage), ("location", location)):
            if value is not None and not isinstance(value, str):
                p.add(f"tags.{key}", f"expected a string, got {value!r}", f'write "{key}": "..."')

    for key in ("player_utterance", "response"):
        if not isinstance(record[key], str) or not record[key].strip():
            p.add(key, "expected a non-empty string", f'write "{key}": "..."')

    delta = record["delta"]
    if not (isinstance(delta, list) and len(delta) == 2 and all(_number(d) and -1.0 <= d <= 1.0 for d in delta)):
        p.add("delta", f"expected [trust_change, relationship_change], each a number in [-1, 1], got "
              f"{json.dumps(delta)[:60]}", 'write "delta": [0.05, 0.0]')
        delta = [0.0, 0.0]

    names = record["flag"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        p.add("flag", f"expected a list of flag names, got {json.dumps(names, ensure_ascii=False)[:60]}",
              'write "flag": [] or "flag": ["give_hint"]')
        names = []
    for name in names:
        if name not in flags:
            p.add("flag", f"unknown flag {name!r}", f"use names of the vocabulary: {', '.join(flags)}")

    items: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    player_state = record.get("player_state")
    if player_state is not None:
        if not isinstance(player_state, dict):
            p.add("player_state", "expected an object", 'write "player_state": {"items": [], "actions": []}')
        else:
            for key in sorted(set(player_state) - {"items", "actions", "position"}):
                p.add(f"player_state.{key}", "unknown field", "use items, actions (position is ignored)")
            items = _str_list(player_state, "items", "player_state.items", p)
            actions = _str_list(player_state, "actions", "player_state.actions", p)
    game_state = record.get("game_state") or {}
    if not isinstance(game_state, dict):
        p.add("game_state", "expected an object", 'write "game_state": {"time_of_day": "day"}')
        game_state = {}
    lore = record.get("lore") or []
    if isinstance(lore, str):
        lore = [lore]
    if not isinstance(lore, list) or not all(isinstance(x, str) for x in lore):
        p.add("lore", "expected a string or a list of strings", 'write "lore": ["The mill burned in ..."]')
        lore = []
    conversation_id = record.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, (str, int)):
        p.add("conversation_id", "expected a string", 'write "conversation_id": "brann-0001"')
        conversation_id = None

    history = _history(record["context"], p)
    if p.items:
        return None, p.items
    turn = Turn(
        npc_id=npc_id, player_id="player", utterance=record["player_utterance"], persona=persona,
        state=NpcState(trust=trust, relationship=relationship, mood=mood, quest_stage=stage or init.quest_stage,
                       axes=extra),
        context=GameContext(quest_stage=stage, location=location, items=items, actions=actions, game_state=game_state),
        history=history,
        lore=tuple(LoreChunk(id=f"record:{i}", text=t, score=1.0) for i, t in enumerate(lore)),
    )
    example = Example(turn=turn, response=record["response"].strip(), delta=(float(delta[0]), float(delta[1])),
                      flags=tuple(n for n in flags if n in names), source=where,
                      conversation_id=None if conversation_id is None else str(conversation_id))
    return example, []


def load_personas_for_data(npcs_dir: str | Path | None) -> dict[str, Persona]:
    """The personas of an NPC folder (the same text inference renders), or none."""
    if npcs_dir is None or not Path(npcs_dir).is_dir():
        return {}
    from ..persona_loader import load_personas
    from ..plugins import load_plugins
    from ..runtime import plugins_dir_of

    host = load_plugins(plugins_dir_of(npcs_dir))
    personas = {npc_id: loaded.persona for npc_id, loaded in load_personas(Path(npcs_dir), host.registry).items()}
    return {npc_id: with_event_meanings(persona, npcs_dir) for npc_id, persona in personas.items()}


def with_event_meanings(persona: Persona, npcs_dir: str | Path) -> Persona:
    """The persona with each event's meaning as the game's prompt step writes it: its own
    `means`, else the game's description of the event (prompt versions 2 and 3 show it).
    Without this, training prompts said `give item` where the game's say `the NPC hands
    the player an item now`."""
    from ..game import load_game

    descriptions = {name: spec.description for name, spec in load_game(Path(npcs_dir)).events.items()}
    rules = {name: rule.model_copy(update={"means": descriptions[name]})
             if not rule.means and name in descriptions else rule for name, rule in persona.flag_rules.items()}
    return persona.model_copy(update={"flag_rules": rules})


def load_examples(paths: Iterable[str | Path], flags: Sequence[str] = DEFAULT_FLAGS,
                  personas: dict[str, Persona] | None = None,
                  axes: Mapping[str, Any] | None = None) -> list[Example]:
    """Every record of every file, validated; one TrainingDataError lists all problems.
    `axes`: the game's extra state axes, read from the tags (`parse_record`)."""
    personas = personas or {}
    examples: list[Example] = []
    problems: list[str] = []
    for path in paths:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{path}: file not found. Fix: give an existing JSONL file")
            continue
        except UnicodeDecodeError as exc:
            problems.append(f"{path}: byte {exc.start}: not UTF-8. Fix: save the file as UTF-8")
            continue
        count = 0
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: line: invalid JSON ({exc.msg} at column {exc.colno}). "
                                "Fix: one complete JSON object per line")
                continue
            example, found = parse_record(record, where, flags, personas, axes)
            problems.extend(found)
            if example is not None:
                examples.append(example)
                count += 1
        if count == 0 and not any(p.startswith(str(path)) for p in problems):
            problems.append(f"{path}: file: no records. Fix: write one JSON object per line")
    if problems:
        raise TrainingDataError(problems, header=f"{len(problems)} problem(s) in training data:")
    return examples


def retrieve_lore(examples: list[Example], npcs_dir: str | Path) -> list[Example]:
    """Each example with the lore its persona's own retrieve step finds for it, exactly as
    at inference, so the adapter trains on the prompts the game renders. Records that
    carry their own `lore`, and NPCs without a persona file or retrieve step, are kept."""
    import dataclasses

    from ..persona_loader import load_personas
    from ..plugins import load_plugins
    from ..runtime import Runtime, plugins_dir_of

    host = load_plugins(plugins_dir_of(npcs_dir))
    loaded = load_personas(Path(npcs_dir), host.registry)
    runtime = Runtime(npcs_dir=Path(npcs_dir))
    # Every retrieve step of the NPC, in its order, as the pipeline runs them: each adds to
    # what the earlier ones found. (Keeping only the last one dropped the sample NPCs' lore
    # from training and evaluation prompts once they had a second step, recall_memories,
    # which finds nothing in labelled data.)
    steps: dict[str, list[Any]] = {}
    for npc_id, persona in loaded.items():
        for name, options in persona.step_options.get("retrieve", ()):
            info = host.registry.get(name)
            assert info is not None  # load_personas validated every step name
            step = info.cls(options, persona.persona, runtime)
            step.warm_up()
            steps.setdefault(npc_id, []).append(step)
    result = []
    for example in examples:
        found = steps.get(example.turn.npc_id)
        if not found or example.turn.lore:
            result.append(example)
            continue
        turn = example.turn
        for step in found:
            turn = step.run(turn)
        result.append(dataclasses.replace(example, turn=example.turn.replace(lore=turn.lore)))
    return result
