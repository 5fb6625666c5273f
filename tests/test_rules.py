"""The game's rules: which proposed flags fire, with which reason a flag is refused,
and how far one turn may move the state."""

from __future__ import annotations

import shutil

import pytest

from persona_agents.default_plugins.game_rules import GameRules
from persona_agents.persona import DeltaPolicy, FlagRule
from persona_agents.persona_loader import load_personas
from persona_agents.plugins import load_plugins
from persona_agents.rules import RuleFacts, allowed_flags, check_flag, limit_deltas
from persona_agents.runtime import Runtime
from persona_agents.turn import Deltas, FiredFlag, GameContext, NpcState, Turn

from .conftest import NPCS_DIR, PLUGINS_DIR


def facts(**kw) -> RuleFacts:
    base = dict(quest_stage="not_started", trust=0.3, relationship=0.0, items=frozenset(), actions=frozenset(),
                turn_number=5, fired_at=())
    base.update(kw)
    return RuleFacts(**base)


@pytest.mark.parametrize("rule, f, reason", [
    (FlagRule(allowed=False), facts(), "not_allowed"),
    (FlagRule(stages=["complete"]), facts(), "stage"),
    (FlagRule(min_trust=0.5), facts(trust=0.49), "trust_below"),
    (FlagRule(min_relationship=0.5), facts(relationship=0.2), "relationship_below"),
    (FlagRule(requires_items=["iron_ore"]), facts(items=frozenset({"broken_sword"})), "missing_item"),
    (FlagRule(requires_actions=["solved_riddle"]), facts(), "missing_action"),
    (FlagRule(once=True), facts(fired_at=(2,)), "once_only"),
    (FlagRule(cooldown_turns=3), facts(fired_at=(3,)), "cooldown"),
])
def test_each_refusal_has_its_reason(rule, f, reason):
    assert check_flag(rule, f).reason == reason


def test_allowed_cases_and_unlisted_flags():
    assert check_flag(FlagRule(cooldown_turns=3), facts(fired_at=(2,))) is None  # 3 turns ago
    assert check_flag(FlagRule(requires_items=["iron_ore"]), facts(items=frozenset({"iron_ore"}))) is None
    assert check_flag(None, facts()).reason == "not_allowed"
    assert check_flag(None, facts(), unlisted_allowed=True) is None


def test_any_of_needs_one_alternative():
    rule = FlagRule(any_of=[FlagRule(requires_items=["city_pass"]), FlagRule(min_trust=0.6)])
    assert check_flag(rule, facts(items=frozenset({"city_pass"}))) is None
    assert check_flag(rule, facts(trust=0.6)) is None
    refusal = check_flag(rule, facts(trust=0.3))
    assert refusal.reason == "missing_item" and "or trust 0.30 < 0.60" in refusal.detail


def test_delta_policy_caps_per_turn_and_bounds_the_state():
    policy = DeltaPolicy.model_validate({"trust": {"max_up": 0.1, "max_down": 0.2}, "relationship": {"min": -0.5}})
    assert limit_deltas(policy, 0.5, 0.0, 0.5, 0.3) == (0.1, 0.3)
    assert limit_deltas(policy, 0.5, 0.0, -0.9, -0.9) == (-0.2, -0.5)
    assert limit_deltas(policy, 0.95, 0.9, 0.1, 0.5) == (0.05, 0.1)  # trust <= 1, relationship <= 1
    assert limit_deltas(DeltaPolicy(), 0.05, -0.95, -0.5, -0.5) == (-0.05, -0.05)


@pytest.fixture(scope="module")
def samples():
    return load_personas(NPCS_DIR, load_plugins(PLUGINS_DIR).registry)


def run_rules(samples, npc_id, proposed, stage="not_started", trust=0.3, relationship=0.0, items=(), history=None,
              deltas=(0.0, 0.0)):
    persona = samples[npc_id].persona
    step = GameRules(GameRules.Options(), persona, Runtime(npcs_dir=NPCS_DIR))
    turn = Turn(npc_id=npc_id, player_id="p", utterance="x", persona=persona,
                state=NpcState(trust, relationship, "calm", stage), context=GameContext(items=tuple(items)),
                flags=tuple(FiredFlag(f) for f in proposed), flag_history=history or {}, turn_number=3,
                deltas=Deltas(*deltas))
    out = step.run(turn)
    return {f.name: dict(f.payload) for f in out.flags}, {r.name: r.reason for r in out.flags_rejected}, out


def test_brann_gives_the_sword_only_for_iron_ore(samples):
    fired, rejected, _ = run_rules(samples, "blacksmith_village_center", ["give_item"], stage="in_progress")
    assert fired == {} and rejected == {"give_item": "missing_item"}
    fired, rejected, _ = run_rules(samples, "blacksmith_village_center", ["give_item", "quest_complete"],
                                   stage="in_progress", items=["iron_ore", "broken_sword"])
    assert fired == {"give_item": {"item": "repaired_sword"}, "quest_complete": {"quest": "repair_sword"}}


def test_hale_opens_the_gate_with_a_pass_or_trust(samples):
    _, rejected, _ = run_rules(samples, "guard_city_gate", ["unlock_hidden_path"], trust=0.3)
    assert rejected == {"unlock_hidden_path": "missing_item"}
    fired, _, _ = run_rules(samples, "guard_city_gate", ["unlock_hidden_path"], items=["city_pass"])
    assert fired == {"unlock_hidden_path": {"place": "upper_district"}}
    fired, _, _ = run_rules(samples, "guard_city_gate", ["unlock_hidden_path"], trust=0.6)
    assert "unlock_hidden_path" in fired
    _, rejected, _ = run_rules(samples, "guard_city_gate", ["give_item"], trust=1.0)
    assert rejected == {"give_item": "not_allowed"}


def test_silvia_gives_the_heirloom_only_at_complete_and_once(samples):
    _, rejected, _ = run_rules(samples, "mother_abandoned_factory", ["give_item"], stage="in_progress", trust=1.0)
    assert rejected == {"give_item": "stage"}
    fired, _, _ = run_rules(samples, "mother_abandoned_factory", ["give_item"], stage="complete")
    assert fired == {"give_item": {"item": "gold_necklace"}}
    _, rejected, _ = run_rules(samples, "mother_abandoned_factory", ["give_item"], stage="complete",
                               history={"give_item": (2,)})
    assert rejected == {"give_item": "once_only"}


def test_persona_delta_policy_is_applied_and_reported(samples):
    _, _, out = run_rules(samples, "uncle_hideout", [], relationship=-0.1, deltas=(0.9, -2.0))
    cap = samples["uncle_hideout"].persona.delta_policy.trust.max_up
    assert out.deltas.trust == pytest.approx(cap)
    assert out.deltas.relationship == pytest.approx(-0.9)  # relationship -0.1 cannot go below -1
    assert out.meta["deltas_proposed"] == {"trust": 0.9, "relationship": -2.0}


def test_allowed_flags_reads_the_state_not_the_flag_history(samples):
    # Pip's map: relationship gated and once only. The list is what the state allows; the
    # once-only refusal is game_rules' work, with the conversation's flag history.
    _, _, out = run_rules(samples, "merchant_traveling", [], relationship=0.6, history={"give_item": (1,)})
    assert allowed_flags(out) == ("end_conversation", "give_hint", "give_item", "open_trade")
    _, rejected, out = run_rules(samples, "merchant_traveling", ["give_item"], relationship=0.2)
    assert "give_item" not in allowed_flags(out) and rejected == {"give_item": "relationship_below"}
    # The game's stage in the request wins over the stored one, as for the rules.
    _, _, out = run_rules(samples, "blacksmith_village_center", [], stage="not_started")
    staged = out.replace(context=GameContext(quest_stage="in_progress", items=("iron_ore",)))
    assert "quest_start" in allowed_flags(out) and "quest_start" not in allowed_flags(staged)
    assert {"give_item", "quest_complete"} <= set(allowed_flags(staged))


def test_a_window_caps_the_net_rise_over_several_turns():
    policy = DeltaPolicy.model_validate({"trust": {"max_up": 0.2, "window": {"turns": 5, "max_up": 0.25}}})
    earlier = [Deltas(0.1, 0.0), Deltas(0.1, 0.0)]
    assert limit_deltas(policy, 0.3, 0.0, 0.2, 0.0, earlier) == (0.05, 0.0)  # 0.2 used of 0.25
    # A loss inside the window gives room back (the axis may rise 0.25 over any 5 turns).
    assert limit_deltas(policy, 0.3, 0.0, 0.2, 0.0, [Deltas(0.2, 0), Deltas(-0.2, 0)]) == (0.2, 0.0)
    # Gains older than the window no longer count; losses are never capped by it.
    old = [Deltas(0.2, 0)] + [Deltas(0.0, 0)] * 4
    assert limit_deltas(policy, 0.3, 0.0, 0.2, 0.0, old) == (0.2, 0.0)
    assert limit_deltas(policy, 0.3, 0.0, -0.3, 0.0, [Deltas(0.25, 0)]) == (-0.3, 0.0)


def test_a_run_of_gullible_turns_cannot_farm_trust_up_to_a_gate(npc_folder, tiny_model_dir):
    # A stand-in for heads that reward every flattering line with +0.1 trust and propose
    # the reward: without a window the gate opens on turn 4, with one never in 10 turns.
    from persona_agents.manager import AgentManager

    def gate_turns(window):
        policy = {"trust": {"max_up": 0.2, **({"window": window} if window else {})}}
        npc_folder("gatekeeper", flag_rules={"unlock_hidden_path": {"min_trust": 0.6}}, delta_policy=policy,
                   pipeline={"preprocess": ["normalize_input"], "prompt": ["chat_template"],
                             "generate": [{"name": "transformers", "options": {"model": str(tiny_model_dir)}}],
                             "postprocess": [{"name": "propose_flags",
                                              "options": {"flags": ["unlock_hidden_path"], "trust": 0.1}},
                                             "game_rules"]})
        plugins = npc_folder.folder.parent / "plugins"
        plugins.mkdir(exist_ok=True)
        shutil.copy(PLUGINS_DIR.parent / "tests" / "plugins" / "proposer.py", plugins)
        manager = AgentManager(npc_folder.folder, plugins_dir=plugins)
        return [n for n in range(1, 11)
                if manager.turn("gatekeeper", "You are wonderful.", seed=n).flags]

    assert gate_turns(None)[0] == 4  # 0.3 + 3 x 0.1 reaches 0.6
    assert gate_turns({"turns": 10, "max_up": 0.25}) == []
