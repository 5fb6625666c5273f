"""Reading persona YAML files: defaults merged under each, every problem reported at once.

A folder of personas is `npcs/*.yaml`; files whose name starts with `_` are not NPCs
(`_defaults.yaml` holds the shared defaults merged under every persona). Each problem
becomes one `file: field.path: message` line of a single PersonaFileError, so a writer
fixes all of them in one pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .errors import PersonaFileError
from .fileutil import load_yaml
from .game import DEFAULT_GAME, GameDefinition, game_file, load_game
from .persona import STAGES, Persona
from .plugins import StepRegistry
from .steps import StepOptions

DEFAULTS_FILE = "_defaults.yaml"


@dataclass(frozen=True)
class LoadedPersona:
    persona: Persona
    path: Path
    #: Each stage's steps with validated options, in pipeline order.
    step_options: dict[str, tuple[tuple[str, StepOptions], ...]]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge key by key, anything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problems.append(f"{path}: {where}: invalid YAML: {getattr(exc, 'problem', exc)}")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read: {exc}")
        return None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{path}: top level: expected a mapping of persona fields, got {type(data).__name__}")
        return None
    return data


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _expected(model: type[BaseModel], option: str) -> str:
    field = model.model_fields.get(option)
    if field is None:
        return ""
    annotation = field.annotation
    if get_origin(annotation) is not None and get_args(annotation):
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", str(annotation))


def _pydantic_problems(path: Path, prefix: tuple[Any, ...], exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `persona-agents schema` lists the fields)"
        elif "input" in err and err["type"] not in ("missing", "value_error"):
            shown = repr(err["input"])
            msg = f"{msg} (got {shown[:60]})"
        lines.append(f"{path}: {_loc(loc)}: {msg}")
    return lines


def _validate_steps(path: Path, persona: Persona, registry: StepRegistry, problems: list[str]):
    validated: dict[str, tuple[tuple[str, StepOptions], ...]] = {}
    for stage in STAGES:
        entries = []
        for index, spec in enumerate(getattr(persona.pipeline, stage)):
            where = f"pipeline.{stage}[{index}]"
            info = registry.get(spec.name)
            if info is None or info.stage != stage:
                available = ", ".join(registry.names(stage)) or "(none registered)"
                elsewhere = f" ('{spec.name}' is a {info.stage} step.)" if info is not None else ""
                problems.append(
                    f"{path}: {where}: Unknown {stage} step '{spec.name}' in {path} (pipeline.{stage}). "
                    f"Available: {available}.{elsewhere}"
                )
                continue
            try:
                options = info.cls.Options.model_validate(spec.options)
            except ValidationError as exc:
                for err in exc.errors():
                    option = ".".join(str(p) for p in err["loc"])
                    top = str(err["loc"][0]) if err["loc"] else ""
                    if err["type"] == "extra_forbidden":
                        valid = ", ".join(info.cls.Options.model_fields) or "(none)"
                        problems.append(
                            f"{path}: {where}.options.{option}: step '{spec.name}' has no option '{option}'. "
                            f"Valid options: {valid}."
                        )
                    else:
                        expects = _expected(info.cls.Options, top)
                        problems.append(
                            f"{path}: {where}.options.{option}: option '{option}' of step '{spec.name}' "
                            f"expects {expects or 'another value'}: {err['msg']} (got {err.get('input')!r})."
                        )
                continue
            entries.append((spec.name, options))
        validated[stage] = tuple(entries)
    return validated


def _names(names) -> str:
    return ", ".join(repr(n) for n in names)


def check_against_game(path: Path, persona: Persona, game: GameDefinition, problems: list[str],
                       source: str = "") -> None:
    """Every event, quest stage and mood a persona names must be declared by the game."""
    where = f" (declared in {source})" if source else ""
    events_hint = f"valid flags: {', '.join(game.events)}{where}"
    stages_hint = f"valid quest stages: {', '.join(game.quest_stages)}{where}"
    unknown = game.unknown_events(persona.flag_rules)
    if unknown:
        problems.append(f"{path}: flag_rules: unknown flag(s) {_names(unknown)}; {events_hint}")
    for name, rule in persona.flag_rules.items():
        for alt_index, alt in enumerate([rule, *rule.any_of]):
            field = f"flag_rules.{name}" + (f".any_of[{alt_index - 1}]" if alt_index else "")
            bad = game.unknown_stages(alt.stages or [])
            if bad:
                problems.append(f"{path}: {field}.stages: unknown quest stage(s) {_names(bad)}; {stages_hint}")
        if rule.sets_stage is not None and rule.sets_stage not in game.quest_stages:
            problems.append(f"{path}: flag_rules.{name}.sets_stage: unknown quest stage {rule.sets_stage!r}; "
                            f"{stages_hint}")
        if rule.sets_mood is not None and game.moods and rule.sets_mood not in game.moods:
            problems.append(f"{path}: flag_rules.{name}.sets_mood: undeclared mood {rule.sets_mood!r}; "
                            f"valid moods: {', '.join(game.moods)}{where}")
        unknown_axes = [axis for axis in rule.changes if axis not in game.extra_axes]
        if unknown_axes:
            problems.append(f"{path}: flag_rules.{name}.changes: {_names(unknown_axes)} not an extra axis of the "
                            f"game; {game.extra_axes_hint()}{where}")
    for index, line in enumerate(persona.lines):
        for field in ("events", "refuses"):
            bad = game.unknown_events(getattr(line, field))
            if bad:
                problems.append(f"{path}: lines[{index}].{field}: unknown flag(s) {_names(bad)}; {events_hint}")
        bad = game.unknown_stages(line.stages or [])
        if bad:
            problems.append(f"{path}: lines[{index}].stages: unknown quest stage(s) {_names(bad)}; {stages_hint}")
    for index, mood_rule in enumerate(persona.mood_rules):
        if game.moods and mood_rule.mood not in game.moods:
            problems.append(f"{path}: mood_rules[{index}].mood: undeclared mood {mood_rule.mood!r}; valid moods: "
                            f"{', '.join(game.moods)}{where}")
    stage = persona.initial_state.quest_stage
    if stage not in game.quest_stages:
        problems.append(f"{path}: initial_state.quest_stage: unknown quest stage {stage!r}; {stages_hint}")
    mood = persona.initial_state.mood
    if game.moods and mood not in game.moods:
        problems.append(f"{path}: initial_state.mood: undeclared mood {mood!r}; valid moods: "
                        f"{', '.join(game.moods)}{where}")


def load_persona_file(path: Path, registry: StepRegistry, defaults: dict[str, Any] | None = None,
                      game: GameDefinition | None = None) -> LoadedPersona:
    """Load and fully validate one persona file (raises PersonaFileError); `game`: the game
    it must fit (default: the `_game.yaml` beside it, or the default game)."""
    problems: list[str] = []
    path = Path(path)
    if game is None:
        game = load_game(path.parent)
    result = _load_one(path, registry, defaults or {}, problems, game, _game_source(path.parent))
    if problems or result is None:
        raise PersonaFileError(problems)
    return result


def _game_source(npcs_dir: Path) -> str:
    path = game_file(npcs_dir)
    return str(path) if path.is_file() else ""


def _load_one(path: Path, registry: StepRegistry, defaults: dict[str, Any], problems: list[str],
              game: GameDefinition = DEFAULT_GAME, game_source: str = "") -> LoadedPersona | None:
    data = _read_yaml(path, problems)
    if data is None:
        return None
    try:
        persona = Persona.model_validate(deep_merge(defaults, data))
    except ValidationError as exc:
        problems.extend(_pydantic_problems(path, (), exc))
        return None
    before = len(problems)
    check_against_game(path, persona, game, problems, game_source)
    if len(problems) > before:
        return None
    options = _validate_steps(path, persona, registry, problems)
    if len(problems) > before:
        return None
    return LoadedPersona(persona, path, options)


def persona_files(npcs_dir: Path) -> list[Path]:
    return sorted(p for p in Path(npcs_dir).glob("*.yaml") if not p.name.startswith("_"))


def load_defaults(npcs_dir: Path, problems: list[str]) -> dict[str, Any]:
    path = Path(npcs_dir) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    return _read_yaml(path, problems) or {}


def load_personas(npcs_dir: Path, registry: StepRegistry) -> dict[str, LoadedPersona]:
    """Every persona of a folder, validated up front: one error lists every problem."""
    npcs_dir = Path(npcs_dir)
    if not npcs_dir.is_dir():
        raise PersonaFileError([f"{npcs_dir}: not a folder of persona files (give --npcs-dir DIR)"])
    problems: list[str] = []
    game = load_game(npcs_dir)  # raises with its own file: field: message lines
    source = _game_source(npcs_dir)
    defaults = load_defaults(npcs_dir, problems)
    loaded: dict[str, LoadedPersona] = {}
    for path in persona_files(npcs_dir):
        result = _load_one(path, registry, defaults, problems, game, source)
        if result is None:
            continue
        other = loaded.get(result.persona.id)
        if other is not None:
            problems.append(f"{path}: id: '{result.persona.id}' is already used by {other.path}")
            continue
        loaded[result.persona.id] = result
    if game.word_travels and loaded:
        from .memory.word import unknown_npcs

        problems += [f"{game_file(npcs_dir)}: {problem}" for problem in unknown_npcs(game, loaded)]
    if problems:
        raise PersonaFileError(problems)
    return loaded
