"""What a version 2 training sequence shows after the decision: the writers' fitting lines
for a fixed share of the examples, and the writers' refusal lines as reply examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_agents.multihead.collator import gold_decision
from persona_agents.multihead.data import load_examples, load_personas_for_data
from persona_agents.multihead.grounding import attach_grounding, decided_turn, refusal_examples

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def personas():
    return load_personas_for_data(REPO / "npcs")


def test_refusal_lines_become_replies_where_the_rules_refuse(personas):
    examples = refusal_examples(list(personas.values()))
    assert len({e.turn.npc_id for e in examples}) >= 3
    for example in examples:
        persona = personas[example.turn.npc_id]
        line = next(line for line in persona.lines if line.text.strip() == example.response)
        (refused,) = example.refused
        assert refused.name in line.refuses and example.flags == ()
        assert example.turn.utterance in line.examples
        decision = gold_decision(example)
        assert decision.startswith(f"<DECISION> none | refused: {refused.name} ({refused.reason})")
    pip = [e for e in examples if e.turn.npc_id == "merchant_traveling" and e.refused[0].name == "give_item"]
    assert pip, "Pip's writers refuse the map to a stranger"


@pytest.mark.model
def test_a_fixed_share_of_examples_shows_the_lines_that_fit_their_decision(personas):
    from persona_agents.lore.embedder import load_embedder

    examples = load_examples([REPO / "training/data/validation.jsonl"], personas=personas)[:120]
    embedder = load_embedder("embedded")
    grounded = attach_grounding(examples, embedder, share=0.5)
    again = attach_grounding(examples, embedder, share=0.5)
    assert [e.grounding for e in grounded] == [e.grounding for e in again]  # deterministic
    shown = [e for e in grounded if e.grounding]
    assert 0.25 * len(examples) <= len(shown) <= 0.6 * len(examples)
    for example in shown:
        decided = decided_turn(example)
        fired = {f.name for f in decided.flags}
        lines = {line.text.strip(): line for line in example.turn.persona.lines}
        assert 1 <= len(example.grounding) <= 2
        for text in example.grounding:
            assert set(lines[text].events) == fired  # never a hand-over line on a refusal, or the reverse
        assert "<LINES>\n- " in gold_decision(example) and gold_decision(example).endswith("</LINES>\n<NPC>")
    assert attach_grounding(examples, embedder, share=0.0) == list(examples)
