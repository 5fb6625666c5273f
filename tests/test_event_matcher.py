"""The event matcher (issue 26): events read by their meaning and the writers' example lines,
for NPCs the heads never saw and events the adapter has no head for."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from persona_agents.multihead.matcher import (
    SCALARS,
    EventMatcher,
    MatcherFit,
    NpcMatcher,
    PairSet,
    PersonaEvents,
    blend,
    event_readers,
    events_read_by_matcher,
    feature_size,
    fit_matcher,
    load_matcher,
    save_matcher,
)
from persona_agents.persona import Persona

from .conftest import REPO

ADAPTER = REPO / "training" / "adapters" / "smollm2-npc-v3"
KEEPER = "keeper_lighthouse"


def _persona(npc_id: str = "keeper", rules: dict | None = None, lines: list | None = None) -> Persona:
    default_rules = {"rent_room": {"means": "lets the player sleep in the lamp room for five coins"},
                     "end_conversation": {}}
    return Persona.model_validate({
        "id": npc_id, "name": "Ysolde", "role": "lighthouse keeper", "traits": ["watchful"], "speaking_style": "curt",
        "pipeline": {"prompt": ["sectioned"], "generate": ["multihead"]}, "backstory": "Keeps the lamp at Gull Point.",
        "flag_rules": rules if rules is not None else default_rules, "lines": lines or []})


class FixedEmbedder:
    """Orthogonal unit vectors by word: enough to check the features' arithmetic."""

    words = ["room", "sleep", "night", "bye", "storm", "rent", "end", "conversation", "lets", "the"]

    def encode(self, texts, batch_size=32):
        out = np.zeros((len(texts), len(self.words)), dtype="float32")
        for i, text in enumerate(texts):
            for word in text.lower().replace(":", " ").replace("_", " ").split():
                if word in self.words:
                    out[i, self.words.index(word)] += 1.0
            norm = np.linalg.norm(out[i])
            out[i] = out[i] / norm if norm else out[i]
        return out


def test_who_reads_which_event():
    beds = ["a bed, please", "room for the night?", "can I sleep here", "need a bunk", "lodging?"]
    lines = [{"id": "bed", "text": "Five coins.", "events": ["rent_room"], "examples": beds},
             {"id": "bye", "text": "Go.", "events": ["end_conversation"], "examples": ["bye", "I'm off"]}]
    persona = _persona(lines=lines)
    game = ["give_item", "rent_room", "end_conversation", "ring_bell"]
    flags = ["give_item", "rent_room", "end_conversation"]
    # An NPC the heads never saw: the events its writer gave five or more example player
    # lines for; end_conversation (two) stays with the heads.
    assert events_read_by_matcher(persona, game, flags, ["brann"], "auto") == ["rent_room"]
    assert events_read_by_matcher(_persona(), game, flags, ["brann"], "auto") == []
    # An NPC the heads know: the matcher alone reads only events the adapter has no head
    # for; an event with five or more examples is read by the heads and the matcher together.
    ringer = _persona(rules={"rent_room": {}, "ring_bell": {"means": "rings the storm bell"}}, lines=lines)
    assert events_read_by_matcher(ringer, game, flags, ["keeper"], "auto") == ["ring_bell"]
    assert event_readers(ringer, game, flags, ["keeper"], "auto") == {"rent_room": "both", "ring_bell": "matcher"}
    assert event_readers(persona, game, flags, ["keeper"], "auto") == {"rent_room": "both"}
    assert event_readers(persona, game, flags, ["brann"], "auto") == {"rent_room": "matcher"}
    assert event_readers(ringer, game, flags, ["keeper"], "heads") == {}
    # An event no head knows goes to the matcher, examples or not.
    assert events_read_by_matcher(ringer, game, flags, ["brann"], "auto") == ["rent_room", "ring_bell"]
    assert events_read_by_matcher(ringer, game, flags, ["keeper"], "matcher") == ["rent_room", "ring_bell"]
    assert events_read_by_matcher(ringer, game, flags, [], "heads") == []
    # A persona without rules: every game event, as the heads propose them.
    assert events_read_by_matcher(_persona(rules={}), game, flags, [], "matcher") == game
    assert events_read_by_matcher(_persona(rules={}), game, flags, [], "auto") == ["ring_bell"]
    with pytest.raises(ValueError, match="auto, heads, matcher"):
        events_read_by_matcher(persona, game, flags, [], "both")


def test_pair_features_carry_meaning_evidence_and_leave_out_the_players_own_words():
    embedder = FixedEmbedder()
    lines = [{"id": "room", "text": "Five coins.", "events": ["rent_room"], "examples": ["a room for the night"]},
             {"id": "bye", "text": "Go.", "events": ["end_conversation"], "examples": ["bye storm"]}]
    reader = PersonaEvents(_persona(lines=lines), ["rent_room", "end_conversation"], embedder)
    line = embedder.encode(["a room for the night"])[0]
    rows = reader.pair_features(line, None, "a room for the night")
    dim = line.shape[0]
    assert rows.shape == (2, feature_size(dim))
    scalars = dict(zip(SCALARS, rows[0, 4 * dim:]))
    assert scalars["example_best"] == pytest.approx(1.0)
    assert scalars["example_is_top"] == 1.0 and scalars["example_margin"] == pytest.approx(1.0)
    assert scalars["cos_line_means"] > 0  # "room" and "the" in the meaning
    assert dict(zip(SCALARS, rows[1, 4 * dim:]))["example_is_top"] == 0.0
    # The record's own wording is left out (a player never quotes the writer).
    same = dict(zip(SCALARS, reader.pair_features(line, None, "A room  for the NIGHT", exclude_same=True)[0, 4 * dim:]))
    assert same["example_best"] == 0.0
    # Persona only: no example evidence at all (the meanings are still read).
    bare = PersonaEvents(_persona(lines=lines), ["rent_room", "end_conversation"], embedder, with_lines=False)
    example_scalars = [SCALARS.index(name) for name in ("example_best", "has_examples", "example_margin",
                                                        "example_is_top", "none_best", "has_none_examples",
                                                        "example_top_two_mean")]
    assert not bare.pair_features(line, None, "a room for the night")[:, [4 * dim + k for k in example_scalars]].any()


def test_two_close_examples_count_more_than_one_and_the_nearest_meaning_leads():
    embedder = FixedEmbedder()
    lines = [{"id": "room", "text": "Five coins.", "events": ["rent_room"],
              "examples": ["a room for the night", "sleep night"]},
             {"id": "bye", "text": "Go.", "events": ["end_conversation"], "examples": ["bye storm"]}]
    reader = PersonaEvents(_persona(lines=lines), ["rent_room", "end_conversation"], embedder)
    line = embedder.encode(["a room for the night"])[0]
    dim = line.shape[0]
    rows = reader.pair_features(line, None, "a room for the night")
    room, bye = (dict(zip(SCALARS, row[4 * dim:])) for row in rows)
    # room, night, the against sleep, night: one shared word of 3 and 2.
    assert room["example_top_two_mean"] == pytest.approx((1.0 + 1 / np.sqrt(6)) / 2, abs=1e-5)
    assert bye["example_top_two_mean"] == 0.0  # one example, nothing shared
    # Each event's meaning against the other's: the line is nearer renting a room.
    assert room["meaning_margin"] == pytest.approx(room["cos_line_means"] - bye["cos_line_means"], abs=1e-6)
    assert room["meaning_margin"] > 0 and bye["meaning_margin"] == pytest.approx(-room["meaning_margin"], abs=1e-6)
    # The player's own wording left out: the other example alone.
    same = dict(zip(SCALARS, reader.pair_features(line, None, "a room for the night", exclude_same=True)[0, 4 * dim:]))
    assert same["example_top_two_mean"] == pytest.approx(1 / np.sqrt(6) / 2, abs=1e-5)


def test_fit_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, feature_size(6))).astype("float32")
    labels = (features[:, 0] > 0.5).astype("float32")  # learnable from one feature
    pairs = PairSet(features, labels, np.arange(400), ["e"] * 400)
    model, info = fit_matcher(pairs, pairs, MatcherFit(epochs=30, patience=30, batch_size=32))
    probs = model.probabilities(features)
    assert ((probs >= 0.5) == (labels > 0.5)).mean() > 0.9
    threshold = 0.4
    save_matcher(tmp_path, model, threshold, {"heads_npcs": ["a"]})
    loaded, meta = load_matcher(tmp_path)
    assert meta["threshold"] == threshold and meta["heads_npcs"] == ["a"]
    assert np.allclose(loaded.probabilities(features), probs)
    assert load_matcher(tmp_path / "nowhere") is None
    meta_file = tmp_path / "matcher.json"
    meta_file.write_text(meta_file.read_text().replace('"cos_line_means"', '"something_else"'))
    with pytest.raises(ValueError, match="persona-agents fit-matcher"):
        load_matcher(tmp_path)
    assert isinstance(EventMatcher(6), EventMatcher)


@pytest.fixture(scope="module")
def shipped():
    found = load_matcher(ADAPTER)
    assert found is not None, f"{ADAPTER} has no event matcher: run `make adapter-matcher`"
    from persona_agents.lore.embedder import load_embedder

    return found, load_embedder(found[1].get("embedder", "embedded"))  # the sentence model it was fitted with


def test_the_committed_matcher_reads_a_new_npcs_own_event_by_its_meaning(shipped):
    """A persona written here, with an event no adapter knows: the fitted matcher fires it on
    a line that asks for it in words the writer never used, and not on small talk."""
    (model, meta), embedder = shipped
    persona = _persona(rules={
        "rent_room": {"means": "lets the player sleep in the lamp room for five coins"},
        "ring_bell": {"means": "rings the storm bell to warn the harbour when the player reports a ship in danger"},
        "end_conversation": {}}, lines=[
        # Small talk near the events' topics: without it the sea alone would ring the bell.
        {"id": "chat", "text": "Mind the lamp.", "events": [],
         "examples": ["Hello there.", "Do many ships come by here?", "How long have you lived up here?",
                      "The sea looks rough today.", "What do you do all day?"]},
        {"id": "bell", "text": "The bell it is!", "events": ["ring_bell"],
         "examples": ["A boat is sinking off the point!", "Sound the alarm, there's a wreck!",
                      "Ring the bell, a ship hit the rocks!", "Warn the harbour, a ship is in trouble",
                      "quick a ship is going down"]},
        {"id": "bed", "text": "Five coins, and mind the stairs.", "events": ["rent_room"],
         "examples": ["Can I sleep here tonight?", "Got a bed for a traveller?", "I need a place to stay",
                      "how much for a room", "May I lodge here till morning?"]}])
    descriptions = {"end_conversation": "the NPC ends the conversation: walks away, refuses to talk further"}
    matcher = NpcMatcher(model, meta["threshold"], persona, ["rent_room", "ring_bell", "end_conversation"], embedder,
                         descriptions, event_thresholds=meta.get("event_thresholds"))
    fired = {line: {e for e, p in matcher.probabilities(line).items() if p >= matcher.threshold_for(e)} for line in (
        "Help! I saw a fishing boat smash into the reef!",
        "Any chance I could bunk in your tower for the night?",
        "What a lovely evening, the sea is calm.")}
    assert fired["Help! I saw a fishing boat smash into the reef!"] == {"ring_bell"}
    assert fired["Any chance I could bunk in your tower for the night?"] == {"rent_room"}
    assert fired["What a lovely evening, the sea is calm."] == set()


def _game_with_new_npc(root: Path, read_events: str) -> Path:
    """The sample world plus a lighthouse keeper the adapter never saw, with her own event."""
    shutil.copytree(REPO / "npcs", root / "npcs")
    shutil.copytree(REPO / "plugins", root / "plugins")
    npcs = root / "npcs"
    game = yaml.safe_load((npcs / "_game.yaml").read_text(encoding="utf-8"))
    game["events"]["ring_bell"] = {"description": "the NPC rings the storm bell to warn the harbour"}
    (npcs / "_game.yaml").write_text(yaml.safe_dump(game, sort_keys=False), encoding="utf-8")
    persona = yaml.safe_load((npcs / "hermit_forest.yaml").read_text(encoding="utf-8"))
    persona.update(id=KEEPER, name="Ysolde", role="lighthouse keeper at Gull Point")
    persona["flag_rules"] = {"ring_bell": {"means": "rings the storm bell when the player reports a ship in danger"},
                             "end_conversation": {}}
    persona["lines"] = [
        {"id": "bell", "text": "The bell, then! Every boat in the bay will hear it.", "events": ["ring_bell"],
         "examples": ["A boat is sinking off the point!", "Sound the alarm, there's a wreck!",
                      "Ring the bell, a ship hit the rocks!", "Warn the harbour, a ship is in trouble",
                      "quick a ship is going down"]},
        {"id": "hello", "text": "Mind the lamp, stranger.", "events": [], "examples": ["Hello there.", "Nice view."]}]
    persona.get("pipeline", {}).pop("retrieve", None)  # no lore written for her
    (npcs / f"{KEEPER}.yaml").write_text(yaml.safe_dump(persona, sort_keys=False), encoding="utf-8")
    defaults = npcs / "_defaults.yaml"
    data = yaml.safe_load(defaults.read_text(encoding="utf-8"))
    data["generation"] = {**data.get("generation", {}), "temperature": 0.0, "max_new_tokens": 8}
    data["pipeline"]["generate"] = [{"name": "multihead", "options": {
        "adapter": str(ADAPTER), "engine": "fast", "read_events": read_events}}]
    defaults.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return npcs


@pytest.mark.model
def test_a_new_npc_fires_its_own_event_through_the_game(tmp_path):
    from persona_agents.manager import AgentManager

    line = "Help! A fishing boat just smashed into the reef below!"
    auto = AgentManager(_game_with_new_npc(tmp_path / "auto", "auto")).turn(KEEPER, line, player_id="p", seed=1)
    assert "ring_bell" in [f.name for f in auto.flags]
    # Her other event has no example lines: the heads keep it.
    assert auto.meta["events_read_by_matcher"] == ["ring_bell"]
    # The heads alone cannot fire an event the adapter never learnt.
    heads = AgentManager(_game_with_new_npc(tmp_path / "heads", "heads")).turn(KEEPER, line, player_id="p", seed=1)
    assert "ring_bell" not in [f.name for f in heads.flags]
    assert "events_read_by_matcher" not in heads.meta


def test_the_sample_npcs_are_read_by_their_heads_and_the_matcher_together():
    """The six sample NPCs are among the heads' NPCs and their game has no event the
    adapters lack: the matcher decides nothing alone for them, and reads with the heads
    the events their writers gave five or more example player lines for."""
    import json

    from persona_agents.game import load_game
    from persona_agents.multihead.data import load_personas_for_data
    from persona_agents.multihead.matcher import heads_npcs

    game = load_game(REPO / "npcs")
    for adapter in (ADAPTER, REPO / "training" / "adapters" / "smollm2-npc"):
        meta = json.loads((adapter / "multihead.json").read_text())
        _, matcher_meta = load_matcher(adapter)
        known = heads_npcs(meta, matcher_meta)
        assert len(known) == 50
        for persona in load_personas_for_data(REPO / "npcs").values():
            assert persona.id in known
            assert events_read_by_matcher(persona, list(game.events), meta["flags"], known, "auto") == []
            readers = event_readers(persona, list(game.events), meta["flags"], known, "auto")
            assert readers and set(readers.values()) == {"both"}
            assert "end_conversation" in readers


def test_both_readers_add_their_margins_in_log_odds():
    import math

    p, threshold = blend(0.5, 0.5, 0.18, 0.18)
    assert math.isclose(threshold, 1 / (1 + math.exp(-(0 + math.log(0.18 / 0.82)) / 2)))
    # Each at its own threshold: exactly at the blended threshold.
    assert math.isclose(p, threshold)
    # The heads sure of it (0.95 over 0.5) outvote the matcher just under its threshold ...
    p, threshold = blend(0.95, 0.5, 0.15, 0.18)
    assert p >= threshold
    # ... but not a matcher sure it is not asked (0.01).
    p, threshold = blend(0.95, 0.5, 0.01, 0.18)
    assert p < threshold


def test_the_heads_reader_decides_a_blended_event_by_both():
    from types import SimpleNamespace

    import torch

    from persona_agents.multihead.reader import HeadsReader
    from persona_agents.turn import Generation

    bundle = SimpleNamespace(flags=["give_item", "end_conversation", "ring_bell"],
                             thresholds={"give_item": 0.5, "end_conversation": 0.6, "ring_bell": 0.5})
    # Events with thresholds of their own (matcher_fit.choose_event_thresholds): the matcher
    # alone reads ring_bell against 0.7; a blended event takes the one threshold (0.2).
    own = {"ring_bell": 0.7, "end_conversation": 0.95}
    matcher = SimpleNamespace(threshold=0.2, blended=frozenset({"end_conversation"}),
                              threshold_for=lambda name: own.get(name, 0.2))
    reader = HeadsReader(bundle, ["give_item", "end_conversation"], matcher=matcher)
    heads = SimpleNamespace(flag_probs=torch.tensor([[0.7, 0.4, 0.0]]), deltas=torch.tensor([[-0.3, -0.2]]))
    empty = Generation(text="", model="m", new_tokens=0, finished=True)
    # The heads alone would not end the talk (0.4 < 0.6); the matcher sure of it (0.9) tips it.
    out = reader.apply(empty, heads, {"end_conversation": 0.9})
    assert out.flags == ("give_item", "end_conversation")
    assert out.flag_probs["end_conversation"] == pytest.approx(blend(0.4, 0.6, 0.9, 0.2)[0], abs=1e-6)
    # A matcher unsure (0.05) keeps it from firing; give_item stays the heads' alone.
    assert reader.apply(empty, heads, {"end_conversation": 0.05}).flags == ("give_item",)
    # The matcher alone, against the event's own threshold: 0.6 is over the one threshold
    # (0.2) but under ring_bell's own (0.7).
    assert reader.apply(empty, heads, {"ring_bell": 0.6}).flags == ("give_item",)
    assert reader.apply(empty, heads, {"ring_bell": 0.75}).flags == ("give_item", "ring_bell")
    # An event the matcher reads alone takes its probability and threshold.
    matcher.blended = frozenset()
    assert reader.apply(empty, heads, {"end_conversation": 0.9}).flags == ("give_item",)  # under its own 0.95
    assert reader.apply(empty, heads, {"end_conversation": 0.96}).flags == ("give_item", "end_conversation")


def test_an_event_with_its_own_threshold_keeps_it_and_the_others_share_one():
    from persona_agents.multihead.matcher import event_threshold

    meta = {"threshold": 0.2, "event_thresholds": {"give_hint": 0.52}}
    assert event_threshold(meta, "give_hint") == 0.52 and event_threshold(meta, "waive_fee") == 0.2
    assert event_threshold({"threshold": 0.3}, "give_hint") == 0.3  # a matcher fitted before them
    reader = NpcMatcher(EventMatcher(10), 0.2, _persona(), ["rent_room"], FixedEmbedder(),
                        event_thresholds={"rent_room": 0.4})
    assert reader.threshold_for("rent_room") == 0.4 and reader.threshold_for("end_conversation") == 0.2


def test_examples_per_event_are_cut_for_the_curve_small_talk_kept():
    from persona_agents.multihead.matcher import with_examples_per_event

    lines = [{"id": "a", "text": "A.", "events": ["rent_room"], "examples": ["r1", "r2", "r3"]},
             {"id": "b", "text": "B.", "events": ["rent_room"], "examples": ["r4", "r5"]},
             {"id": "c", "text": "C.", "events": ["end_conversation"], "examples": ["e1", "e2"]},
             {"id": "d", "text": "D.", "events": [], "examples": ["s1", "s2", "s3"]}]
    cut = with_examples_per_event(_persona(lines=lines), 2)
    assert [line.examples for line in cut.lines] == [["r1", "r2"], [], ["e1", "e2"], ["s1", "s2", "s3"]]
    assert [line.examples for line in with_examples_per_event(_persona(lines=lines), 4).lines][:2] == [
        ["r1", "r2", "r3"], ["r4"]]


def test_leaving_out_npcs_the_heads_never_saw_is_a_clear_error():
    from persona_agents.errors import TrainingConfigError
    from persona_agents.multihead.matcher_fit import fit_adapter_matcher

    with pytest.raises(TrainingConfigError, match="none of the NPCs to leave out \\(nobody_here\\)"):
        fit_adapter_matcher(ADAPTER, REPO / "training" / "generalist" / "npcs", ["nobody_here"])


class RecordingEmbedder(FixedEmbedder):
    def __init__(self):
        self.calls = []

    def encode(self, texts, batch_size=32):
        self.calls.append(list(texts))
        return super().encode(texts, batch_size)


@pytest.mark.parametrize("shared", [True, False])
def test_the_matcher_reads_the_turn_with_its_own_sentence_model(shared):
    """The heads' evidence and the matcher may read different sentence models (the matcher
    all-mpnet-base-v2, the evidence all-MiniLM-L6-v2): each gets the player's line in its
    own vectors, and the matcher the NPC's last line too; one model embeds both lines once."""
    from types import SimpleNamespace

    from persona_agents.multihead.evidence import EventEvidence
    from persona_agents.multihead.reader import HeadsReader

    beds = ["a bed, please", "room for the night?", "can I sleep here", "need a bunk", "lodging?"]
    persona = _persona(lines=[{"id": "bed", "text": "Five coins.", "events": ["rent_room"], "examples": beds}])
    heads_model, matcher_model = RecordingEmbedder(), RecordingEmbedder()
    if shared:
        matcher_model = heads_model
    bank = EventEvidence(persona, ["rent_room", "end_conversation"], heads_model)
    import torch
    torch.manual_seed(0)
    matcher = NpcMatcher(EventMatcher(len(FixedEmbedder.words)).eval(), 0.3, persona, ["rent_room"], matcher_model)
    heads_model.calls.clear()
    matcher_model.calls.clear()
    reader = HeadsReader(SimpleNamespace(flags=["rent_room"]), [], bank, matcher)
    evidence, matched = reader.turn_inputs("a room for the night", "Welcome, storm or no storm.")
    assert matcher_model.calls == [["a room for the night", "Welcome, storm or no storm."]]
    if not shared:
        assert heads_model.calls == [["a room for the night"]]
    own = matcher_model.encode(["a room for the night", "Welcome, storm or no storm."])
    assert matched == matcher.probabilities("a room for the night", own[0], own[1])
    assert evidence is not None and evidence.shape[0] == 1
