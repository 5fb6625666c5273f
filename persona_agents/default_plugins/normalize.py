"""`normalize_input` (preprocess): tidy the player's line and enforce a length limit."""

from __future__ import annotations

import re
import unicodedata

from pydantic import Field

from persona_agents.errors import InputError
from persona_agents.hookspecs import hookimpl
from persona_agents.steps import Step, StepOptions

_SPACES = re.compile(r"\s+")


class NormalizeInput(Step):
    name = "normalize_input"
    stage = "preprocess"
    description = "Unicode NFC, control characters removed, whitespace collapsed, length limit."

    class Options(StepOptions):
        max_chars: int = Field(500, ge=1, le=100_000, description="Longest accepted player line, in characters.")
        collapse_whitespace: bool = Field(True, description="Turn runs of spaces and newlines into one space.")

    def run(self, turn):
        text = unicodedata.normalize("NFC", turn.utterance)
        text = "".join(ch for ch in text if ch in "\n\t " or unicodedata.category(ch) != "Cc")
        if self.options.collapse_whitespace:
            text = _SPACES.sub(" ", text)
        text = text.strip()
        if not text:
            raise InputError("utterance", "is empty after normalisation; send at least one visible character.")
        if len(text) > self.options.max_chars:
            raise InputError(
                "utterance",
                f"is {len(text)} characters long; the limit is {self.options.max_chars} "
                f"(option max_chars of step normalize_input for NPC '{turn.npc_id}'). Send a shorter line.",
            )
        return turn.replace(utterance=text)


@hookimpl
def register_steps(register):
    register(NormalizeInput)
