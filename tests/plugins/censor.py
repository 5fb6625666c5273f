"""A word filter a studio might write: masks listed words in the reply. Listed after the
generator, it must see the text before the player does, streamed or not."""

import re

from pydantic import Field

from persona_agents import hookimpl
from persona_agents.steps import Step, StepOptions


class Censor(Step):
    name = "censor"
    stage = "postprocess"

    class Options(StepOptions):
        words: list[str] = Field(default_factory=list, description="Words (or letters) to mask.")

    def run(self, turn):
        text = turn.reply
        for word in self.options.words:
            text = re.sub(re.escape(word), "*" * len(word), text, flags=re.IGNORECASE)
        return turn.replace(reply=text)


@hookimpl
def register_steps(register):
    register(Censor)
