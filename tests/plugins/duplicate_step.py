"""Registers a step whose name collides with a built-in one."""

from persona_agents import hookimpl
from persona_agents.steps import Step


class AnotherNormalizer(Step):
    name = "normalize_input"
    stage = "preprocess"

    def run(self, turn):
        return turn


@hookimpl
def register_steps(register):
    register(AnotherNormalizer)
