"""The `multihead` generate step on the shipped adapter, through the real pipeline, and
`persona-agents eval --json`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from persona_agents.errors import AdapterError, StepError
from persona_agents.flags import DEFAULT_FLAGS
from persona_agents.manager import AgentManager
from persona_agents.multihead.matcher import blend

from .conftest import REPO

ADAPTER = REPO / "training" / "adapters" / "smollm2-npc"


def test_shipped_adapter_is_complete_and_small():
    from persona_agents.multihead.artifacts import read_metadata

    meta = read_metadata(ADAPTER)
    # The generalist heads (issue 26): the default eight events first, then the training world's own.
    assert meta["flags"][:8] == list(DEFAULT_FLAGS) and len(meta["flags"]) == 16
    assert meta["base"]["name"] == "embedded:smollm2-135m-instruct" and meta["heads"]["evidence_size"] == 34
    size = sum(p.stat().st_size for p in ADAPTER.rglob("*") if p.is_file())
    assert size < 10_000_000, f"the shipped adapter is {size / 1e6:.1f} MB"


@pytest.mark.model
def test_mother_turn_has_deltas_probabilities_and_flags_that_follow_thresholds(sample_manager):
    thresholds = json.loads((ADAPTER / "multihead.json").read_text())["thresholds"]
    response = sample_manager.turn("mother_abandoned_factory", "I will find your son, I promise.",
                                   player_id="multihead-test", seed=1)
    assert (response.deltas.trust, response.deltas.relationship) != (0.0, 0.0)
    assert list(response.flag_probs) == list(DEFAULT_FLAGS)
    assert all(0.0 <= p <= 1.0 for p in response.flag_probs.values())
    # Silvia is among the heads' NPCs: the events her writers gave five or more example
    # player lines for are read by the heads and the event matcher together, against the
    # two thresholds' mean in log-odds (multihead/matcher.py, `blend`).
    both = set(response.meta["events_read_by_heads_and_matcher"])
    assert "end_conversation" in both and "events_read_by_matcher" not in response.meta
    matcher_threshold = json.loads((ADAPTER / "matcher.json").read_text())["threshold"]

    def threshold(name):
        return blend(0.5, thresholds[name], 0.5, matcher_threshold)[1] if name in both else thresholds[name]

    proposed = {name for name, p in response.flag_probs.items() if p >= threshold(name)}
    # The game's rules (postprocess) may refuse a proposed flag; none appears from nowhere.
    assert {f.name for f in response.flags} | {f.name for f in response.flags_rejected} == proposed
    assert response.meta["adapter"] == "training/adapters/smollm2-npc"
    assert response.meta["thresholds_version"] and "state_heads" not in response.meta
    assert response.text and "<" not in response.text


def test_multihead_needs_the_sectioned_prompt(npc_folder):
    npc_folder("anna", pipeline={"prompt": ["chat_template"],
                                 "generate": [{"name": "multihead", "options": {"adapter": str(ADAPTER)}}]})
    with pytest.raises(StepError, match=r"needs the sectioned prompt .* Set `prompt: \[sectioned\]`"):
        AgentManager(npc_folder.folder).turn("anna", "Hello")


def test_relative_adapter_paths_resolve_against_the_project_root(npc_folder):
    npc_folder("anna", pipeline={"prompt": ["sectioned"],
                                 "generate": [{"name": "multihead", "options": {"adapter": "adapters/mine"}}]})
    with pytest.raises(AdapterError, match=str(npc_folder.folder.parent / "adapters" / "mine") + " does not exist"):
        AgentManager(npc_folder.folder).turn("anna", "Hello")


@pytest.mark.model
def test_eval_json_reports_the_figures_and_a_baseline(tmp_path):
    from persona_agents.cli import main

    subset = tmp_path / "val.jsonl"
    lines = (REPO / "training/data/validation.jsonl").read_text(encoding="utf-8").splitlines()[:6]
    subset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["eval", "--data", str(subset), "--adapter", str(ADAPTER), "--json",
                                       "--no-base-lm", "--npcs-dir", str(REPO / "npcs")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("flag_micro_f1", "flag_macro_f1", "delta_mae_trust", "delta_mae_relationship", "n_examples",
                "lm_loss", "per_flag", "baseline"):
        assert key in report
    assert report["n_examples"] == 6 and set(DEFAULT_FLAGS) <= set(report["per_flag"])
    assert {"flag_micro_f1", "delta_mae_trust"} <= set(report["baseline"])


def test_eval_reports_bad_data_without_a_traceback(tmp_path):
    from persona_agents.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"npc_id": "x"}\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["eval", "--data", str(bad), "--adapter", str(ADAPTER)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{bad}:1: tags: missing" in result.output


@pytest.mark.model
def test_the_heads_run_once_a_turn_when_the_game_decides_after_the_prompt_pass(sample_manager, monkeypatch):
    # Decide, then speak: the heads' output read for the decision is the turn's; reading
    # the <STATE> row again would cost another trip to the compute thread.
    from persona_agents.multihead.reader import HeadsReader

    calls = []
    read = HeadsReader.read
    monkeypatch.setattr(HeadsReader, "read",
                        lambda self, row, evidence=None: calls.append(1) or read(self, row, evidence))
    response = sample_manager.turn("blacksmith_village_center", "Can you mend my broken sword?",
                                   player_id="heads-once", seed=3)
    assert response.meta["engine"] == "fast" and len(calls) == 1
    assert set(response.flag_probs) and response.meta["timings_ms"]["generate"] > 0
