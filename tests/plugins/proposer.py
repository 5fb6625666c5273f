"""An adversarial stand-in for a gullible model: proposes whatever flags and deltas it is
told to, so the tests can show the game's rules refuse what they forbid. Placed before
`game_rules` in a pipeline, as the generator's proposals would be."""

from pydantic import Field

from persona_agents import hookimpl
from persona_agents.steps import Step, StepOptions
from persona_agents.turn import Deltas, FiredFlag


class ProposeFlags(Step):
    name = "propose_flags"
    stage = "postprocess"
    rewrites_text = False

    class Options(StepOptions):
        flags: list[str] = Field(default_factory=list)
        trust: float = 0.0
        relationship: float = 0.0
        trust_pattern: list[float] = Field(default_factory=list, description="Per-turn trust deltas, cycled.")

    def run(self, turn):
        trust = self.options.trust
        if self.options.trust_pattern:
            trust = self.options.trust_pattern[(turn.turn_number - 1) % len(self.options.trust_pattern)]
        return turn.replace(
            flags=tuple(FiredFlag(name) for name in self.options.flags),
            deltas=Deltas(trust, self.options.relationship),
        )


@hookimpl
def register_steps(register):
    register(ProposeFlags)
