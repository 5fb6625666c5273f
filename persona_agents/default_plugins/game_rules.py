"""`game_rules` (postprocess): the game's rules decide which proposed flags fire.

Each proposed flag is checked against the persona's `flag_rules` (persona_agents.rules);
a refused flag moves to `flags_rejected` with its reason, a fired one gets its payload.
Deltas are capped (per turn, and over a window of turns) and bounded by the persona's
`delta_policy`. The core applies the same rules after the postprocess steps whatever the
persona lists (pipeline.py); listing this step places the check earlier, so steps after
it (authored_lines) see the decision, and sets its options.
"""

from __future__ import annotations

from pydantic import Field

from persona_agents.hookspecs import hookimpl
from persona_agents.rules import enforce
from persona_agents.steps import Step, StepOptions


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
        return enforce(turn, self.persona, self.options.allow_unlisted_flags)


@hookimpl
def register_steps(register):
    register(GameRules)
