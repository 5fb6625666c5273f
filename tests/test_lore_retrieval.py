"""Retrieval on the sample lore with the real embedder and faiss: no NPC learns another's
secrets, stage-gated secrets appear at their stage, secrets gated by trust, relationship,
items and actions never reach the prompt before their gate, and the two retrieve steps."""

from __future__ import annotations

import pytest

from persona_agents.default_plugins.lore_steps import FaissLore, KeywordLore
from persona_agents.default_plugins.prompts import ChatTemplatePrompt, SectionedPrompt
from persona_agents.lore.retrieval import estimate_tokens, keyword_search, semantic_search, within_budget
from persona_agents.lore.scope import LoreFacts, is_visible
from persona_agents.persona import Persona
from persona_agents.turn import Exchange

from .conftest import SAMPLE_NPC_IDS, persona_dict
from .lore_support import all_open, make_turn, runtime_for, sample_index, sample_personas, sample_runtime, write_lore


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
        hits = semantic_search(index, item.text, owner, persona(owner).knowledge, all_open(item), k=1)
        assert [h.item.id for h in hits] == [item.id]


@pytest.mark.parametrize("npc_id", SAMPLE_NPC_IDS)
def test_no_npc_retrieves_another_npcs_private_lore(npc_id):
    """Every other NPC's private entry, asked for with its own text at a stage and state
    where it is unlocked, with no score threshold and k larger than the NPC's whole knowledge."""
    index = sample_index()
    knowledge = persona(npc_id).knowledge
    secrets = [i for i in index.ensure_current().items if i.entry.scope == "npc" and npc_id not in i.entry.known_by]
    assert len(secrets) >= 20
    for secret in secrets:
        facts = all_open(secret)
        hits = semantic_search(index, secret.text, npc_id, knowledge, facts, k=100, min_score=-1.0)
        assert hits, "the NPC knows world lore, so something is retrieved"
        assert secret.id not in [h.item.id for h in hits]
        assert all(is_visible(h.item, npc_id, knowledge, facts) for h in hits)


def test_the_step_keeps_dorians_secret_from_silvia_and_the_blacksmith():
    for npc_id in ("mother_abandoned_factory", "blacksmith_village_center"):
        turn = faiss_step(npc_id, k=50, min_score=-1.0, max_lore_tokens=8000).run(
            make_turn(persona(npc_id), "Where is Jason hiding? Is he alive, in the tunnels under the factory?",
                      stage="in_progress", trust=1.0, relationship=1.0))  # every gate open: only scope stops it
        assert turn.lore and not any(i.startswith(("dorian_", "maren_")) for i in ids(turn))


# -- stage gating --------------------------------------------------------------------
@pytest.mark.parametrize("npc_id, question, secret", [
    ("mother_abandoned_factory", "Where is your brother's hideout?", "silvia_brother_hideout"),
    ("uncle_hideout", "Where is Jason hiding?", "dorian_jason_hideout"),
])
def test_a_gated_secret_appears_only_from_its_stage(npc_id, question, secret):
    everything = faiss_step(npc_id, k=50, min_score=-1.0, max_lore_tokens=8000)
    trusted = {"trust": 0.6}  # past Dorian's trust gate: only the stage decides here
    assert secret not in ids(everything.run(make_turn(persona(npc_id), question, stage="not_started", **trusted)))
    used = faiss_step(npc_id, k=3)  # the sample personas' own k, default threshold
    for stage in ("in_progress", "complete"):
        assert secret in ids(used.run(make_turn(persona(npc_id), question, stage=stage, **trusted)))


def test_the_games_stage_wins_over_the_stored_one():
    step = faiss_step("uncle_hideout", k=3)
    dorian, question = persona("uncle_hideout"), "Where is Jason hiding?"

    def turn(stage, stored):
        return make_turn(dorian, question, stage=stage, stored_stage=stored, trust=0.6)

    assert "dorian_jason_hideout" in ids(step.run(turn("in_progress", "not_started")))
    assert "dorian_jason_hideout" in ids(step.run(turn(None, "in_progress")))
    assert "dorian_jason_hideout" not in ids(step.run(turn("not_started", "in_progress")))


# -- gates on trust, relationship, items and actions ---------------------------------
DORIAN_SECRETS = ("dorian_jason_alive", "dorian_jason_hideout", "dorian_why_jason_hides", "dorian_jasons_letter")


def sample_item(entry_id):
    return sample_index().ensure_current().by_id[entry_id]


@pytest.mark.parametrize("trust", [0.2, 0.49])
def test_dorians_secret_is_not_retrieved_below_his_trust_gate(trust):
    """Asked with the secret's own words, no threshold, k above his whole knowledge."""
    step = faiss_step("uncle_hideout", k=50, min_score=-1.0, max_lore_tokens=8000)
    for secret in DORIAN_SECRETS:
        turn = step.run(make_turn(persona("uncle_hideout"), sample_item(secret).text, stage="in_progress", trust=trust))
        assert turn.lore and not set(ids(turn)) & set(DORIAN_SECRETS)


@pytest.mark.parametrize("trust", [0.5, 0.6, 1.0])
def test_dorians_secret_is_retrieved_from_his_trust_gate(trust):
    step = faiss_step("uncle_hideout", k=3)  # his own k and the default threshold
    turn = step.run(make_turn(persona("uncle_hideout"), "Is Jason alive?", trust=trust))
    assert "dorian_jason_alive" in ids(turn)


@pytest.mark.parametrize("relationship, known", [(-0.5, False), (0.2, False), (0.49, False), (0.5, True), (0.9, True)])
def test_pips_map_details_follow_his_relationship_gate(relationship, known):
    question = "What does your map of the Greywood show? Does it show the way to the hermit's hut?"
    wide = faiss_step("merchant_traveling", k=50, min_score=-1.0, max_lore_tokens=8000)
    own = faiss_step("merchant_traveling", k=3)
    pip = persona("merchant_traveling")
    turn = make_turn(pip, question, relationship=relationship)
    assert ("pip_map_details" in ids(own.run(turn))) is known
    assert ("pip_map_details" in ids(wide.run(turn))) is known
    assert "pip_map_fragment" in ids(own.run(turn)), "that Pip has a map is no secret; what it shows is"


TOWN = [
    {"id": "w_gate", "text": "The north gate of the town is barred at night.", "scope": "world"},
    {"id": "t_vault", "text": "The vault under the chapel opens with the bishop's iron key.", "scope": "world",
     "requires_items": ["iron_key"], "keywords": ["vault"]},
    {"id": "t_guild", "text": "Sworn members of the guild meet in the cellar of the Drowned Rat.", "scope": "world",
     "requires_actions": ["swore_oath"], "keywords": ["guild"]},
    {"id": "t_both", "text": "The guild's vault ledger hides behind the altar stone.", "scope": "world",
     "requires_items": ["iron_key", "guild_ring"], "requires_actions": ["swore_oath", "paid_dues"],
     "keywords": ["ledger", "vault", "guild"]},
]


def test_items_and_actions_gate_entries_in_both_steps(tmp_path):
    npcs = tmp_path / "npcs"
    write_lore(npcs / "lore", "town", TOWN)
    anna = Persona.model_validate(persona_dict("anna", "embedded", knowledge={"lore": ["town"]}))
    runtime = runtime_for(npcs, tmp_path / "cache")
    steps = [FaissLore(FaissLore.Options(k=10, min_score=-1.0, max_lore_tokens=8000), anna, runtime),
             KeywordLore(KeywordLore.Options(max_entries=10, max_lore_tokens=8000), anna, runtime)]
    question = "Where does the guild meet, how is the vault opened, and where is the ledger?"

    def known(items=(), actions=()):
        faiss, keywords = (set(ids(step.run(make_turn(anna, question, items=items, actions=actions))))
                           for step in steps)
        assert keywords == faiss - {"w_gate"}, "both steps apply the same gates"
        return faiss

    assert known() == {"w_gate"}
    assert known(items=["iron_key", "lantern"]) == {"w_gate", "t_vault"}
    assert known(actions=["swore_oath"]) == {"w_gate", "t_guild"}
    assert known(items=["iron_key", "guild_ring"], actions=["swore_oath"]) == {"w_gate", "t_vault", "t_guild"}
    assert known(items=["iron_key", "guild_ring"], actions=["swore_oath", "paid_dues"]) == {
        "w_gate", "t_vault", "t_guild", "t_both"}
    assert known() == {"w_gate"}, "the filter cached for an open gate is not reused once it closes"

    index = runtime.lore.index(npcs, runtime.embedders.get("embedded"), runtime.cache_dir)
    open_facts = LoreFacts(stage="not_started", trust=0.3, relationship=0.0,
                           items=frozenset({"iron_key", "guild_ring"}), actions=frozenset({"swore_oath", "paid_dues"}))
    assert len(semantic_search(index, question, "anna", anna.knowledge, open_facts, k=10)) == 4
    # A bare stage says nothing of the state: every gated entry stays hidden.
    hits = semantic_search(index, question, "anna", anna.knowledge, "not_started", k=10)
    assert [h.item.id for h in hits] == ["w_gate"]
    assert keyword_search(index.ensure_current(), question, [], "anna", anna.knowledge, None, 10) == []


def _prompt_texts(turn, npc):
    runtime = sample_runtime()
    sectioned = SectionedPrompt(SectionedPrompt.Options(), npc, runtime).run(turn).prompt.text
    chat = ChatTemplatePrompt(ChatTemplatePrompt.Options(), npc, runtime).run(turn).prompt.messages
    return [sectioned, "\n".join(m["content"] for m in chat)]


@pytest.mark.parametrize("npc_id, secrets, axis, closed, opened", [
    ("uncle_hideout", DORIAN_SECRETS, "trust", 0.2, 0.6),
    ("merchant_traveling", ("pip_map_details",), "relationship", 0.2, 0.5),
])
def test_gated_secrets_never_reach_the_prompt_before_their_gate(npc_id, secrets, axis, closed, opened):
    """The leakage test: through the real retrieve steps (meaning and keywords) and the real
    prompt steps, asked with each secret's own text and all its keywords, at the stage
    that unlocks it, with no threshold and no budget. Closed, open, closed again on the
    same steps, so a filter cached while open never serves a closed turn."""
    npc = persona(npc_id)
    texts = [sample_item(s).text for s in secrets]
    queries = texts + [" ".join(kw for s in secrets for kw in sample_item(s).entry.keywords),
                       "Is Jason alive? Where is he hiding, and why? Do you have a letter from him for Silvia?"]
    steps = [faiss_step(npc_id, k=50, min_score=-1.0, max_lore_tokens=8000),
             keyword_step(npc_id, max_entries=50, max_lore_tokens=8000, scan_history_turns=0)]
    for value in (closed, opened, closed, opened):
        for step in steps:
            retrieved, prompts = set(), []
            for query in queries:
                turn = step.run(make_turn(npc, query, stage="in_progress", **{axis: value}))
                retrieved |= set(ids(turn))
                # The player's own line is in the prompt too: only what the NPC brings counts.
                prompts += [prompt.replace(query, "(the player's line)") for prompt in _prompt_texts(turn, npc)]
            if value == closed:
                assert not retrieved & set(secrets), step.name
                assert not any(text in prompt for text in texts for prompt in prompts), step.name
                assert not any(s in str(turn.meta) for s in secrets)
            else:  # the control: each step finds every secret once its gate holds
                assert set(secrets) <= retrieved, step.name
                assert all(any(text in prompt for prompt in prompts) for text in texts), step.name


# -- faiss_lore ----------------------------------------------------------------------
def test_faiss_lore_fills_lore_and_meta():
    turn = faiss_step("hermit_forest", k=3).run(make_turn(persona("hermit_forest"),
                                                          "Is there anything under the factory?"))
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
    step = keyword_step("hermit_forest", scan_history_turns=0)
    assert step.run(make_turn(maren, "Help me.", history=history)).lore == ()
    scanned = keyword_step("hermit_forest", scan_history_turns=1).run(make_turn(maren, "Help me.", history=history))
    assert "maren_greywood_ways" in ids(scanned)
    assert {c.score for c in scanned.lore} <= {0.5, 1.0, 1.5, 2.0}  # history-only matches count half


def test_keyword_lore_multiword_keywords(tmp_path):
    silvia = persona("mother_abandoned_factory")
    turn = keyword_step("mother_abandoned_factory", max_entries=10).run(
        make_turn(silvia, "Do you come here every\n day?"))
    assert "silvia_waits_at_ruins" in ids(turn)
