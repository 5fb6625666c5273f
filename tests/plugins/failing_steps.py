"""Steps that fail or hang mid-turn, to show a turn is all or nothing."""

import os
import time
from pathlib import Path

from pydantic import Field

from persona_agents import hookimpl
from persona_agents.steps import Step, StepOptions


class Explode(Step):
    name = "explode"
    stage = "postprocess"

    class Options(StepOptions):
        on_turn: int = Field(2, description="Raise on this turn number.")

    def run(self, turn):
        if turn.turn_number == self.options.on_turn:
            raise RuntimeError("boom inside the pipeline")
        return turn


class Hang(Step):
    name = "hang"
    stage = "postprocess"

    class Options(StepOptions):
        on_turn: int = 2
        marker: str = Field(description="File created when the step starts hanging.")

    def run(self, turn):
        if turn.turn_number == self.options.on_turn:
            Path(self.options.marker).write_text(str(os.getpid()))
            time.sleep(120)
        return turn


@hookimpl
def register_steps(register):
    register(Explode)
    register(Hang)
