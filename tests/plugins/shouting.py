"""A preprocess step used to show per-NPC options: upper-cases the player's line."""

from pydantic import Field

from persona_agents import hookimpl
from persona_agents.steps import Step, StepOptions


class Shout(Step):
    name = "shout"
    stage = "preprocess"
    description = "Upper-case the player's line (test plugin)."

    class Options(StepOptions):
        exclaim: int = Field(0, ge=0, description="Exclamation marks to add.")

    def run(self, turn):
        return turn.replace(utterance=turn.utterance.upper() + "!" * self.options.exclaim)


@hookimpl
def register_steps(register):
    register(Shout)
