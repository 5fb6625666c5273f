"""Deltas that agree with what the NPC does this turn (issue 26).

The heads read the trust and relationship deltas from the `<STATE>` vector, apart from the
events; in another author's player voices a veiled threat they do not recognise as one
("Nice cart. Wheels come off carts sometimes, out on lonely roads.") gets a near-zero
delta even where the events (heads and matcher together) end the talk. Labelled data says
what an event's turn does to the state: an NPC walks away at a threat with trust and
relationship down about half a point (the median over 372 labelled `end_conversation`
turns: -0.50 / -0.45, every one of them negative); a finished quest raises them about 0.3;
a hint or a trade leaves them level or a little up.

So, once the game's rules have said which events happen, each event's labelled turns
bound the heads' deltas: an event whose typical turn (the median) costs trust or warmth
caps them from above at its upper quartile, per axis (three in four of its labelled turns
go at least that far down), the others floor them from below at their lower quartile. On
the sample NPCs in a new author's voices (development set, `training/generalist/dev/`)
this takes the MAE from 0.076 / 0.074 to 0.065 / 0.066; on their validation turns, in this
project's own phrasing, it moves 0.040 / 0.035 to 0.039 / 0.037. The medians themselves
fit the validation turns worse (0.045 / 0.042): a sample NPC's milder walk-aways at
rudeness would be pushed to a threat's.

The bounds are fitted with the event matcher (`persona-agents fit-matcher`, matcher.json's
`event_deltas`), from the turns the heads were fitted on.
"""

from __future__ import annotations

import statistics
from typing import Iterable, Mapping, Sequence

#: Labelled turns an event needs before its quartile bounds anything.
MIN_TURNS = 20


def typical_deltas(examples: Sequence, min_turns: int = MIN_TURNS) -> dict[str, list[float]]:
    """Each event's bound on the (trust, relationship) deltas, from the labelled turns it
    fires on, for the events with at least `min_turns` of them: the upper quartile per axis
    where the median turn lowers the state (the two medians add up below zero), else the
    lower quartile. The bound keeps its direction's sign: `deltas_after_events` reads it."""
    by_event: dict[str, list[Sequence[float]]] = {}
    for example in examples:
        for name in example.flags:
            by_event.setdefault(name, []).append(example.delta)
    bounds = {}
    for name, deltas in sorted(by_event.items()):
        if len(deltas) < min_turns:
            continue
        axes = [sorted(float(d[axis]) for d in deltas) for axis in (0, 1)]
        lowers = sum(statistics.median(values) for values in axes) < 0
        # quantiles(n=4): the three quartile cut points; "inclusive" as numpy's default.
        quartile = [statistics.quantiles(values, n=4, method="inclusive")[2 if lowers else 0] for values in axes]
        # A lowering event's bound stays below zero, a raising one's at or above it, so the
        # direction survives a quartile that crosses zero.
        bounds[name] = [round(min(q, -1e-4) if lowers else max(q, 0.0), 4) for q in quartile]
    return bounds


def deltas_after_events(trust: float, relationship: float, events: Iterable[str],
                        typical: Mapping[str, Sequence[float]]) -> tuple[float, float]:
    """The deltas bounded by the events that happen (`typical`: `typical_deltas`): an event
    that lowers the state (its bounds add up below zero) caps each axis at the lowest such
    bound; if none does, the events that raise or keep it floor each axis at their highest."""
    known = [typical[name] for name in events if name in typical]
    down = [t for t in known if t[0] + t[1] < 0]
    if down:
        return min(trust, min(t[0] for t in down)), min(relationship, min(t[1] for t in down))
    if known:
        return max(trust, max(t[0] for t in known)), max(relationship, max(t[1] for t in known))
    return trust, relationship
