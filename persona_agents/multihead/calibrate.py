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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

DEFAULT_THRESHOLD = 0.5

log = logging.getLogger("persona_agents.multihead")


@dataclass(frozen=True)
class Calibration:
    threshold: float
    f1: float
    precision: float
    #: None without a floor; else whether the validation precision reached it
    floor_met: bool | None = None


def f1_score(tp: int, fp: int, fn: int) -> float:
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def calibrate_flag(probs: Sequence[float], targets: Sequence[int], min_precision: float | None = None) -> Calibration:
    """The threshold of one flag: best F1, among the cuts with precision >= `min_precision`
    when given. No positives: DEFAULT_THRESHOLD (F1 0)."""
    positives = sum(1 for t in targets if t)
    if positives == 0:
        return Calibration(DEFAULT_THRESHOLD, 0.0, 0.0, None if min_precision is None else False)
    pairs = sorted(zip(probs, targets), key=lambda x: -x[0])
    best: tuple[float, int, float] | None = None  # (F1, index of the lowest firing example, precision)
    best_floored: tuple[float, int, float] | None = None
    tp = fp = 0
    i = 0
    while i < len(pairs):
        # Examples with equal probability fire together.
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            tp += 1 if pairs[j][1] else 0
            fp += 0 if pairs[j][1] else 1
            j += 1
        f1, precision = f1_score(tp, fp, positives - tp), tp / (tp + fp)
        if best is None or f1 > best[0]:  # strict: ties keep the higher threshold
            best = (f1, j - 1, precision)
        if min_precision is not None and tp and precision >= min_precision and (
                best_floored is None or f1 > best_floored[0]):
            best_floored = (f1, j - 1, precision)
        i = j
    chosen = best_floored or best
    cut = pairs[chosen[1]][0]
    below = pairs[chosen[1] + 1][0] if chosen[1] + 1 < len(pairs) else 0.0
    floor_met = None if min_precision is None else best_floored is not None
    return Calibration(float((cut + below) / 2), float(chosen[0]), float(chosen[2]), floor_met)


def best_threshold(probs: Sequence[float], targets: Sequence[int]) -> tuple[float, float]:
    """(threshold, F1 at it) for one flag. No positives: (DEFAULT_THRESHOLD, 0.0)."""
    c = calibrate_flag(probs, targets)
    return c.threshold, c.f1


def calibrate_thresholds(probs: Sequence[Sequence[float]], targets: Sequence[Sequence[int]],
                         flags: Sequence[str], min_precision: Mapping[str, float] | None = None,
                         ) -> tuple[dict[str, float], dict[str, float]]:
    """({flag: threshold}, {flag: validation F1 at it}) from (examples x flags) tables.
    `min_precision`: {flag: floor} for the flags whose false alarms cost more than misses."""
    min_precision = dict(min_precision or {})
    thresholds, scores = {}, {}
    for k, name in enumerate(flags):
        floor = min_precision.get(name)
        c = calibrate_flag([row[k] for row in probs], [int(row[k]) for row in targets], floor)
        if c.floor_met is False:
            log.warning("%s: no threshold reaches precision %.2f on this data; keeping the best-F1 threshold "
                        "%.3f (precision %.2f). Lower the floor or add validation examples.",
                        name, floor, c.threshold, c.precision)
        thresholds[name] = round(c.threshold, 6)
        scores[name] = round(c.f1, 4)
    return thresholds, scores
