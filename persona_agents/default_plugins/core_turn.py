"""The core implementation of `run_turn`: run the NPC's pipeline.

Marked trylast so that any plugin implementing `run_turn` itself wins; plugins that
only want to act around turns wrap this with `@hookimpl(wrapper=True)`.
"""

from persona_agents.hookspecs import hookimpl


@hookimpl(trylast=True)
def run_turn(turn, pipeline):
    return pipeline.run(turn)
