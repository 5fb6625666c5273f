"""Prompt steps: `chat_template` (default for instruct models) and `sectioned` (the seed's format)."""

from __future__ import annotations

from pydantic import Field

from persona_agents.hookspecs import hookimpl
from persona_agents.markers import REPLY_STOP_MARKERS
from persona_agents.prompt_format import render_messages, render_sectioned
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
    description = "The seed's sectioned format (<SYS> <RAG> <PLAYER_STATE> <CTX> <PLAYER> <STATE> <NPC>)."

    class Options(StepOptions):
        history_turns: int = Field(6, ge=0, le=100, description="Earlier exchanges to include in <CTX>.")

    def run(self, turn):
        text = render_sectioned(turn, self.options.history_turns)
        return turn.replace(prompt=Prompt(format="sectioned", text=text, stop_markers=REPLY_STOP_MARKERS))


@hookimpl
def register_steps(register):
    register(ChatTemplatePrompt)
    register(SectionedPrompt)
