"""Where the model runs (issue 28): the generate steps' `device` and `load_in_4bit`
options. This machine has no GPU: the CPU paths run for real, and a GPU asked for where
there is none is a clear error naming the option and the fix."""

from __future__ import annotations

import pytest

from persona_agents.errors import PersonaAgentsError
from persona_agents.manager import AgentManager

from .conftest import persona_dict
from .test_sglang_engine import tiny_adapter, tiny_npcs  # noqa: F401  # the module's tiny adapter fixture


def test_device_auto_on_a_cpu_machine_is_the_cpu_and_keeps_the_fast_engine(tiny_adapter, tmp_path):  # noqa: F811
    turns = {}
    for name, options in (("auto", {"device": "auto"}), ("cpu", {"device": "cpu", "engine": "transformers"}),
                          ("default", {"decode_precision": "float32"})):
        manager = AgentManager(tiny_npcs(tmp_path / name, tiny_adapter, **options))
        turns[name] = manager.turn("anna", "Hello there, can you help me?", player_id="p", seed=1)
    assert turns["auto"].meta["engine"] == "fast" and turns["cpu"].meta["engine"] == "transformers"
    assert turns["cpu"].flag_probs == pytest.approx(turns["default"].flag_probs, abs=1e-4)
    assert turns["cpu"].text == turns["default"].text


def test_a_gpu_where_there_is_none_is_a_clear_error(tiny_adapter, tmp_path):  # noqa: F811
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the error is for machines without one")
    manager = AgentManager(tiny_npcs(tmp_path / "cuda", tiny_adapter, device="cuda", engine="transformers"))
    with pytest.raises(PersonaAgentsError, match=r"device 'cuda' is not available here: this machine has no CUDA "
                                                 r"device .*Use device: auto .* or device: cpu"):
        manager.turn("anna", "Hello?", player_id="p", seed=1)


def test_the_fast_engine_off_the_cpu_is_a_persona_error(tiny_adapter, tmp_path):  # noqa: F811
    with pytest.raises(PersonaAgentsError, match=r"engine 'fast' runs on the CPU only, but device is 'cuda:1'\. "
                                                 r"Use engine: transformers"):
        AgentManager(tiny_npcs(tmp_path / "fast", tiny_adapter, device="cuda:1", engine="fast")).turn(
            "anna", "Hello?", player_id="p", seed=1)
    with pytest.raises(PersonaAgentsError, match=r"device.*should match pattern"):
        AgentManager(tiny_npcs(tmp_path / "typo", tiny_adapter, device="gpu")).turn("anna", "Hi", player_id="p")


def test_four_bit_loading_needs_cuda_and_a_plain_model(tiny_adapter, tiny_model_dir, tmp_path):  # noqa: F811
    import yaml

    npcs = tmp_path / "plain" / "npcs"
    npcs.mkdir(parents=True)
    persona = persona_dict("anna", str(tiny_model_dir))
    persona["pipeline"]["generate"] = [{"name": "transformers",
                                        "options": {"model": str(tiny_model_dir), "load_in_4bit": True}}]
    (npcs / "anna.yaml").write_text(yaml.safe_dump(persona))
    with pytest.raises(PersonaAgentsError, match=r"load_in_4bit needs a CUDA device .* Drop load_in_4bit"):
        AgentManager(npcs).turn("anna", "Hello?", player_id="p", seed=1)
    with pytest.raises(PersonaAgentsError, match=r"load_in_4bit is not supported by the multihead step"):
        AgentManager(tiny_npcs(tmp_path / "mh", tiny_adapter, load_in_4bit=True)).turn(
            "anna", "Hello?", player_id="p", seed=1)


def test_heads_in_bfloat16_stay_within_the_stated_tolerance_of_float32(tmp_path):
    """The shipped adapter on the real model: the transformers engine in bfloat16 (the
    dtype of a GPU deployment) against the fast engine in float32, on one line per sample
    NPC. Measured on 2026-12-06: flag probabilities within 0.035, deltas within 0.0045,
    the same flags on all six; docs/models-and-engines.md states 0.1 and 0.02."""
    import shutil

    import yaml

    from .conftest import NPCS_DIR, REPO

    lines = [("blacksmith_village_center", "Can you fix my sword? I have the ore."),
             ("guard_city_gate", "Let me through or I'll gut you."), ("merchant_traveling", "What do you sell?"),
             ("hermit_forest", "Tell me about the grove."), ("mother_abandoned_factory", "I found Jason's jacket."),
             ("uncle_hideout", "Your sister sent me.")]
    turns = {}
    for name, options in (("float32", {"engine": "fast", "decode_precision": "float32"}),
                          ("bfloat16", {"engine": "transformers", "dtype": "bfloat16", "device": "auto"})):
        npcs = tmp_path / name / "npcs"
        shutil.copytree(NPCS_DIR, npcs)
        shutil.copytree(REPO / "plugins", tmp_path / name / "plugins")
        defaults = yaml.safe_load((npcs / "_defaults.yaml").read_text())
        defaults["generation"]["max_new_tokens"] = 4  # the heads read the prompt pass; the words do not matter here
        defaults["pipeline"]["generate"] = [{"name": "multihead", "options": {
            "adapter": str(REPO / "training/adapters/smollm2-npc"), **options}}]
        (npcs / "_defaults.yaml").write_text(yaml.safe_dump(defaults))
        manager = AgentManager(npcs)
        turns[name] = [manager.turn(npc, line, player_id="p", seed=1) for npc, line in lines]
    assert {t.meta["engine"] for t in turns["bfloat16"]} == {"transformers"}
    for full, half in zip(turns["float32"], turns["bfloat16"]):
        assert half.flag_probs == pytest.approx(full.flag_probs, abs=0.1)
        assert half.deltas.trust == pytest.approx(full.deltas.trust, abs=0.02)
        assert half.deltas.relationship == pytest.approx(full.deltas.relationship, abs=0.02)
    assert sum(f.flags == h.flags for f, h in zip(turns["float32"], turns["bfloat16"])) >= 5
