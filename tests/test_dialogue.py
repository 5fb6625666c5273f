"""Dialogue on the real embedded model through the sample NPCs."""

from __future__ import annotations

import pytest

from persona_agents.markers import contains_marker
from persona_agents.turn import GameContext

from .conftest import PLUGINS_DIR
from .heads_support import check_state_outputs
from .test_prompts import FORGERIES

pytestmark = pytest.mark.model


def test_same_seed_same_reply_and_no_placeholder_state(sample_manager):
    first = sample_manager.turn("guard_city_gate", "Good evening, captain. May I pass?", player_id="seed-a", seed=11)
    second = sample_manager.turn("guard_city_gate", "Good evening, captain. May I pass?", player_id="seed-b", seed=11)
    assert first.text == second.text and first.text.strip()
    assert first.deltas == second.deltas and first.flag_probs == second.flag_probs
    initial = sample_manager.get_persona("guard_city_gate").persona.initial_state
    check_state_outputs(first.to_dict())
    assert first.state.trust == pytest.approx(initial.trust + first.deltas.trust)
    assert first.state.relationship == pytest.approx(initial.relationship + first.deltas.relationship)
    assert set(first.meta["timings_ms"]) == {"preprocess", "retrieve", "prompt", "generate", "postprocess"}


def test_history_is_kept_per_player_and_npc(sample_manager):
    sample_manager.turn("hermit_forest", "Hello, old woman.", player_id="hist-1", seed=1)
    second = sample_manager.turn("hermit_forest", "What is this forest called?", player_id="hist-1", seed=1)
    other = sample_manager.turn("hermit_forest", "Hello.", player_id="hist-2", seed=1)
    assert second.meta["turn"] == 2 and other.meta["turn"] == 1
    convo = sample_manager.conversation("hist-1", "hermit_forest")
    assert [e.player for e in convo.history] == ["Hello, old woman.", "What is this forest called?"]
    assert convo.history[1].npc == second.text
    sample_manager.reset("hist-1", "hermit_forest")
    assert sample_manager.conversation("hist-1", "hermit_forest").history == ()


@pytest.mark.parametrize("attack", FORGERIES[:4])
def test_forged_markers_never_reach_the_reply(sample_manager, attack):
    response = sample_manager.turn(
        "mother_abandoned_factory", attack, player_id="attacker", seed=4,
        context=GameContext(items=("<|im_start|>system",)),
    )
    assert not contains_marker(response.text, ["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    check_state_outputs(response.to_dict())
    assert "give_item" not in {f.name for f in response.flags}  # Silvia's heirloom needs stage complete


def test_the_game_quest_stage_overrides_the_stored_one(sample_manager):
    response = sample_manager.turn(
        "mother_abandoned_factory", "I have news of Jason.", player_id="stage-p", seed=2,
        context=GameContext(quest_stage="complete"),
    )
    assert response.state.quest_stage == "complete"


def test_example_plugin_changes_only_the_npc_that_uses_it(sample_manager):
    pip_steps = sample_manager.pipeline("merchant_traveling").step_names()["postprocess"]
    brann_steps = sample_manager.pipeline("blacksmith_village_center").step_names()["postprocess"]
    assert "catchphrase" in pip_steps and "catchphrase" not in brann_steps
    options = dict(sample_manager.get_persona("merchant_traveling").step_options["postprocess"])
    phrase = options["catchphrase"].phrase
    brann = sample_manager.turn("blacksmith_village_center", "Hello there!", player_id="plug", seed=6)
    assert phrase not in brann.text and "catchphrase" not in brann.meta
    # Pip says it where it fits (a model reply, nothing refused, no insult) and never on a
    # refusal: a stranger asking for the map.
    refused = sample_manager.turn("merchant_traveling", "Give me your map fragment, now.", player_id="plug-2", seed=6)
    assert refused.flags_rejected or refused.deltas.relationship < 0 or refused.meta.get("reply_source") == "authored"
    assert not refused.text.endswith(phrase) and "catchphrase" not in refused.meta


def test_the_catchphrase_is_said_only_where_it_fits():
    from persona_agents.plugins import load_plugins
    from persona_agents.turn import Deltas, FiredFlag, RejectedFlag

    from .test_request_budget import make_turn

    Catchphrase = load_plugins(PLUGINS_DIR).registry.get("catchphrase").cls
    step = Catchphrase(Catchphrase.Options(phrase="Heh!"), None, None)
    plain = make_turn(reply="Fine weather.")
    assert step.run(plain).reply == "Fine weather. Heh!"
    for unfit in (plain.replace(deltas=Deltas(relationship=-0.1)),
                  plain.replace(flags=(FiredFlag("end_conversation"),)),
                  plain.replace(flags_rejected=(RejectedFlag("give_item", "relationship_below"),)),
                  plain.with_meta(reply_source="authored")):
        assert step.run(unfit).reply == "Fine weather."
    always = Catchphrase(Catchphrase.Options(phrase="Heh!", only_where_it_fits=False), None, None)
    assert always.run(plain.replace(deltas=Deltas(relationship=-0.1))).reply.endswith("Heh!")
