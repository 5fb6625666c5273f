"""Running plans against the real pipeline and checking each expectation."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..manager import AgentManager, initial_state
from ..turn import GameContext, NpcState, TurnResponse
from .loader import LoadedPlan
from .schema import DeltaExpectation, Plan, PlanTurn

if TYPE_CHECKING:
    from ..scenes.runner import SceneResponse

NO_CHANGE = 0.02  # a delta smaller than this counts as "none" (labeling guide: neutral band)
NO_HEADS = "no flag probabilities (no state heads loaded)"


@dataclass(frozen=True)
class Check:
    turn: int
    name: str
    passed: bool
    expected: str
    got: str


@dataclass
class PlanRun:
    plan: Plan
    path: str
    seed: int
    checks: list[Check] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.checks)


def _probs(response: TurnResponse, names: list[str]) -> str:
    if response.flag_probs is None:
        return NO_HEADS
    return ", ".join(f"p({n})={response.flag_probs.get(n, 0.0):.2f}" for n in names)


def _delta_ok(exp: DeltaExpectation, value: float) -> bool:
    direction = {"up": value >= NO_CHANGE, "down": value <= -NO_CHANGE, "none": abs(value) < NO_CHANGE, "any": True}
    return direction[exp.direction] and exp.holds(value)


def check_turn(number: int, spec: PlanTurn, response: TurnResponse) -> list[Check]:
    exp, checks = spec.expect, []
    fired = {f.name for f in response.flags}
    rejected = {f.name: f.reason for f in response.flags_rejected}
    for flag in exp.flags:
        got = "fired" if flag in fired else (f"rejected ({rejected[flag]})" if flag in rejected else "not fired")
        checks.append(Check(number, f"flag {flag} fires", flag in fired, "fired", f"{got}; {_probs(response, [flag])}"))
    for flag in exp.no_flags:
        checks.append(Check(number, f"flag {flag} does not fire", flag not in fired, "not fired",
                            f"{'fired' if flag in fired else 'not fired'}; {_probs(response, [flag])}"))
    for axis, dexp in exp.deltas.items():
        value = getattr(response.deltas, axis) if axis in ("trust", "relationship") else response.deltas.axes.get(axis)
        want = f"direction {dexp.direction}" + ("" if dexp.describe() == "any value" else f", {dexp.describe()}")
        checks.append(Check(number, f"delta {axis}", value is not None and _delta_ok(dexp, value), want,
                            "not an axis of this game" if value is None else f"{value:+.3f}"))
    if exp.state:
        for axis in ("trust", "relationship"):
            rng = getattr(exp.state, axis)
            if rng is not None:
                value = getattr(response.state, axis)
                checks.append(Check(number, f"state {axis}", rng.holds(value), rng.describe(), f"{value:.3f}"))
        for axis_name, axis_range in exp.state.axes.items():
            axis_value = response.state.axes.get(axis_name)
            checks.append(Check(number, f"state {axis_name}", axis_value is not None and axis_range.holds(axis_value),
                                axis_range.describe(),
                                "not an axis of this game" if axis_value is None else f"{axis_value:+.3f}"))
        if exp.state.quest_stage is not None:
            checks.append(Check(number, "state quest_stage", response.state.quest_stage == exp.state.quest_stage,
                                exp.state.quest_stage, response.state.quest_stage))
    if exp.reply:
        for pattern in exp.reply.matches:
            checks.append(Check(number, f"reply matches /{pattern}/", re.search(pattern, response.text) is not None,
                                "a match", repr(response.text[:120])))
        for pattern in exp.reply.not_matches:
            checks.append(Check(number, f"reply does not match /{pattern}/", re.search(pattern, response.text) is None,
                                "no match", repr(response.text[:120])))
    if exp.lore:
        ids = [entry["id"] for entry in response.meta.get("lore", [])]
        for lore_id in exp.lore.retrieved:
            checks.append(Check(number, f"lore {lore_id} retrieved", lore_id in ids, "retrieved",
                                ", ".join(ids) or "none"))
        for lore_id in exp.lore.not_retrieved:
            checks.append(Check(number, f"lore {lore_id} not retrieved", lore_id not in ids, "not retrieved",
                                ", ".join(ids) or "none"))
    if exp.memories:
        recalled = sorted({entry["turn"] for entry in response.meta.get("memories", [])})
        got = ", ".join(f"turn {t}" for t in recalled) or "none"
        for turn in exp.memories.recalled:
            checks.append(Check(number, f"a memory of turn {turn} recalled", turn in recalled, "recalled", got))
        for turn in exp.memories.not_recalled:
            checks.append(Check(number, f"no memory of turn {turn} recalled", turn not in recalled, "not recalled",
                                got))
    return checks


#: Called after each turn with (turn number from 1, the plan's turn, the response).
TurnObserver = Callable[[int, PlanTurn, TurnResponse], None]


def run_plan(manager: AgentManager, loaded: LoadedPlan, seed: int, run_index: int = 0,
             on_turn: TurnObserver | None = None) -> PlanRun:
    """One run of a plan on a fresh conversation (its own player id in the manager's store)."""
    plan = loaded.plan
    result = PlanRun(plan, str(loaded.path), seed)
    player = f"{plan.player}#{run_index}"
    base = initial_state(manager.get_persona(plan.npc), manager.game)
    start = NpcState(
        trust=plan.start.trust if plan.start.trust is not None else base.trust,
        relationship=plan.start.relationship if plan.start.relationship is not None else base.relationship,
        mood=plan.start.mood or base.mood,
        quest_stage=plan.start.quest_stage or base.quest_stage,
        axes={**base.axes, **plan.start.axes},
    )
    manager.store.reset(player)  # every NPC: a plan may talk to several, and word travels between them
    manager.store.put_state(player, plan.npc, start)
    items, actions = list(plan.context.items), list(plan.context.actions)
    stage, location = plan.context.quest_stage, plan.context.location
    for number, spec in enumerate(plan.turns, 1):
        items = [i for i in items + [g for g in spec.gain_items if g not in items] if i not in spec.lose_items]
        actions += [a for a in spec.add_actions if a not in actions]
        stage = spec.set_stage or stage
        location = spec.location or location
        context = GameContext(quest_stage=stage, location=location, items=tuple(items), actions=tuple(actions),
                              game_state=dict(plan.context.game_state))
        try:
            if spec.scene is not None:
                scene = manager.scene_turn(f"plan-{run_index}", spec.scene, spec.say, player_id=player,
                                           context=context, seed=seed + number)
                result.replies.append(" / ".join(f"{r.name}: {r.response.text}" for r in scene.replies))
                result.checks += check_scene_turn(number, spec, scene)
                continue
            response = manager.turn(spec.npc or plan.npc, spec.say, player_id=player, context=context,
                                    seed=seed + number)
        except Exception as exc:  # a crash is a failed plan, reported, not a traceback
            result.error = f"turn {number}: {type(exc).__name__}: {exc}"
            return result
        result.replies.append(response.text)
        result.checks += check_turn(number, spec, response)
        if on_turn is not None:
            on_turn(number, spec, response)
    return result


def check_scene_turn(number: int, spec: PlanTurn, scene: SceneResponse) -> list[Check]:
    """A scene turn's checks: who answered and why, and the events of all replies together."""
    exp, checks = spec.expect, []
    speakers = [r.npc_id for r in scene.replies]
    reason = scene.choice.get("reason")
    if exp.speakers is not None:
        checks.append(Check(number, f"{', '.join(exp.speakers) or 'no one'} answer(s)", speakers == exp.speakers,
                            ", ".join(exp.speakers) or "no one", f"{', '.join(speakers) or 'no one'} ({reason})"))
    if exp.speaker_reason is not None:
        checks.append(Check(number, f"they answer by {exp.speaker_reason}", reason == exp.speaker_reason,
                            exp.speaker_reason, str(reason)))
    fired = {f"{r.npc_id}:{f.name}" for r in scene.replies for f in r.response.flags}
    names = {name.split(":")[1] for name in fired}
    for flag in exp.flags:
        checks.append(Check(number, f"flag {flag} fires", flag in names, "fired", ", ".join(sorted(fired)) or "none"))
    for flag in exp.no_flags:
        checks.append(Check(number, f"flag {flag} does not fire", flag not in names, "not fired",
                            ", ".join(sorted(fired)) or "none"))
    return checks
