"""`no_lore` (retrieve): the NPC uses no lore beyond its persona."""

from persona_agents.hookspecs import hookimpl
from persona_agents.steps import Step


class NoLore(Step):
    name = "no_lore"
    stage = "retrieve"
    description = "Retrieve nothing: the prompt's lore section stays empty."

    def run(self, turn):
        return turn.replace(lore=())


@hookimpl
def register_steps(register):
    register(NoLore)
