"""Per-flag decision thresholds that maximise each flag's F1 on validation data.

A flag fires when its probability reaches its threshold. For each flag every distinct
probability is a candidate; the best F1 wins, ties go to the higher threshold (fewer
false alarms in the game). The threshold is then placed halfway down to the next lower
probability, so the same validation examples fire but a near-identical probability at
inference is not decided by rounding.

Best F1 weighs a false alarm and a miss alike. For a flag whose false alarm costs the
game more than a miss (an NPC that walks away from a player who did nothing wrong), a
precision floor can be set: the best F1 among the candidates whose validation precision
reaches the floor. If none reaches it, the best-F1 threshold is kept and the caller is
told (`Calibration.floor_met` False), since the floor cannot be honoured on this data.

After the game's rules: the game drops every flag a persona's rules forbid in the current
state, so what the player sees is the threshold *and* the rules. Given an `allowed` mask
(per example: does the persona allow the flag there), calibration scores only what the
game would keep: a forbidden example never fires, and a labelled one it forbids is a miss
whatever the threshold. That lowers thresholds the rules make safe (a gated item fires
only where the gate is open), so it needs a `min_threshold`: the rules say when the NPC
*may* give, the model must still say it *wants* to; without the floor the best cut for
a well-gated flag sinks to a few percent and the rules alone decide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

DEFAULT_THRESHOLD = 0.5
#: No flag is calibrated to fire under this probability (see the module docstring).
DEFAULT_MIN_THRESHOLD = 0.15

log = logging.getLogger("persona_agents.multihead")


@dataclass(frozen=True)
class CalibrationPolicy:
    """How a training run chooses its thresholds (the `train` options of the same names)."""
    #: {flag: precision floor} for the flags whose false alarms cost more than misses
    min_precision: Mapping[str, float] = field(default_factory=dict)
    #: score what the game keeps after the personas' flag rules (False: the raw head output)
    after_rules: bool = True
    #: no threshold under this probability
    min_threshold: float = DEFAULT_MIN_THRESHOLD

    def metadata(self) -> dict:
        """The fields multihead.json records, so a threshold can be traced to its policy."""
        return {"calibration_min_precision": dict(self.min_precision), "calibration_after_rules": self.after_rules,
                "calibration_min_threshold": self.min_threshold}


@dataclass(frozen=True)
class Calibration:
    threshold: float
    f1: float
    precision: float
    #: None without a floor; else whether the validation precision reached it
    floor_met: bool | None = None


def f1_score(tp: int, fp: int, fn: int) -> float:
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def calibrate_flag(probs: Sequence[float], targets: Sequence[int], min_precision: float | None = None,
                   allowed: Sequence[bool] | None = None, min_threshold: float = 0.0) -> Calibration:
    """The threshold of one flag: best F1, among the cuts with precision >= `min_precision`
    when given. `allowed`: per example, whether the game's rules let the flag through there
    (None: everywhere); a forbidden example never fires. Only cuts at or above
    `min_threshold` are candidates. No positives, or no candidate: DEFAULT_THRESHOLD or
    `min_threshold`, whichever is higher (F1 0)."""
    positives = sum(1 for t in targets if t)  # forbidden positives stay: misses at any threshold
    keep = [True] * len(probs) if allowed is None else [bool(a) for a in allowed]
    pairs = sorted(((p, t) for p, t, k in zip(probs, targets, keep) if k), key=lambda x: -x[0])
    eligible = [(p, t) for p, t in pairs if p >= min_threshold]
    if positives == 0 or not any(t for _, t in eligible):
        return Calibration(max(DEFAULT_THRESHOLD, min_threshold), 0.0, 0.0, None if min_precision is None else False)
    best: tuple[float, int, float] | None = None  # (F1, index of the lowest firing example, precision)
    best_floored: tuple[float, int, float] | None = None
    tp = fp = 0
    i = 0
    while i < len(eligible):
        # Examples with equal probability fire together.
        j = i
        while j < len(eligible) and eligible[j][0] == eligible[i][0]:
            tp += 1 if eligible[j][1] else 0
            fp += 0 if eligible[j][1] else 1
            j += 1
        f1, precision = f1_score(tp, fp, positives - tp), tp / (tp + fp)
        if best is None or f1 > best[0]:  # strict: ties keep the higher threshold
            best = (f1, j - 1, precision)
        if min_precision is not None and tp and precision >= min_precision and (
                best_floored is None or f1 > best_floored[0]):
            best_floored = (f1, j - 1, precision)
        i = j
    chosen = best_floored or best
    assert chosen is not None  # `pairs` is never empty here, so some threshold was scored
    cut = eligible[chosen[1]][0]  # eligible is the head of pairs: the same index in both
    below = pairs[chosen[1] + 1][0] if chosen[1] + 1 < len(pairs) else 0.0
    floor_met = None if min_precision is None else best_floored is not None
    threshold = max((cut + below) / 2, min_threshold)  # halfway down, but never under the floor
    return Calibration(float(threshold), float(chosen[0]), float(chosen[2]), floor_met)


def best_threshold(probs: Sequence[float], targets: Sequence[int]) -> tuple[float, float]:
    """(threshold, F1 at it) for one flag. No positives: (DEFAULT_THRESHOLD, 0.0)."""
    c = calibrate_flag(probs, targets)
    return c.threshold, c.f1


def calibrate_thresholds(probs: Sequence[Sequence[float]], targets: Sequence[Sequence[int]],
                         flags: Sequence[str], min_precision: Mapping[str, float] | None = None,
                         allowed: Sequence[Sequence[bool]] | None = None, min_threshold: float = 0.0,
                         ) -> tuple[dict[str, float], dict[str, float]]:
    """({flag: threshold}, {flag: validation F1 at it}) from (examples x flags) tables.
    `min_precision`: {flag: floor} for the flags whose false alarms cost more than misses.
    `allowed`: (examples x flags) of what the game's rules let through, to calibrate for
    the F1 after the rules, with no threshold under `min_threshold`."""
    min_precision = dict(min_precision or {})
    thresholds, scores = {}, {}
    for k, name in enumerate(flags):
        floor = min_precision.get(name)
        c = calibrate_flag([row[k] for row in probs], [int(row[k]) for row in targets], floor,
                           None if allowed is None else [row[k] for row in allowed], min_threshold)
        if c.floor_met is False:
            log.warning("%s: no threshold reaches precision %.2f on this data; keeping the best-F1 threshold "
                        "%.3f (precision %.2f). Lower the floor or add validation examples.",
                        name, floor, c.threshold, c.precision)
        thresholds[name] = round(c.threshold, 6)
        scores[name] = round(c.f1, 4)
    return thresholds, scores
