"""The pipeline: an NPC's steps, run stage by stage in the fixed order.

preprocess -> retrieve -> prompt -> generate -> postprocess. This module holds that
order, with the request budget applied after preprocess (request_budget.py) and the
game's rules after postprocess (rules.enforce: no step list can leave them out), and
nothing else: what each stage must produce is checked here so a faulty plugin fails with
its name, not three stages later.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from .errors import PersonaAgentsError, StepError
from .game import DEFAULT_GAME, GameDefinition
from .persona import STAGES, Persona
from .request_budget import TokenCounter, apply_request_budget
from .rules import enforce
from .steps import Step
from .streaming import Decision, current_decision_sink, current_sink, deciding, stream_to
from .turn import Deltas, FiredFlag, Turn


def decision_of(turn: Turn) -> dict[str, Any]:
    """What the game applies, as the stream's `decision` event carries it."""
    return {"flags": [f.to_dict() for f in turn.flags], "flags_rejected": [r.to_dict() for r in turn.flags_rejected],
            "deltas": turn.deltas.to_dict()}


class Pipeline:
    def __init__(self, persona: Persona, steps: dict[str, list[Step]], game: GameDefinition = DEFAULT_GAME):
        self.persona = persona
        self.game = game
        self.steps = {stage: list(steps.get(stage, [])) for stage in STAGES}
        self._warm = False

    def warm_up(self) -> None:
        if not self._warm:
            for stage in STAGES:
                for step in self.steps[stage]:
                    step.warm_up()
            self._warm = True

    def token_counter(self) -> TokenCounter | None:
        """Tokens of the model that reads the prompt: the generate step's counter, if it has one."""
        for step in self.steps["generate"]:
            counter = step.token_counter()
            if counter is not None:
                return counter
        return None

    def step_names(self) -> dict[str, list[str]]:
        return {stage: [s.name for s in self.steps[stage]] for stage in STAGES}

    def run(self, turn: Turn) -> Turn:
        self.warm_up()
        sink, decision_sink = current_sink(), current_decision_sink()
        told: list[bool] = []

        def tell(decided: Turn) -> None:
            if decision_sink is not None and not told:
                told.append(True)
                decision_sink(decision_of(decided))

        # A postprocess step may change the text (a writer's line, a word filter): the
        # player must see only what it lets through, so the reply is then sent once, after it.
        hold_text = sink is not None and self.rewrites_text()
        with deciding(lambda provisional: self._decide(provisional, tell)), stream_to(None if hold_text else sink):
            done = self._run_stages(turn)
        tell(done)  # where the generate step could not decide before speaking
        if hold_text:
            if done.reply and sink is not None:  # hold_text implies a sink
                sink(done.reply)
            done = done.with_meta(streamed="after postprocess")
        return done

    def _decide(self, provisional: Turn, tell: Callable[[Turn], None]) -> Decision:
        """Decide, then speak: called by a generate step between the prompt pass and
        decoding, with the heads' proposals. The deciding postprocess steps (game_rules)
        run on it, the decision goes out (`event: decision`), and the answer says whether
        the model's reply is still needed (False: a step will say a writer's line), with
        the decided turn and the lines to ground the reply in (a version 2 prompt writes
        both before the reply)."""
        turn = self._outcome_from_generation(provisional)
        for step in self.steps["postprocess"]:
            if not step.rewrites_text:
                turn = self._run_step(step, turn)
        turn = self.enforce_rules(turn)
        tell(turn)
        speak = not any(step.replaces_reply(turn) for step in self.steps["postprocess"])
        lines = tuple(line for step in self.steps["postprocess"] for line in step.grounding(turn)) if speak else ()
        return Decision(speak, turn, lines)

    def enforce_rules(self, turn: Turn) -> Turn:
        """The game's authority, whatever the persona's postprocess list says (issue 27):
        the persona's flag rules and delta policy, with the options of its game_rules step
        where it lists one; then the changes of the game's extra axes, from the fired events."""
        allow_unlisted = any(getattr(step.options, "allow_unlisted_flags", False)
                             for step in self.steps["postprocess"] if step.name == "game_rules")
        turn = enforce(turn, self.persona, allow_unlisted)
        if self.game.extra_axes:  # the game's own axes move as the fired events declare, nothing else
            turn = turn.replace(deltas=dataclasses.replace(turn.deltas, axes=self.game.axis_changes(
                turn.state.axes, [flag.name for flag in turn.flags], self.persona.flag_rules)))
        return turn

    def rewrites_text(self) -> bool:
        return any(step.rewrites_text for step in self.steps["postprocess"])

    def _run_stages(self, turn: Turn) -> Turn:
        timings: dict[str, float] = {}
        for stage in STAGES:
            started = time.perf_counter()
            if stage == "generate":  # what postprocess steps may need while the model decides
                for step in self.steps["postprocess"]:
                    step.prepare(turn)
            for step in self.steps[stage]:
                turn = self._run_step(step, turn)
            if stage == "preprocess":  # the line is normalised now; bound the request before model work
                turn = apply_request_budget(turn, self.persona.request_budget, self.token_counter())
            if stage == "generate":
                turn = self._outcome_from_generation(turn)
            if stage == "postprocess":
                turn = self.enforce_rules(turn)
            timings[stage] = round((time.perf_counter() - started) * 1000.0, 2)
        return turn.with_meta(timings_ms=timings, steps=self.step_names())

    @staticmethod
    def _run_step(step: Step, turn: Turn) -> Turn:
        try:
            result = step.run(turn)
        except PersonaAgentsError:
            raise
        except Exception as exc:
            raise StepError(f"{step.stage} step '{step.name}' failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, Turn):
            raise StepError(f"{step.stage} step '{step.name}' returned {type(result).__name__}, expected a Turn.")
        if step.stage == "prompt" and result.prompt is None:
            raise StepError(f"prompt step '{step.name}' returned a Turn without a prompt.")
        if step.stage == "generate" and result.generation is None:
            raise StepError(f"generate step '{step.name}' returned a Turn without a generation.")
        return result

    @staticmethod
    def _outcome_from_generation(turn: Turn) -> Turn:
        """Seed the outcome that postprocess steps refine from the generation."""
        generation = turn.generation
        assert generation is not None  # checked in _run_step
        return turn.replace(
            reply=generation.text,
            deltas=generation.deltas or Deltas(),
            flags=tuple(FiredFlag(name) for name in generation.flags),
        )
