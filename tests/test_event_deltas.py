"""Deltas that agree with what the NPC does (issue 26): each event's labelled turns bound the
heads' deltas once the rules have said the event happens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from persona_agents.multihead.event_deltas import deltas_after_events, typical_deltas


def _turns(event, deltas):
    return [SimpleNamespace(flags=[event], delta=list(d)) for d in deltas]


def test_a_lowering_event_caps_at_its_upper_quartile_a_raising_one_floors_at_its_lower():
    walk_away = _turns("end_conversation", [(-0.1, -0.2), (-0.3, -0.3), (-0.5, -0.4), (-0.6, -0.6), (-0.8, -0.7)])
    finished = _turns("quest_complete", [(0.1, 0.1), (0.2, 0.2), (0.3, 0.3), (0.35, 0.3), (0.4, 0.4)])
    rare = _turns("ring_bell", [(0.5, 0.5)])
    bounds = typical_deltas(walk_away + finished + rare, min_turns=5)
    assert bounds == {"end_conversation": [-0.3, -0.3], "quest_complete": [0.2, 0.2]}  # ring_bell: too few turns
    # A threat the heads read as small talk: the walk-away pulls the deltas down to the bound ...
    assert deltas_after_events(0.02, 0.01, ["end_conversation"], bounds) == (-0.3, -0.3)
    # ... and never lifts deltas already lower.
    assert deltas_after_events(-0.7, -0.1, ["end_conversation"], bounds) == (-0.7, -0.3)
    assert deltas_after_events(0.0, 0.05, ["quest_complete"], bounds) == (0.2, 0.2)
    assert deltas_after_events(0.4, 0.3, ["quest_complete"], bounds) == (0.4, 0.3)
    # A lowering event wins over a raising one; unknown events and no event leave them alone.
    assert deltas_after_events(0.1, 0.1, ["quest_complete", "end_conversation"], bounds) == (-0.3, -0.3)
    assert deltas_after_events(0.1, -0.1, ["ring_bell"], bounds) == (0.1, -0.1)
    assert deltas_after_events(0.1, -0.1, [], bounds) == (0.1, -0.1)


def test_a_bound_keeps_its_direction_when_the_quartile_crosses_zero():
    mixed = _turns("accept_bribe", [(-0.4, -0.3), (-0.2, -0.2), (-0.1, 0.0), (0.0, 0.05), (0.05, 0.1)])
    (trust, relationship), = typical_deltas(mixed, min_turns=5).values()
    assert trust < 0 and relationship < 0 and trust == pytest.approx(0.0, abs=1e-3)


def test_the_heads_reader_bounds_deltas_by_the_events_the_rules_allow():
    import torch

    from persona_agents.multihead.reader import HeadsReader
    from persona_agents.turn import Generation

    bundle = SimpleNamespace(flags=["end_conversation", "give_item"], thresholds={"end_conversation": 0.5,
                                                                                   "give_item": 0.5})
    reader = HeadsReader(bundle, ["end_conversation", "give_item"],
                         event_deltas={"end_conversation": [-0.3, -0.3], "give_item": [0.0, 0.0]})
    empty = Generation(text="", model="m", new_tokens=0, finished=True)
    threat = SimpleNamespace(flag_probs=torch.tensor([[0.9, 0.0]]), deltas=torch.tensor([[0.01, -0.05]]))
    out = reader.apply(empty, threat, allowed={"end_conversation", "give_item"})
    assert (out.deltas.trust, out.deltas.relationship) == (-0.3, -0.3)
    # The rules forbid the walk-away here: it does not happen, so it bounds nothing.
    out = reader.apply(empty, threat, allowed={"give_item"})
    assert (out.deltas.trust, out.deltas.relationship) == (0.01, -0.05)
    assert out.flags == ("end_conversation",)  # proposed; the game's rules refuse it later
