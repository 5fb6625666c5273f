"""The contract of a pipeline step.

A step is a class with:

- `name` (what persona YAML files write) and `stage` (one of preprocess, retrieve,
  prompt, generate, postprocess), plus a one-line `description`;
- an inner pydantic `Options` model (extra keys forbidden, fields described): a YAML
  file can choose only these options, and they are validated when personas load;
- a light `__init__(options, persona, runtime)`: no model loads here, so validating
  personas stays fast;
- `warm_up()`: heavy loading (models, indexes), called once before the first turn;
- `run(turn) -> Turn`: returns a new Turn with the stage's part filled in:

  ==============  ==============================================================
  preprocess      may change `utterance` (and add `meta`)
  retrieve        sets `lore` (chunks with ids and scores)
  prompt          sets `prompt`
  generate        sets `generation` (text; deltas and flag_probs if it has heads)
  postprocess     may change `reply`, `deltas`, `flags`, `flags_rejected`
  ==============  ==============================================================

Steps are registered by plugins through the `register_steps(register)` hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from .persona import Persona
    from .runtime import Runtime
    from .turn import Turn


class StepOptions(BaseModel):
    """Base of every step's `Options`: unknown option names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Step:
    name: ClassVar[str]
    stage: ClassVar[str]
    description: ClassVar[str] = ""
    #: A postprocess step that may change the reply's text. While any does, a streamed
    #: turn sends the text once, after postprocessing, so a filter stays a filter;
    #: steps that only read or decide (game_rules) say False and keep token streaming.
    rewrites_text: ClassVar[bool] = True

    class Options(StepOptions):
        pass

    def __init__(self, options: "StepOptions", persona: "Persona", runtime: "Runtime"):
        self.options = options
        self.persona = persona
        self.runtime = runtime

    def warm_up(self) -> None:
        """Load what the step needs (models, indexes). Called once, before the first turn."""

    def run(self, turn: "Turn") -> "Turn":  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self, turn: "Turn") -> None:
        """Postprocess steps: get ready for this turn before the generate stage (e.g. embed
        the player's line), so that `replaces_reply` needs no model work."""

    def replaces_reply(self, turn: "Turn") -> bool:
        """Postprocess steps: True if this step will replace whatever the model would say
        on this decided turn (the generate step may then skip decoding)."""
        return False

    def grounding(self, turn: "Turn") -> tuple[str, ...]:
        """Postprocess steps: lines the model should read before it writes its reply on
        this decided turn (a prompt that has room for them shows them after the decision)."""
        return ()

    def token_counter(self) -> Callable[[str], int] | None:
        """A generate step that knows its model's tokenizer returns a function counting a
        text's tokens (after warm_up); the core bounds the request with it."""
        return None
