"""The writers' own lines (issue 25): a line is said only where it agrees with the game's
decision (the events that fired, the refusals), the state, and the player's words."""

from __future__ import annotations

import pytest

from persona_agents.default_plugins.authored_lines import AuthoredLines, fits_decision
from persona_agents.persona import AuthoredLine, Persona
from persona_agents.persona_loader import load_personas
from persona_agents.plugins import load_plugins
from persona_agents.runtime import Runtime
from persona_agents.turn import Exchange, FiredFlag, NpcState, RejectedFlag, Turn

from .conftest import NPCS_DIR, PLUGINS_DIR, SAMPLE_NPC_IDS

SMITH_LINES = [
    {"id": "hand_over", "text": "Here's your blade, good as new.", "events": ["give_item", "quest_complete"],
     "examples": ["Is my sword ready?", "Here is the ore."]},
    {"id": "no_ore", "text": "No ore, no sword. Bring me iron ore first.", "refuses": ["give_item"],
     "examples": ["Fix my sword now.", "Can I have the sword?"]},
    {"id": "greet", "text": "Morning. What do you need?", "examples": ["Hello there.", "Good morning, smith."]},
    {"id": "mine", "text": "The collapsed mine east of town has ore.", "events": ["give_hint"],
     "examples": ["Where do I find ore?"]},
    {"id": "friend_only", "text": "For you, friend, anything.", "min_trust": 0.8, "examples": ["Hello there."]},
]


@pytest.fixture(scope="module")
def runtime():
    return Runtime(npcs_dir=NPCS_DIR)


def smith(mode="authored", **options) -> tuple[Persona, dict]:
    persona = Persona.model_validate({"id": "smith", "name": "Smith", "role": "a smith.", "lines": SMITH_LINES,
                                      "pipeline": {"prompt": ["sectioned"], "generate": ["transformers"]}})
    return persona, {"mode": mode, **options}


def turn_for(persona, utterance, fired=(), refused=(), trust=0.3, reply="The model's own words.", history=()):
    return Turn(npc_id=persona.id, player_id="p", utterance=utterance, persona=persona,
                state=NpcState(trust, 0.0, "calm", "in_progress"), history=tuple(history), reply=reply,
                flags=tuple(FiredFlag(f) for f in fired),
                flags_rejected=tuple(RejectedFlag(f, "missing_item") for f in refused))


def step_for(persona, options, runtime):
    return AuthoredLines(AuthoredLines.Options(**options), persona, runtime)


def test_a_line_fits_exactly_the_fired_events_and_a_refusal_only_when_refused():
    line = AuthoredLine(id="x", text="t", events=["give_item"])
    assert fits_decision(line, frozenset({"give_item"}), frozenset())
    assert not fits_decision(line, frozenset(), frozenset({"give_item"}))
    assert not fits_decision(line, frozenset({"give_item", "quest_complete"}), frozenset())
    refusal = AuthoredLine(id="y", text="t", refuses=["give_item"])
    assert fits_decision(refusal, frozenset(), frozenset({"give_item"}))
    assert not fits_decision(refusal, frozenset(), frozenset())


def test_the_line_agrees_with_the_decision(runtime):
    persona, options = smith()
    step = step_for(persona, options, runtime)
    handed = step.run(turn_for(persona, "Is my sword ready?", fired=("give_item", "quest_complete")))
    assert handed.meta["line_id"] == "hand_over" and handed.reply.startswith("Here's your blade")
    refused = step.run(turn_for(persona, "Is my sword ready?", refused=("give_item",)))
    assert refused.meta["line_id"] == "no_ore" and "Bring me iron ore" in refused.reply
    hint = step.run(turn_for(persona, "Where's the ore, then?", fired=("give_hint",)))
    assert hint.meta["line_id"] == "mine"


def test_meaning_and_state_choose_among_lines_and_repeats_lose(runtime):
    persona, options = smith()
    step = step_for(persona, options, runtime)
    assert step.run(turn_for(persona, "Hi, good morning!")).meta["line_id"] == "greet"
    assert step.run(turn_for(persona, "Hi, good morning!", trust=0.9)).meta["line_id"] in ("greet", "friend_only")
    said = [Exchange("Hello.", "Morning. What do you need?")]
    again = step.run(turn_for(persona, "Hi, good morning!", trust=0.9, history=said))
    assert again.meta["line_id"] == "friend_only"


def test_without_a_fitting_line_the_model_speaks(runtime):
    persona, options = smith()
    step = step_for(persona, options, runtime)
    out = step.run(turn_for(persona, "What do you think of the king's new tax on wool?"))
    assert out.reply == "The model's own words." and out.meta["reply_source"] == "model"
    # An event no line is written for: the model's reply, never another event's line.
    out = step.run(turn_for(persona, "Show me your wares.", fired=("open_trade",)))
    assert out.meta["reply_source"] == "model"


def test_free_mode_replaces_only_an_empty_or_out_of_world_reply(runtime):
    persona, options = smith(mode="free", forbidden_words=["dragonfly"])
    step = step_for(persona, options, runtime)
    kept = step.run(turn_for(persona, "Hello there.", reply="Aye, what is it?"))
    assert kept.reply == "Aye, what is it?" and kept.meta["reply_source"] == "model"
    for bad in ("", "Check your phone, I posted it on social media.", "A dragonfly told me."):
        out = step.run(turn_for(persona, "Hello there.", reply=bad))
        assert out.meta["line_id"] == "greet" and out.meta["reply_guard"]
    unanswerable = step.run(turn_for(persona, "Tax on wool?", reply=""))
    assert unanswerable.meta["reply_guard"].startswith("empty model reply and no authored line")


@pytest.fixture(scope="module")
def samples():
    return load_personas(NPCS_DIR, load_plugins(PLUGINS_DIR).registry)


@pytest.mark.parametrize("npc_id", SAMPLE_NPC_IDS)
def test_every_sample_npc_says_a_line_that_agrees_with_what_the_game_applied(npc_id, samples, runtime):
    # Each event combination its lines are written for is said with a line of exactly
    # those events; a refusal of any gated flag is never answered with a hand-over line.
    loaded = samples[npc_id]
    persona = loaded.persona
    assert len(persona.lines) >= 30, f"{npc_id} has {len(persona.lines)} authored lines"
    options = dict(loaded.step_options["postprocess"])["authored_lines"]
    step = AuthoredLines(options, persona, runtime)
    combos = {frozenset(line.events) for line in persona.lines if line.events}
    for combo in combos:
        example = next(line for line in persona.lines if frozenset(line.events) == combo)
        for trust in (0.2, 0.9):
            turn = turn_for(persona, (example.examples or [example.text])[0], fired=sorted(combo), trust=trust)
            turn = turn.replace(state=NpcState(trust, trust, "calm", (example.stages or ["in_progress"])[0]))
            chosen = step.choose(turn)
            if chosen is not None:
                assert frozenset(chosen[0].events) == combo
    for rule_flag in {f for line in persona.lines for f in line.refuses}:
        turn = turn_for(persona, "Give it to me.", refused=(rule_flag,))
        chosen = step.choose(turn)
        assert chosen is None or not chosen[0].events, (npc_id, rule_flag, chosen)


def test_the_npc_decides_then_speaks_and_skips_the_model_for_a_writers_line(sample_manager):
    # The decision goes out after the prompt pass, before any text; where a writer's line
    # fits it, no reply token is decoded; where none fits, the model speaks.
    from persona_agents.streaming import decisions_to, stream_to
    from persona_agents.turn import GameContext

    sources = []
    for line, player in (("Can you fix my sword?", "dts-1"), ("Hello there, smith.", "dts-2")):
        events = []
        with stream_to(lambda piece: events.append(("text", piece))), \
                decisions_to(lambda decision: events.append(("decision", decision))):
            response = sample_manager.turn("blacksmith_village_center", line, player_id=player, seed=1,
                                           context=GameContext(quest_stage="not_started", items=("broken_sword",)))
        assert [kind for kind, _ in events] == ["decision", "text"]
        assert events[0][1]["flags"] == [f.to_dict() for f in response.flags]
        sources.append(response.meta["reply_source"])
        if response.meta["reply_source"] == "authored":
            assert response.meta["new_tokens"] == 0 and response.meta["speech"].startswith("skipped")
        else:
            assert response.meta["new_tokens"] > 0 and response.text
    assert "authored" in sources
