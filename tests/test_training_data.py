"""The shipped fine-tuning data and the guard plans derived from the behaviour targets.

Stdlib scripts under training/ are run as subprocesses, the way a studio runs them.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "training" / "data"
PLANS = ROOT / "training" / "eval_plans"


def conversations(name: str) -> dict[str, list[dict]]:
    convs: dict[str, list[dict]] = defaultdict(list)
    with open(DATA / f"{name}.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            convs[record["conversation_id"]].append(record)
    return convs


def test_dataset_passes_its_checks_and_rebuilds_byte_identical():
    done = subprocess.run([sys.executable, str(DATA / "check_dataset.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuild is byte-identical" in done.stdout


def test_every_npc_meets_a_threat_as_the_first_line_in_training_and_held_out():
    # The plans caught it: with a turn always before the threat, a first-line threat to
    # Dorian ended the talk with p 0.01.
    for name in ("train", "heldout_paraphrased", "heldout_fresh"):
        ended_at_once = defaultdict(int)
        for turns in conversations(name).values():
            if len(turns) == 1:
                assert turns[0]["flag"] == ["end_conversation"], turns[0]["conversation_id"]
                assert turns[0]["context"] == []
                ended_at_once[turns[0]["npc_id"]] += 1
        assert len(ended_at_once) == 6, (name, dict(ended_at_once))


def main_pool(source: str, intent: str) -> list[str]:
    with open(DATA / "src" / f"{source}.json", encoding="utf-8") as f:
        return json.load(f)["player"][intent]["main"]


def test_every_main_phrasing_of_the_decisive_lines_is_in_training():
    # Random draws left 11 of 24 bribes out of train; Hale then let "Here's some silver.
    # Look the other way, yeah?" pass (p 0.01). The coverage stream puts each one in.
    train = [t for turns in conversations("train").values() for t in turns]

    def said(npc_id, first=False, when=lambda t: True):
        return {t["player_utterance"] for t in train if t["npc_id"] == npc_id
                and (not first or not t["context"]) and when(t)}

    rel = lambda t: t["tags"]["relationship"]  # noqa: E731  (numeric on every map request)
    friend = lambda t: "give_item" in t["flag"] and rel(t) >= 0.5  # noqa: E731
    stranger = lambda t: not t["flag"] and isinstance(rel(t), float) and rel(t) < 0.5  # noqa: E731
    ended = lambda t: t["flag"] == ["end_conversation"]  # noqa: E731
    cases = [("guard_city_gate", "common", "bribe", True, ended),
             ("uncle_hideout", "common", "threat", True, ended),
             ("merchant_traveling", "pip", "ask_map", True, friend),
             ("merchant_traveling", "pip", "ask_map", True, stranger),
             ("uncle_hideout", "dorian", "ask_letter", False, lambda t: "give_item" in t["flag"]),
             ("mother_abandoned_factory", "silvia", "return_with_letter", False,
              lambda t: "quest_complete" in t["flag"])]
    for npc_id, source, intent, first, when in cases:
        missing = set(main_pool(source, intent)) - said(npc_id, first, when)
        assert not missing, (npc_id, intent, sorted(missing))


def test_hale_opens_for_a_pass_shown_as_the_first_line():
    first_turn_opens = [turns[0] for turns in conversations("train").values()
                        if turns[0]["npc_id"] == "guard_city_gate"
                        and "unlock_hidden_path" in turns[0]["flag"]]
    assert any("show_item:city_pass" in t["player_state"]["actions"] for t in first_turn_opens)
    assert all("city_pass" in t["player_state"]["items"] or t["tags"]["trust"] >= 0.6
               for t in first_turn_opens)


def test_guard_plans_are_the_targets_minus_the_listed_misses():
    """npcs/tests/ (run by make test) must be what derive_guard_plans.py writes now."""
    spec = importlib.util.spec_from_file_location("derive_guard_plans", PLANS / "derive_guard_plans.py")
    derive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(derive)
    removed = 0
    targets = sorted(PLANS.glob("*.yaml"))
    # Plans written by hand (not derived from a target): memory.yaml, scenes.yaml (issue 30).
    hand_written = {"memory.yaml", "scenes.yaml"}
    assert {p.name for p in targets} == {p.name for p in (ROOT / "npcs" / "tests").glob("*.yaml")} - hand_written
    for source in targets:
        text, dropped = derive.derive(source)
        removed += dropped
        assert (ROOT / "npcs" / "tests" / source.name).read_text(encoding="utf-8") == text, (
            f"npcs/tests/{source.name} is stale: run python training/eval_plans/derive_guard_plans.py")
    assert removed == len(derive.MISSES)


def test_every_labelled_flag_is_one_the_npc_rules_allow_at_that_turn():
    # A label the persona's rules forbid where it stands teaches the heads an event the
    # game refuses anyway, and `eval`'s after-rules figures would count it as missed.
    # Data and personas must agree.
    from persona_agents.multihead.data import load_examples, load_personas_for_data
    from persona_agents.rules import allowed_flags

    personas = load_personas_for_data(ROOT / "npcs")
    files = sorted(DATA.glob("*.jsonl"))
    refused = [
        f"{e.turn.npc_id} {flag} at {e.turn.state.quest_stage}: {e.turn.utterance!r}"
        for e in load_examples(files, personas=personas)
        for flag in e.flags if flag not in allowed_flags(e.turn)
    ]
    assert len(files) == 4 and refused == []
