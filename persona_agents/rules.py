"""Game rules: may this flag fire now, and how far may the state move in one turn?

Pure functions over a persona's `flag_rules` and `delta_policy` and the turn's facts,
used by the `game_rules` postprocess step. The model proposes; these decide. A delta
policy caps each turn's change and, with a `window`, the net rise over several turns, so
a run of flattering lines cannot farm trust up to a gate. Every
refusal carries a machine-readable reason:

    not_allowed, stage, trust_below, relationship_below, missing_item, missing_action,
    once_only, cooldown
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, cast

from .persona import AxisPolicy, DeltaPolicy, FlagRule, Persona
from .turn import Deltas, FiredFlag, RejectedFlag, Turn, effective_stage

REASONS: tuple[str, ...] = (
    "not_allowed", "stage", "trust_below", "relationship_below",
    "missing_item", "missing_action", "once_only", "cooldown",
)


@dataclass(frozen=True)
class RuleFacts:
    """What the rules look at: the state before the turn and the game's context."""

    quest_stage: str
    trust: float
    relationship: float
    items: frozenset[str]
    actions: frozenset[str]
    turn_number: int
    fired_at: tuple[int, ...]  # earlier turns at which this flag fired


def turn_facts(turn: Turn, fired_at: tuple[int, ...] = ()) -> RuleFacts:
    """The facts of a turn, before the NPC answers, for one flag that fired at `fired_at`."""
    ctx = turn.context
    return RuleFacts(
        quest_stage=effective_stage(turn), trust=turn.state.trust, relationship=turn.state.relationship,
        items=frozenset(ctx.items), actions=frozenset(ctx.actions), turn_number=turn.turn_number,
        fired_at=tuple(fired_at),
    )


@dataclass(frozen=True)
class Refusal:
    reason: str
    detail: str


def gate_refusal(gate, trust: float | None, relationship: float | None, items: Iterable[str],
                 actions: Iterable[str]) -> Refusal | None:
    """A gate on what the player has earned (`min_trust`, `min_relationship`,
    `requires_items`, `requires_actions`: a flag rule's or a lore entry's), or None when it
    holds. An unknown trust or relationship (None) never opens its gate."""
    if gate.min_trust is not None:
        if trust is None:
            return Refusal("trust_below", f"trust unknown; needs {gate.min_trust:.2f}")
        if trust < gate.min_trust:
            return Refusal("trust_below", f"trust {trust:.2f} < {gate.min_trust:.2f}")
    if gate.min_relationship is not None:
        if relationship is None:
            return Refusal("relationship_below", f"relationship unknown; needs {gate.min_relationship:+.2f}")
        if relationship < gate.min_relationship:
            return Refusal("relationship_below", f"relationship {relationship:+.2f} < {gate.min_relationship:+.2f}")
    missing = [i for i in gate.requires_items if i not in items]
    if missing:
        return Refusal("missing_item", "player lacks " + ", ".join(missing))
    missing = [a for a in gate.requires_actions if a not in actions]
    if missing:
        return Refusal("missing_action", "player has not done " + ", ".join(missing))
    return None


def _conditions(rule: FlagRule, facts: RuleFacts) -> Refusal | None:
    """The state conditions of one rule (stage, thresholds, items, actions)."""
    if rule.stages is not None and facts.quest_stage not in rule.stages:
        return Refusal("stage", f"quest stage is {facts.quest_stage!r}; allowed in {', '.join(rule.stages)}")
    return gate_refusal(rule, facts.trust, facts.relationship, facts.items, facts.actions)


def check_flag(rule: FlagRule | None, facts: RuleFacts, unlisted_allowed: bool = False) -> Refusal | None:
    """None if the flag may fire now, else why not."""
    if rule is None:
        return None if unlisted_allowed else Refusal("not_allowed", "no rule allows this flag for this NPC")
    if not rule.allowed:
        return Refusal("not_allowed", "this NPC never fires this flag")
    refusal = _conditions(rule, facts)
    if refusal:
        return refusal
    if rule.any_of:
        refusals = [_conditions(alt, facts) for alt in rule.any_of]
        if all(refusals):
            first = cast(Refusal, refusals[0])  # all() above: none is None
            return Refusal(first.reason, " or ".join(r.detail for r in refusals if r))
    if rule.once and facts.fired_at:
        return Refusal("once_only", f"already fired on turn {facts.fired_at[0]}")
    if rule.cooldown_turns and facts.fired_at:
        since = facts.turn_number - facts.fired_at[-1]
        if since < rule.cooldown_turns:
            return Refusal("cooldown", f"fired {since} turn(s) ago; cooldown is {rule.cooldown_turns}")
    return None


def window_allowance(axis: AxisPolicy, earlier: Sequence[float]) -> float | None:
    """How far the axis may still rise this turn under its window (None: no window).

    `earlier` are the deltas applied on earlier turns, oldest first; the window is this
    turn and the `turns - 1` before it, and their sum may not exceed `max_up`."""
    if axis.window is None:
        return None
    recent = earlier[max(0, len(earlier) - (axis.window.turns - 1)):]
    # Rounded like the deltas themselves, so 0.1 + 0.1 + 0.05 leaves nothing of 0.25.
    return max(0.0, round(axis.window.max_up - sum(recent), 6))


def _limit_axis(delta: float, current: float, axis: AxisPolicy, low: float, high: float,
                earlier: Sequence[float] = ()) -> float:
    delta = max(-axis.max_down, min(axis.max_up, delta))
    allowance = window_allowance(axis, earlier)
    if allowance is not None:
        delta = min(delta, allowance)
    floor = max(low, axis.min) if axis.min is not None else low
    ceiling = min(high, axis.max) if axis.max is not None else high
    target = max(floor, min(ceiling, current + delta))
    return round(target - current, 6)


def limit_deltas(policy: DeltaPolicy, trust: float, relationship: float, d_trust: float, d_rel: float,
                 earlier: Sequence[Deltas] = ()) -> tuple[float, float]:
    """Deltas capped per turn and over the policy's windows (`earlier`: the deltas applied
    on earlier turns, oldest first), and bounded so the state stays in range."""
    return (
        _limit_axis(d_trust, trust, policy.trust, 0.0, 1.0, [d.trust for d in earlier]),
        _limit_axis(d_rel, relationship, policy.relationship, -1.0, 1.0, [d.relationship for d in earlier]),
    )


def payload_for(rule: FlagRule | None) -> Mapping[str, object]:
    return dict(rule.payload) if rule else {}


def allowed_flags(turn: Turn) -> tuple[str, ...]:
    """The flags of the persona's `flag_rules` whose state conditions hold now, sorted.

    Only the state (stage, trust, relationship, items, actions): once-only and cooldown
    rules depend on the conversation's flag history, which labelled data does not carry,
    and are left to `game_rules`. Used to score adapters after the rules (`eval`) and to
    check that the data labels no flag the rules forbid.
    """
    facts = turn_facts(turn)
    return tuple(sorted(name for name, rule in turn.persona.flag_rules.items() if check_flag(rule, facts) is None))


def enforce(turn: Turn, persona: Persona, allow_unlisted: bool = False) -> Turn:
    """The game's authority over one turn: flags the persona's `flag_rules` forbid now move
    to `flags_rejected` with their reason, fired ones get their payload, and the deltas are
    capped by `delta_policy`. Idempotent, so the core can apply it after any postprocess
    step list (issue 27): a step may refine the outcome, never bypass the rules."""
    fired, rejected = [], list(turn.flags_rejected)
    for flag in turn.flags:
        facts = turn_facts(turn, turn.flag_history.get(flag.name, ()))
        rule = persona.flag_rules.get(flag.name)
        refusal = check_flag(rule, facts, allow_unlisted)
        if refusal:
            rejected.append(RejectedFlag(flag.name, refusal.reason, refusal.detail))
        else:
            fired.append(FiredFlag(flag.name, {**payload_for(rule), **flag.payload}))
    d_trust, d_rel = limit_deltas(persona.delta_policy, turn.state.trust, turn.state.relationship,
                                  turn.deltas.trust, turn.deltas.relationship, turn.delta_history)
    meta = {}
    if (d_trust, d_rel) != (turn.deltas.trust, turn.deltas.relationship) and "deltas_proposed" not in turn.meta:
        meta["deltas_proposed"] = turn.deltas.to_dict()
    out = turn.replace(flags=tuple(fired), flags_rejected=tuple(rejected), deltas=Deltas(d_trust, d_rel))
    return out.with_meta(**meta) if meta else out
