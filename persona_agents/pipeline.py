"""The pipeline: an NPC's steps, run stage by stage in the fixed order.

preprocess -> retrieve -> prompt -> generate -> postprocess. This module holds that
order and nothing else: what each stage must produce is checked here so a faulty
plugin fails with its name, not three stages later.
"""

from __future__ import annotations

import time

from .errors import PersonaAgentsError, StepError
from .persona import STAGES, Persona
from .steps import Step
from .turn import Deltas, FiredFlag, Turn


class Pipeline:
    def __init__(self, persona: Persona, steps: dict[str, list[Step]]):
        self.persona = persona
        self.steps = {stage: list(steps.get(stage, [])) for stage in STAGES}
        self._warm = False

    def warm_up(self) -> None:
        if not self._warm:
            for stage in STAGES:
                for step in self.steps[stage]:
                    step.warm_up()
            self._warm = True

    def step_names(self) -> dict[str, list[str]]:
        return {stage: [s.name for s in self.steps[stage]] for stage in STAGES}

    def run(self, turn: Turn) -> Turn:
        self.warm_up()
        timings: dict[str, float] = {}
        for stage in STAGES:
            started = time.perf_counter()
            for step in self.steps[stage]:
                turn = self._run_step(step, turn)
            if stage == "generate":
                turn = self._outcome_from_generation(turn)
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
