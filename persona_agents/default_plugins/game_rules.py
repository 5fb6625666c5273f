"""`game_rules` (postprocess): the game's rules decide which proposed flags fire.

Each proposed flag is checked against the persona's `flag_rules` (persona_agents.rules);
a refused flag moves to `flags_rejected` with its reason, a fired one gets its payload.
Deltas are capped (per turn, and over a window of turns) and bounded by the persona's
`delta_policy`.
"""

from __future__ import annotations

from pydantic import Field

from persona_agents.hookspecs import hookimpl
from persona_agents.rules import check_flag, limit_deltas, payload_for, turn_facts
from persona_agents.steps import Step, StepOptions
from persona_agents.turn import Deltas, FiredFlag, RejectedFlag


class GameRules(Step):
    name = "game_rules"
    stage = "postprocess"
    description = "Fire only the flags the persona's flag_rules allow now; cap and bound deltas."
    rewrites_text = False

    class Options(StepOptions):
        allow_unlisted_flags: bool = Field(
            False, description="Let flags without a rule in flag_rules fire (default: refuse them as not_allowed)."
        )

    def run(self, turn):
        rules = self.persona.flag_rules
        fired, rejected = [], list(turn.flags_rejected)
        for flag in turn.flags:
            facts = turn_facts(turn, turn.flag_history.get(flag.name, ()))
            rule = rules.get(flag.name)
            refusal = check_flag(rule, facts, self.options.allow_unlisted_flags)
            if refusal:
                rejected.append(RejectedFlag(flag.name, refusal.reason, refusal.detail))
            else:
                fired.append(FiredFlag(flag.name, {**payload_for(rule), **flag.payload}))
        d_trust, d_rel = limit_deltas(
            self.persona.delta_policy, turn.state.trust, turn.state.relationship, turn.deltas.trust,
            turn.deltas.relationship, turn.delta_history,
        )
        meta = {}
        if (d_trust, d_rel) != (turn.deltas.trust, turn.deltas.relationship):
            meta["deltas_proposed"] = turn.deltas.to_dict()
        return turn.replace(flags=tuple(fired), flags_rejected=tuple(rejected), deltas=Deltas(d_trust, d_rel)).with_meta(**meta)


@hookimpl
def register_steps(register):
    register(GameRules)
