"""Retrieval on the sample lore with the real embedder and faiss: no NPC learns another's
secrets, stage-gated secrets appear at their stage, and the two retrieve steps."""

from __future__ import annotations

import pytest

from persona_agents.default_plugins.lore_steps import FaissLore, KeywordLore
from persona_agents.lore.retrieval import estimate_tokens, semantic_search, within_budget
from persona_agents.lore.scope import is_visible
from persona_agents.turn import Exchange

from .conftest import SAMPLE_NPC_IDS
from .lore_support import make_turn, sample_index, sample_personas, sample_runtime


def persona(npc_id):
    return sample_personas()[npc_id].persona


def faiss_step(npc_id, **options):
    return FaissLore(FaissLore.Options(**options), persona(npc_id), sample_runtime())


def keyword_step(npc_id, **options):
    return KeywordLore(KeywordLore.Options(**options), persona(npc_id), sample_runtime())


def ids(turn):
    return [chunk.id for chunk in turn.lore]


# -- leakage -------------------------------------------------------------------------
def test_each_private_entry_is_found_by_its_owner():
    """The control for the leakage test: an entry's own text finds it for an NPC who knows it."""
    index = sample_index()
    for item in index.ensure_current().items:
        if item.entry.scope != "npc":
            continue
        owner = next(n for n in item.entry.known_by if item.source in persona(n).knowledge.lore)
        stage = item.entry.stages[0] if item.entry.stages else "not_started"
        hits = semantic_search(index, item.text, owner, persona(owner).knowledge, stage, k=1)
        assert [h.item.id for h in hits] == [item.id]


@pytest.mark.parametrize("npc_id", SAMPLE_NPC_IDS)
def test_no_npc_retrieves_another_npcs_private_lore(npc_id):
    """Every other NPC's private entry, asked for with its own text at a stage where it
    is unlocked, with no score threshold and k larger than the NPC's whole knowledge."""
    index = sample_index()
    knowledge = persona(npc_id).knowledge
    secrets = [i for i in index.ensure_current().items if i.entry.scope == "npc" and npc_id not in i.entry.known_by]
    assert len(secrets) >= 20
    for secret in secrets:
        stage = secret.entry.stages[0] if secret.entry.stages else "in_progress"
        hits = semantic_search(index, secret.text, npc_id, knowledge, stage, k=100, min_score=-1.0)
        assert hits, "the NPC knows world lore, so something is retrieved"
        assert secret.id not in [h.item.id for h in hits]
        assert all(is_visible(h.item, npc_id, knowledge, stage) for h in hits)


def test_the_step_keeps_dorians_secret_from_silvia_and_the_blacksmith():
    for npc_id in ("mother_abandoned_factory", "blacksmith_village_center"):
        turn = faiss_step(npc_id, k=50, min_score=-1.0, max_lore_tokens=8000).run(
            make_turn(persona(npc_id), "Where is Jason hiding? Is he alive, in the tunnels under the factory?",
                      stage="in_progress"))
        assert turn.lore and not any(i.startswith(("dorian_", "maren_")) for i in ids(turn))


# -- stage gating --------------------------------------------------------------------
@pytest.mark.parametrize("npc_id, question, secret", [
    ("mother_abandoned_factory", "Where is your brother's hideout?", "silvia_brother_hideout"),
    ("uncle_hideout", "Where is Jason hiding?", "dorian_jason_hideout"),
])
def test_a_gated_secret_appears_only_from_its_stage(npc_id, question, secret):
    everything = faiss_step(npc_id, k=50, min_score=-1.0, max_lore_tokens=8000)
    assert secret not in ids(everything.run(make_turn(persona(npc_id), question, stage="not_started")))
    used = faiss_step(npc_id, k=3)  # the sample personas' own k, default threshold
    for stage in ("in_progress", "complete"):
        assert secret in ids(used.run(make_turn(persona(npc_id), question, stage=stage)))


def test_the_games_stage_wins_over_the_stored_one():
    step = faiss_step("uncle_hideout", k=3)
    dorian, question = persona("uncle_hideout"), "Where is Jason hiding?"
    assert "dorian_jason_hideout" in ids(step.run(make_turn(dorian, question, stage="in_progress", stored_stage="not_started")))
    assert "dorian_jason_hideout" in ids(step.run(make_turn(dorian, question, stage=None, stored_stage="in_progress")))
    assert "dorian_jason_hideout" not in ids(step.run(make_turn(dorian, question, stage="not_started", stored_stage="in_progress")))


# -- faiss_lore ----------------------------------------------------------------------
def test_faiss_lore_fills_lore_and_meta():
    turn = faiss_step("hermit_forest", k=3).run(make_turn(persona("hermit_forest"), "Is there anything under the factory?"))
    assert ids(turn)[0] == "maren_factory_tunnels"
    assert turn.meta["lore"] == [{"id": c.id, "score": c.score} for c in turn.lore]
    scores = [c.score for c in turn.lore]
    assert scores == sorted(scores, reverse=True) and all(s >= 0.3 for s in scores)


def test_faiss_lore_min_score_and_token_budget():
    question = "Where is Jason hiding?"
    dorian = persona("uncle_hideout")
    assert faiss_step("uncle_hideout", min_score=0.99).run(make_turn(dorian, question)).meta["lore"] == []
    wide = faiss_step("uncle_hideout", k=6, min_score=-1.0, max_lore_tokens=8000).run(make_turn(dorian, question))
    narrow = faiss_step("uncle_hideout", k=6, min_score=-1.0, max_lore_tokens=60).run(make_turn(dorian, question))
    assert len(wide.lore) == 6 and 0 < len(narrow.lore) < 6
    assert sum(estimate_tokens(c.text) for c in narrow.lore) <= 60
    assert ids(narrow) == [i for i in ids(wide) if i in ids(narrow)]  # best first, same order


def test_history_turns_add_earlier_lines_to_the_query():
    silvia = persona("mother_abandoned_factory")
    history = [Exchange(player="Tell me about the gold necklace, the family heirloom.", npc="It was my mother's.")]
    follow_up = "Where did it come from?"
    plain = faiss_step("mother_abandoned_factory", k=3).run(make_turn(silvia, follow_up, history=history))
    with_history = faiss_step("mother_abandoned_factory", k=3, history_turns=1).run(
        make_turn(silvia, follow_up, history=history))
    assert "family_gold_necklace" in ids(with_history)
    assert "family_gold_necklace" not in ids(plain)


def test_within_budget_skips_an_entry_that_does_not_fit_but_keeps_smaller_ones():
    items = {i.id: i for i in sample_index().ensure_current().items}
    from persona_agents.lore.retrieval import LoreHit

    big, small = items["dorian_jason_hideout"], items["world_ashford"]
    budget = estimate_tokens(small.text) + 1
    kept = within_budget([LoreHit(big, 0.9), LoreHit(small, 0.5)], budget)
    assert [h.item.id for h in kept] == ["world_ashford"]
    assert estimate_tokens("Dorian's mill, by night.") == 8  # Dorian, ', s, mill, ',', by, night, '.'


# -- keyword_lore --------------------------------------------------------------------
def test_keyword_lore_matches_whole_words_case_insensitively_within_scope():
    silvia = persona("mother_abandoned_factory")
    turn = keyword_step("mother_abandoned_factory", max_entries=10).run(
        make_turn(silvia, "Your BROTHER... and what about the tunnels?"))
    assert "family_siblings" in ids(turn)
    assert not any(i.startswith("maren_") for i in ids(turn)), "Maren's tunnel lore is not Silvia's"
    assert "silvia_brother_hideout" not in ids(turn), "gated until in_progress"
    assert turn.meta["lore"] == [{"id": c.id, "score": c.score} for c in turn.lore]
    later = keyword_step("mother_abandoned_factory", max_entries=10).run(
        make_turn(silvia, "Your brother?", stage="in_progress"))
    assert "silvia_brother_hideout" in ids(later)
    assert keyword_step("mother_abandoned_factory").run(make_turn(silvia, "Brotherhood and sisterhood.")).lore == ()


def test_keyword_lore_scores_ranks_caps_and_scans_history():
    maren = persona("hermit_forest")
    step = keyword_step("hermit_forest", max_entries=2, scan_history_turns=0)
    turn = step.run(make_turn(maren, "What is the riddle, and the answer? Is it a shadow?"))
    assert len(turn.lore) == 2 and turn.lore[0].id == "maren_riddle_answer"  # shadow + answer
    history = [Exchange(player="I am lost in the forest.", npc="Hm.")]
    assert keyword_step("hermit_forest", scan_history_turns=0).run(make_turn(maren, "Help me.", history=history)).lore == ()
    scanned = keyword_step("hermit_forest", scan_history_turns=1).run(make_turn(maren, "Help me.", history=history))
    assert "maren_greywood_ways" in ids(scanned)
    assert {c.score for c in scanned.lore} <= {0.5, 1.0, 1.5, 2.0}  # history-only matches count half


def test_keyword_lore_multiword_keywords(tmp_path):
    silvia = persona("mother_abandoned_factory")
    turn = keyword_step("mother_abandoned_factory", max_entries=10).run(
        make_turn(silvia, "Do you come here every\n day?"))
    assert "silvia_waits_at_ruins" in ids(turn)
