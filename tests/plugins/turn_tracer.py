"""A tracing plugin: wraps every turn and observes completed ones."""

from persona_agents import hookimpl

EVENTS: list[tuple] = []


@hookimpl(wrapper=True)
def run_turn(turn, pipeline):
    EVENTS.append(("before", turn.npc_id, turn.utterance))
    try:
        result = yield
    except Exception as exc:
        EVENTS.append(("error", turn.npc_id, type(exc).__name__))
        raise
    EVENTS.append(("after", turn.npc_id, result.reply))
    return result.with_meta(traced=True)


@hookimpl
def turn_completed(turn, response):
    EVENTS.append(("completed", turn.npc_id, response.text))
