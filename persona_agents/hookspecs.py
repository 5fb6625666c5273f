"""The plugin hooks of persona-agents (pluggy).

Three hooks, each documented in docs/plugins.md and tested in
tests/test_hooks.py (one `test_hook_<name>` each):

- `register_steps(register)`: call `register(StepClass)` for every pipeline step the
  plugin provides.
- `run_turn(turn, pipeline)`: runs one turn and returns the finished `Turn`. The core
  implementation runs the pipeline; plugins wrap it with `@hookimpl(wrapper=True)`
  (`result = yield`) for tracing, caching or safety checks around every turn.
- `turn_completed(turn, response)`: an observer, called after each completed turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .steps import Step
    from .turn import Turn, TurnResponse

PROJECT = "persona_agents"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_steps(register: Callable[[type[Step]], None]) -> None:
    """Register pipeline steps: call `register(step_class)` once per step class."""


@hookspec(firstresult=True)
def run_turn(turn: Turn, pipeline: Pipeline) -> Turn | None:
    """Run one turn through `pipeline` and return the finished Turn.

    Wrap it with `@hookimpl(wrapper=True)` to act around every turn of every NPC.
    """


@hookspec
def turn_completed(turn: Turn, response: TurnResponse) -> None:
    """Observe a completed turn: `turn` is the final Turn, `response` the TurnResponse."""
