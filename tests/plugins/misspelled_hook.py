"""Implements `register_step` (singular): a typo pluggy would accept silently."""

from persona_agents import hookimpl


@hookimpl
def register_step(register):
    pass
