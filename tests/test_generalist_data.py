"""The generalist data of issue 26 (training/generalist/): many NPCs, checked against their
personas and rules, split by conversation, and a held-out set no training file touches."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from persona_agents.multihead.datacheck import check_files

from .conftest import REPO

GENERALIST = REPO / "training" / "generalist"
SAMPLE_IDS = {p.stem for p in (REPO / "npcs").glob("*.yaml") if not p.name.startswith("_")}


def records(*paths):
    return [json.loads(line) for path in paths for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_the_data_fits_its_personas_and_rules():
    report = check_files(sorted((GENERALIST / "data").glob("*.jsonl")), [GENERALIST / "npcs"])
    assert report.errors == []
    new_npcs = set(report.turns_per_npc) - SAMPLE_IDS
    assert len(new_npcs) >= 40  # issue 26: at least 40 NPCs beyond the six
    assert min(report.turns_per_npc[n] for n in new_npcs) >= 25
    custom = ["rent_room", "heal_player", "teach_skill", "start_brawl", "call_guards", "accept_bribe",
              "join_party", "grant_blessing"]
    assert all(report.events[e] >= 15 for e in custom), dict(report.events)
    assert report.no_flag / report.total >= 1 / 3 and report.distinct_replies == report.total


def test_the_held_out_set_is_checked_and_shares_nothing_with_training():
    heldout = GENERALIST / "heldout"
    assert check_files([heldout / "data" / "new_npcs.jsonl"], [heldout / "npcs"]).errors == []
    assert check_files([heldout / "data" / "sample_voices.jsonl"], [REPO / "npcs"]).errors == []
    training = records(*sorted((GENERALIST / "data").glob("*.jsonl")), REPO / "training/data/train.jsonl")
    # The development set (sample NPCs in another writer's voices) is kept apart the same way.
    dev = GENERALIST / "dev" / "sample_voices_e.jsonl"
    assert check_files([dev], [REPO / "npcs"]).errors == []
    held = records(*sorted((heldout / "data").glob("*.jsonl")), dev)
    assert not {r["npc_id"] for r in records(heldout / "data" / "new_npcs.jsonl")} & {r["npc_id"] for r in training}
    said = {" ".join(r["player_utterance"].lower().split()) for r in training}
    # Lines of three words or more: two authors may both write "Ore." or "hi there".
    shared = [r["player_utterance"] for r in held
              if len(r["player_utterance"].split()) >= 3 and " ".join(r["player_utterance"].lower().split()) in said]
    assert shared == []


def test_the_split_is_by_conversation_and_rebuilds_identically(tmp_path):
    split = GENERALIST / "data" / "split"
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in split.glob("*.jsonl")}
    done = subprocess.run([sys.executable, str(GENERALIST / "build_splits.py")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in split.glob("*.jsonl")}
    assert before == after and set(after) == {"train.jsonl", "validation.jsonl"}
    train, val = records(split / "train.jsonl"), records(split / "validation.jsonl")
    assert not {r["conversation_id"] for r in train} & {r["conversation_id"] for r in val}
    assert {r["npc_id"] for r in val} == {r["npc_id"] for r in train}  # every NPC in both


def test_the_measurement_runs_on_the_generalist_adapter(tmp_path):
    """training/generalist/measure.py --quick: issue 26's table cannot rot (real model,
    8 turns per set)."""
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(GENERALIST / "measure.py"), "--adapter",
                           "training/adapters/smollm2-npc", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert len(results) == 4 and all(r["n"] == 8 for r in results.values())
    assert "| smollm2-npc: new NPCs, persona only | 8 |" in done.stdout


def test_the_held_out_folds_run_on_cached_vectors(tmp_path):
    """training/generalist/folds.py --quick: every fold of issue 26's studio table (a
    sample NPC held out of the heads refit; new NPCs with persona only, with authored
    lines, with labelled data), on a few turns and epochs. The second run reads every
    <STATE> vector from the cache the first filled."""
    out = tmp_path / "folds.json"
    env = {**os.environ, "PERSONA_AGENTS_VECTOR_CACHE": str(tmp_path / "vectors")}
    command = [sys.executable, str(GENERALIST / "folds.py"), "--quick", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"new NPCs, persona only", "new NPCs, persona + authored lines"} <= set(results)
    assert any(label.startswith("new NPCs, + labelled data") for label in results)
    assert any("held out of the heads refit" in label for label in results)
    assert all(0.0 <= r["f1_after_rules"] <= 1.0 for r in results.values())
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "<STATE> vectors, train:" not in again.stderr  # nothing left to compute: no progress bar
    assert json.loads(out.read_text()) == results  # seeded: the same figures from the cached vectors


def test_fit_matcher_runs_scores_left_out_npcs_and_saves_into_a_copy(tmp_path):
    """`persona-agents fit-matcher` (issue 26's event matcher) on a few turns (--quick):
    with --dev-npcs it scores the NPCs left out and saves nothing; without, it saves a
    matcher that loads into the adapter folder given (a copy, never the committed one)."""
    import shutil

    from persona_agents.multihead.matcher import load_matcher

    copy = tmp_path / "adapter"
    shutil.copytree(REPO / "training" / "adapters" / "smollm2-npc-v3", copy)
    for name in ("matcher.safetensors", "matcher.json"):
        (copy / name).unlink()
    base = [sys.executable, "-m", "persona_agents", "fit-matcher", "--npcs-dir", str(GENERALIST / "npcs"),
            "--adapter", str(copy), "--quick", "--embedder", "embedded"]  # the mechanics: the fast sentence model
    done = subprocess.run([*base, "--dev-npcs", str(GENERALIST / "data" / "writer_d.jsonl"), "--dev-examples", "1,5"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):done.stdout.rindex("}") + 1])
    assert 0.1 <= summary["threshold"] <= 0.9 and len(summary["fold_best_epochs"]) == 4
    assert all(0.1 <= t <= 0.9 for t in summary["event_thresholds"].values())
    assert "knight_errant_crossroads" in summary["dev_npcs"] and 0.0 <= summary["dev_f1_after_rules"] <= 1.0
    assert set(summary["dev_f1_after_rules_by_examples_per_event"]) == {"1", "5"}
    assert load_matcher(copy) is None  # development mode saves nothing
    done = subprocess.run(base, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    model, meta = load_matcher(copy)
    assert "knight_errant_crossroads" in meta["heads_npcs"] and meta["training"]["turns"] > 0
    assert meta["embedder"] == "embedded" and model.dim == 384  # recorded: inference reads lines with it
    # An adapter whose heads learnt other turns cannot share it.
    other = tmp_path / "other"
    shutil.copytree(copy, other)
    meta_file = other / "multihead.json"
    other_meta = json.loads(meta_file.read_text())
    other_meta["training"]["heads_refit_data"]["files"] = other_meta["training"]["heads_refit_data"]["files"][:1]
    meta_file.write_text(json.dumps(other_meta))
    done = subprocess.run([*base, "--also-into", str(other)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1 and "--also-into" in done.stderr + done.stdout
