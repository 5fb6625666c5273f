"""An example local plugin: give an NPC a catchphrase.

This file is the walkthrough of README.md's "Writing a plugin". Any `*.py` file in the
`plugins/` folder beside your NPC folder is loaded as a plugin (file names starting with
`_` are skipped; PERSONA_AGENTS_LOAD_PLUGINS=name1,name2 restricts which load).

A plugin implements hooks from `persona_agents.hookspecs`. This one implements
`register_steps` to add one postprocess step, `catchphrase`, that an NPC opts into in its
YAML:

    pipeline:
      postprocess:
        - game_rules
        - name: catchphrase
          options: {phrase: "Mark my words!", every_n_turns: 2}

NPCs that do not list it are untouched, and two NPCs can use it with different phrases.
By default it is said only where it fits (not after an insult, a threat or a refusal):
list it after `game_rules` so it sees the game's decision.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from persona_agents import hookimpl
from persona_agents.steps import Step, StepOptions


class Catchphrase(Step):
    name = "catchphrase"
    stage = "postprocess"
    description = "Adds the NPC's catchphrase to its reply (example plugin)."

    # Options are validated when personas load: a wrong type or an unknown option is
    # reported with the file, the step and what was expected.
    class Options(StepOptions):
        phrase: str = Field(min_length=1, description="The words to add.")
        position: Literal["end", "start"] = Field("end", description="Where the phrase goes.")
        every_n_turns: int = Field(1, ge=1, description="Add it on turn 1, 1+n, 1+2n, ...")
        only_where_it_fits: bool = Field(
            True, description="Skip it after an insult or a threat (a negative delta, or end_conversation), on a "
            "refusal (a flag the game refused), and on a writer's own line. List this step after game_rules "
            "(and authored_lines) so it sees their decision.")

    def fits(self, turn) -> bool:
        """A cheerful phrase glued on a refusal or after an insult reads as mockery."""
        if not self.options.only_where_it_fits:
            return True
        hostile = turn.deltas.trust < 0 or turn.deltas.relationship < 0
        ended = any(flag.name == "end_conversation" for flag in turn.flags)
        return not (hostile or ended or turn.flags_rejected or turn.meta.get("reply_source") == "authored")

    def run(self, turn):
        if (turn.turn_number - 1) % self.options.every_n_turns or not self.fits(turn):
            return turn
        phrase = self.options.phrase.strip()
        reply = turn.reply.strip()
        text = f"{reply} {phrase}" if self.options.position == "end" else f"{phrase} {reply}"
        return turn.replace(reply=text.strip()).with_meta(catchphrase=True)


@hookimpl
def register_steps(register):
    register(Catchphrase)
