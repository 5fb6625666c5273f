"""Reading plan files: every problem names the file, the plan, the turn and the field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml
from pydantic import ValidationError

from ..errors import PersonaAgentsError
from ..fileutil import load_yaml
from ..flags import DEFAULT_FLAGS
from .schema import SCENE_EXPECTATIONS, Plan, PlanFile


class PlanFileError(PersonaAgentsError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in test plans:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class LoadedPlan:
    plan: Plan
    path: Path


def plan_paths(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        elif path.is_file():
            found.append(path)
        else:
            raise PlanFileError([f"{path}: no such file or folder"])
    return found


def _where(path: Path, raw: object, loc: tuple) -> str:
    """`file: plan 'name': turn 2: field.path` from a pydantic error location."""
    parts, rest = [str(path)], list(loc)
    if rest[:1] == ["plans"] and len(rest) > 1 and isinstance(rest[1], int):
        index = rest[1]
        name = None
        plans = (raw.get("plans") if isinstance(raw, dict) and "plans" in raw
                 else (raw if isinstance(raw, list) else [raw]))
        if isinstance(plans, list) and index < len(plans) and isinstance(plans[index], dict):
            name = plans[index].get("name")
        parts.append(f"plan {name!r}" if name else f"plan #{index + 1}")
        rest = rest[2:]
        if rest[:1] == ["turns"] and len(rest) > 1 and isinstance(rest[1], int):
            parts.append(f"turn {rest[1] + 1}")
            rest = rest[2:]
    parts.append(".".join(str(r) for r in rest) or "(plan)")
    return ": ".join(parts)


def _plan_stages(plan) -> list[tuple[str, str]]:
    """(field, stage) for every quest stage a plan names."""
    found = []
    if plan.start is not None and plan.start.quest_stage:
        found.append(("start.quest_stage", plan.start.quest_stage))
    if getattr(plan, "context", None) is not None and plan.context.quest_stage:
        found.append(("context.quest_stage", plan.context.quest_stage))
    for number, turn in enumerate(plan.turns, 1):
        if turn.set_stage:
            found.append((f"turn {number}: set_stage", turn.set_stage))
        if turn.expect.state is not None and turn.expect.state.quest_stage:
            found.append((f"turn {number}: expect.state.quest_stage", turn.expect.state.quest_stage))
    return found


def _plan_axes(plan) -> list[tuple[str, str]]:
    """(field, axis) for every extra state axis a plan names."""
    found = [("start.axes", axis) for axis in (plan.start.axes if plan.start is not None else {})]
    for number, turn in enumerate(plan.turns, 1):
        if turn.expect.state is not None:
            found += [(f"turn {number}: expect.state.axes", axis) for axis in turn.expect.state.axes]
        found += [(f"turn {number}: expect.deltas", axis) for axis in turn.expect.deltas
                  if axis not in ("trust", "relationship")]
    return found


def load_plans(paths: Iterable[str | Path], npc_ids: Iterable[str], flags: Iterable[str] = DEFAULT_FLAGS,
               quest_stages: Iterable[str] | None = None,
               axes: Iterable[str] | None = None) -> list[LoadedPlan]:
    """Every plan of `paths`, checked against the NPCs, the game's events (`flags`), its
    extra axes and, when given, its quest stages; one PlanFileError lists every problem."""
    npc_ids, flags = set(npc_ids), list(flags)
    axis_names = list(axes or ())  # the game's extra axes; none unless the caller gives them
    stages = list(quest_stages) if quest_stages is not None else None
    problems: list[str] = []
    loaded: list[LoadedPlan] = []
    for path in plan_paths(paths):
        try:
            raw = load_yaml(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            problems.append(f"{path}: invalid YAML: {exc}")
            continue
        try:
            parsed = PlanFile.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                problems.append(f"{_where(path, raw, tuple(err['loc']))}: {err['msg']}")
            continue
        for plan in parsed.plans:
            where = f"{path}: plan {plan.name!r}"
            if plan.npc not in npc_ids:
                problems.append(f"{where}: npc: unknown NPC {plan.npc!r}; available: {', '.join(sorted(npc_ids))}")
            for number, turn in enumerate(plan.turns, 1):
                if turn.scene is not None:
                    unknown = [n for n in turn.scene if n not in npc_ids]
                    if unknown or not turn.scene or turn.npc is not None:
                        problems.append(f"{where}: turn {number}: scene: name NPCs present (ids"
                                        f"{'; unknown: ' + ', '.join(unknown) if unknown else ''}), without npc; "
                                        f"available: {', '.join(sorted(npc_ids))}")
                    other = sorted(turn.expect.model_fields_set - SCENE_EXPECTATIONS)
                    if other:
                        problems.append(f"{where}: turn {number}: expect: {', '.join(other)} not for a scene turn; "
                                        f"a scene turn expects {', '.join(sorted(SCENE_EXPECTATIONS))}")
                elif turn.expect.speakers is not None or turn.expect.speaker_reason is not None:
                    problems.append(f"{where}: turn {number}: expect.speakers: only a scene turn (scene: [...]) has "
                                    "speakers")
                if turn.npc is not None and turn.npc not in npc_ids:
                    problems.append(f"{where}: turn {number}: npc: unknown NPC {turn.npc!r}; "
                                    f"available: {', '.join(sorted(npc_ids))}")
                for field in ("flags", "no_flags"):
                    for flag in getattr(turn.expect, field):
                        if flag not in flags:
                            problems.append(f"{where}: turn {number}: expect.{field}: unknown flag {flag!r}; "
                                            f"valid flags: {', '.join(flags)}")
            if stages is not None:
                for field, stage in _plan_stages(plan):
                    if stage not in stages:
                        problems.append(f"{where}: {field}: unknown quest stage {stage!r}; "
                                        f"valid quest stages: {', '.join(stages)}")
            for field, axis in _plan_axes(plan):
                if axis not in axis_names:
                    valid = ", ".join(axis_names) or "none (declare them under axes: in _game.yaml)"
                    problems.append(f"{where}: {field}: {axis!r} is not trust, relationship or an extra axis of "
                                    f"the game; declared extra axes: {valid}")
            loaded.append(LoadedPlan(plan, path))
    if problems:
        raise PlanFileError(problems)
    return loaded
