"""Per-flag decision thresholds that maximise each flag's F1 on validation data.

A flag fires when its probability reaches its threshold. For each flag every distinct
probability is a candidate; the best F1 wins, ties go to the higher threshold (fewer
false alarms in the game). The threshold is then placed halfway down to the next lower
probability, so the same validation examples fire but a near-identical probability at
inference is not decided by rounding.
"""

from __future__ import annotations

from typing import Sequence

DEFAULT_THRESHOLD = 0.5


def f1_score(tp: int, fp: int, fn: int) -> float:
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def best_threshold(probs: Sequence[float], targets: Sequence[int]) -> tuple[float, float]:
    """(threshold, F1 at it) for one flag. No positives: (DEFAULT_THRESHOLD, 0.0)."""
    positives = sum(1 for t in targets if t)
    if positives == 0:
        return DEFAULT_THRESHOLD, 0.0
    pairs = sorted(zip(probs, targets), key=lambda x: -x[0])
    best_f1, best_index = -1.0, 0
    tp = fp = 0
    i = 0
    while i < len(pairs):
        # Examples with equal probability fire together.
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            tp += 1 if pairs[j][1] else 0
            fp += 0 if pairs[j][1] else 1
            j += 1
        f1 = f1_score(tp, fp, positives - tp)
        if f1 > best_f1:  # strict: ties keep the higher threshold
            best_f1, best_index = f1, j - 1
        i = j
    cut = pairs[best_index][0]
    below = pairs[best_index + 1][0] if best_index + 1 < len(pairs) else 0.0
    return float((cut + below) / 2), float(best_f1)


def calibrate_thresholds(probs: Sequence[Sequence[float]], targets: Sequence[Sequence[int]],
                         flags: Sequence[str]) -> tuple[dict[str, float], dict[str, float]]:
    """({flag: threshold}, {flag: validation F1 at it}) from (examples x flags) tables."""
    thresholds, scores = {}, {}
    for k, name in enumerate(flags):
        threshold, f1 = best_threshold([row[k] for row in probs], [int(row[k]) for row in targets])
        thresholds[name] = round(threshold, 6)
        scores[name] = round(f1, 4)
    return thresholds, scores
