"""Prompt steps: `chat_template` (default for instruct models) and `sectioned` (the seed's format)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from persona_agents.hookspecs import hookimpl
from persona_agents.markers import REPLY_STOP_MARKERS
from persona_agents.prompt_format import decides_first, render_messages, render_sectioned
from persona_agents.steps import Step, StepOptions
from persona_agents.turn import Prompt


class ChatTemplatePrompt(Step):
    name = "chat_template"
    stage = "prompt"
    description = "The persona as a system message, rendered with the model's chat template."

    class Options(StepOptions):
        history_turns: int = Field(6, ge=0, le=100, description="Earlier exchanges to include.")
        include_examples: bool = Field(True, description="Show the persona's example lines as earlier turns.")

    def run(self, turn):
        messages = render_messages(turn, self.options.history_turns, self.options.include_examples)
        return turn.replace(prompt=Prompt(format="chat", messages=messages, stop_markers=REPLY_STOP_MARKERS))


class SectionedPrompt(Step):
    name = "sectioned"
    stage = "prompt"
    description = ("The sectioned format adapters are trained on: version 1 <SYS> <RAG> <PLAYER_STATE> <CTX> "
                   "<PLAYER> <STATE> <NPC>; version 2 adds <EVENTS> and <EXAMPLES> and the game's <DECISION>; "
                   "version 3 moves <CTX> before the turn's own parts.")

    class Options(StepOptions):
        history_turns: int = Field(6, ge=0, le=100, description="Earlier exchanges to include in <CTX>.")
        version: Literal["auto", 1, 2, 3] = Field(
            "auto", description="Layout version: `auto` renders the version the NPC's adapter (its multihead "
            "generate step) was trained on, and 1 where there is none.")

    def __init__(self, options, persona, runtime):
        super().__init__(options, persona, runtime)
        self._version: int | None = None if options.version == "auto" else int(options.version)
        self._events: dict[str, str] | None = None

    def version(self) -> int:
        if self._version is None:
            self._version = adapter_prompt_version(self.persona, self.runtime) or 1
        return self._version

    def _event_descriptions(self) -> dict[str, str]:
        if self._events is None:
            from persona_agents.game import load_game

            self._events = {name: spec.description for name, spec in load_game(self.runtime.npcs_dir).events.items()}
        return self._events

    def run(self, turn):
        version = self.version()
        text = render_sectioned(turn, self.options.history_turns, version,
                                self._event_descriptions() if decides_first(version) else None)
        return turn.replace(prompt=Prompt(format="sectioned", text=text, stop_markers=REPLY_STOP_MARKERS,
                                          version=version))


def adapter_prompt_version(persona, runtime) -> int | None:
    """The sectioned version recorded by the adapter of the persona's multihead generate
    step, or None (no such step, or its adapter cannot be read: the step reports that)."""
    from persona_agents.errors import PersonaAgentsError
    from persona_agents.multihead.artifacts import read_metadata

    for spec in persona.pipeline.generate:
        adapter = (spec.options or {}).get("adapter")
        if spec.name == "multihead" and adapter:
            try:
                return int(read_metadata(runtime.path(adapter))["prompt_format_version"])
            except PersonaAgentsError:
                return None
    return None


@hookimpl
def register_steps(register):
    register(ChatTemplatePrompt)
    register(SectionedPrompt)
