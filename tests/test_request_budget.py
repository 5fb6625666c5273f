"""Bounded request cost (issue 33): every request-supplied part of the prompt has a token
budget, counted with the tokenizer of the model that reads it; the history is truncated."""

from __future__ import annotations

import pytest

from persona_agents.errors import InputError
from persona_agents.manager import AgentManager
from persona_agents.persona import Persona, RequestBudget
from persona_agents.request_budget import apply_request_budget, rendered, utf8_bytes
from persona_agents.turn import Exchange, GameContext, NpcState, Turn

PERSONA = Persona.model_validate({"id": "smith", "name": "Smith", "role": "a smith.",
                                  "pipeline": {"prompt": ["sectioned"], "generate": ["transformers"]}})


def make_turn(utterance: str = "Can you mend my sword?", **fields) -> Turn:
    return Turn(npc_id="smith", player_id="p", utterance=utterance, persona=PERSONA,
                state=NpcState(0.3, 0.0, "calm", "not_started"), **fields)


@pytest.fixture(scope="module")
def count():
    from transformers import AutoTokenizer

    from persona_agents.models import embedded_checkpoint

    tok = AutoTokenizer.from_pretrained(embedded_checkpoint())
    return lambda text: len(tok(text)["input_ids"])


def refused_field(turn, budget, count) -> str:
    with pytest.raises(InputError) as info:
        apply_request_budget(turn, budget, count)
    assert "request_budget" in str(info.value) or "too long" in str(info.value)
    return info.value.field


def test_an_ordinary_turn_passes_unchanged(count):
    context = GameContext(quest_stage="in_progress", location="forge", items=("iron_ore", "broken_sword"),
                          actions=("show_item:broken_sword",), game_state={"time_of_day": "morning"})
    turn = make_turn(context=context, history=(Exchange("Hello there.", "Morning. What do you need?"),))
    assert apply_request_budget(turn, RequestBudget(), count) is turn


def test_digits_cost_a_token_each_and_an_over_budget_value_is_refused_by_name(count):
    # The attack of issue 33: a number in game_state, each digit a token.
    assert count("1" * 200) >= 200
    turn = make_turn(context=GameContext(game_state={"gold": "1" * 200, "time": "noon"}))
    assert refused_field(turn, RequestBudget(), count) == "game_state.gold"
    # Beyond Python's int-to-str limit, too: refused, not a crash.
    huge = make_turn(context=GameContext(game_state={"gold": int("9" * 4000) * 10**1000}))
    assert refused_field(huge, RequestBudget(), count) == "game_state.gold"


def test_each_value_and_each_list_have_budgets(count):
    budget = RequestBudget(value=8, items=20, actions=20, game_state=20)
    assert refused_field(make_turn(context=GameContext(items=("a" * 40,))), budget, count) == "items[0]"
    many = tuple(f"item_{i}" for i in range(12))  # each fits, together they do not
    assert refused_field(make_turn(context=GameContext(items=many)), budget, count) == "items"
    assert refused_field(make_turn(context=GameContext(actions=many)), budget, count) == "actions"
    state = {f"k{i}": i for i in range(12)}
    assert refused_field(make_turn(context=GameContext(game_state=state)), budget, count) == "game_state"
    assert refused_field(make_turn(context=GameContext(location="x" * 80)), budget, count) == "location"
    assert refused_field(make_turn(context=GameContext(quest_stage="x" * 80)), budget, count) == "quest_stage"
    assert refused_field(make_turn(utterance="word " * 200), RequestBudget(utterance=64), count) == "utterance"


def test_the_history_keeps_the_newest_exchanges_that_fit(count):
    history = tuple(Exchange(f"line {i} " + "blah " * 20, f"reply {i} " + "hm " * 20) for i in range(10))
    turn = make_turn(history=history)
    kept = apply_request_budget(turn, RequestBudget(history=120), count)
    assert 0 < len(kept.history) < len(history)
    assert kept.history == history[-len(kept.history):]  # the newest, in order
    assert sum(count(e.player) + count(e.npc) for e in kept.history) <= 120
    assert kept.meta["history_truncated"] == len(history) - len(kept.history)


def test_without_a_tokenizer_bytes_bound_tokens_from_above(count):
    for text in ("plain words", "1234567890", "ünïcödé ✓ 🙂 漢字"):
        assert count(text) <= utf8_bytes(text)


def test_the_pipeline_applies_the_budget_with_the_generate_steps_tokenizer(npc_folder):
    npc_folder("budgeted", request_budget={"value": 6})
    manager = AgentManager(npc_folder.folder)
    with pytest.raises(InputError) as info:
        manager.turn("budgeted", "Hello.", context=GameContext(game_state={"gold": "12345678901234567890"}))
    assert info.value.field == "game_state.gold"
    assert manager.store.count("turn_records") == 0  # nothing stored for a refused request
    ok = manager.turn("budgeted", "Hello.", context=GameContext(game_state={"gold": 12}), seed=1)
    assert ok.meta["turn"] == 1


def test_ask_names_budget_fields_as_its_request_spells_them():
    from persona_agents.server.ask import ask_field

    assert ask_field("utterance") == "user_input"
    assert ask_field("items[2]") == "context.player_state.items[2]"
    assert ask_field("game_state.gold") == "context.game_state.gold"
    assert ask_field("game_state.player_level") == "context.player_state.level"
    assert ask_field("quest_stage") == "context.game_state.quest_stage"


def test_budgets_count_the_text_as_the_prompt_shows_it(count):
    # NFKC folding turns U+FDFA into 18 characters and neutralising widens `<`: a line
    # short as sent can be long in the prompt (a bypass found by bench/request_cost.py).
    sneaky = "\ufdfa" * 30
    assert count(sneaky) <= 128 < count(rendered(sneaky))
    assert refused_field(make_turn(utterance=sneaky), RequestBudget(), count) == "utterance"
    # Separators count too: 40 one-token items fit 40 tokens, their list does not.
    items = tuple("a" for _ in range(40))
    assert refused_field(make_turn(context=GameContext(items=items)), RequestBudget(items=60), count) == "items"
    history = tuple(Exchange(sneaky, "Hm.") for _ in range(3))
    assert len(apply_request_budget(make_turn(history=history), RequestBudget(), count).history) < 3
