"""The blind review tool (issue 25): candidates shuffled per turn with their source
hidden, a key kept apart, automatic figures, and scores unblinded per configuration."""

from __future__ import annotations

import json

import pytest

from persona_agents.review import ReviewError, format_table, make_packet, unblind


def write_turns(path, n=4):
    rows = [{"npc_id": "smith", "tags": {"quest_stage": "not_started", "trust": 0.3, "relationship": 0.0},
             "context": [], "player_utterance": f"Hello number {i}.", "response": f"Reference reply {i}.",
             "delta": [0.0, 0.0], "flag": []} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_packet_hides_the_sources_and_the_scores_unblind(npc_folder, tmp_path):
    npc_folder("smith")
    data = write_turns(tmp_path / "heldout.jsonl")
    out = tmp_path / "review"
    auto = make_packet(data, [("free", npc_folder.folder)], out, turns=4, seed=3, reference=True)
    packet = (out / "packet.md").read_text()
    key = json.loads((out / "key.json").read_text())
    assert "free" not in packet and "reference" not in packet.split("## Turn 1")[1]  # sources hidden
    assert len(key) == 4 and all(sorted(row[k] for k in "AB") == ["free", "reference"] for row in key)
    assert {row["A"] for row in key} == {"free", "reference"}  # the order is shuffled per turn
    assert auto["free"]["turns"] == 4 and "out_of_world_replies" in auto["free"]
    # Reviewer 1 ships only the reference; reviewer 2 ships everything.
    r1 = [{"turn": row["turn"], "candidate": letter, "sense": 5 if row[letter] == "reference" else 2,
           "character": 4, "ship": row[letter] == "reference"} for row in key for letter in "AB"]
    r2 = [dict(s, ship=True, sense=4) for s in r1]
    (tmp_path / "r1.json").write_text(json.dumps(r1))
    (tmp_path / "r2.json").write_text(json.dumps(r2))
    table = unblind(out / "key.json", [tmp_path / "r1.json", tmp_path / "r2.json"])
    assert table["reference"]["ship_share"] == 1.0 and table["free"]["ship_share"] == 0.5
    assert table["reference"]["sense"] == 4.5 and table["free"]["sense"] == 3.0
    assert table["free"]["per_reviewer"][1]["ship"] == 0 and table["free"]["per_reviewer"][2]["ship"] == 4
    assert "| free | 3.0 | 4.0 | 50% |" in format_table(table)


def test_review_errors_name_what_to_fix(npc_folder, tmp_path):
    npc_folder("smith")
    data = write_turns(tmp_path / "heldout.jsonl", n=2)
    with pytest.raises(ReviewError, match="at least two candidates"):
        make_packet(data, [("free", npc_folder.folder)], tmp_path / "o", turns=2)
    with pytest.raises(ReviewError, match="asked for 5"):
        make_packet(data, [("free", npc_folder.folder)], tmp_path / "o", turns=5, reference=True)
    (tmp_path / "key.json").write_text(json.dumps([{"turn": 1, "A": "free"}]))
    (tmp_path / "bad.json").write_text(json.dumps([{"turn": 1, "candidate": "C", "sense": 3}]))
    with pytest.raises(ReviewError, match="entry 0"):
        unblind(tmp_path / "key.json", [tmp_path / "bad.json"])
