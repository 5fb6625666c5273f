"""Model resolution, the embedded checkpoint, sharing, and clear load errors."""

from __future__ import annotations

import json

import pytest

from persona_agents.errors import ModelLoadError
from persona_agents.manager import AgentManager
from persona_agents.models import EMBEDDED_MODEL, ModelRegistry, embedded_checkpoint, resolve_model


def test_embedded_checkpoint_is_a_normal_transformers_checkpoint():
    path = embedded_checkpoint()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    assert (path / "tokenizer.json").is_file()
    assert resolve_model("embedded") == (str(path), EMBEDDED_MODEL)
    assert resolve_model("some/hub-id") == ("some/hub-id", "some/hub-id")


def test_unknown_model_gives_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        ModelRegistry().get(str(tmp_path / "no-such-model"))
    message = str(info.value)
    assert f"Cannot load model '{tmp_path / 'no-such-model'}'" in message
    assert "embedded:smollm2-135m-instruct" in message


def test_npcs_on_the_same_model_share_one_loaded_copy(npc_folder):
    npc_folder("anna")
    npc_folder("bert", generation={"max_new_tokens": 4, "temperature": 0.0})
    manager = AgentManager(npc_folder.folder)
    manager.warm_up("anna")
    manager.warm_up("bert")
    gen_a = manager.pipeline("anna").steps["generate"][0]
    gen_b = manager.pipeline("bert").steps["generate"][0]
    assert gen_a.loaded is gen_b.loaded
    assert len(manager.runtime.models.loaded()) == 1


def test_tiny_model_turn_runs_every_stage_and_respects_max_new_tokens(npc_folder):
    npc_folder("anna", generation={"max_new_tokens": 5, "temperature": 0.0})
    manager = AgentManager(npc_folder.folder)
    response = manager.turn("anna", "hello", seed=0)
    assert response.meta["new_tokens"] <= 5
    assert response.meta["steps"]["generate"] == ["transformers"]
    again = AgentManager(npc_folder.folder).turn("anna", "hello", seed=0)
    assert again.text == response.text


def test_managers_of_one_process_share_models_but_a_changed_adapter_is_reloaded(npc_folder, tmp_path):
    # One process-wide registry (issue 32: each manager loading its own copy grew a test
    # process to 10-12 GB); an adapter refitted in place must not be served stale.
    import os

    from persona_agents.default_plugins.multihead_generator import adapter_stamp

    npc_folder("anna")
    first, second = AgentManager(npc_folder.folder), AgentManager(npc_folder.folder)
    first.warm_up("anna")
    second.warm_up("anna")
    assert first.pipeline("anna").steps["generate"][0].loaded is second.pipeline("anna").steps["generate"][0].loaded
    assert second.runtime.models.loaded() == first.runtime.models.loaded()

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "heads.safetensors").write_bytes(b"one")
    before = adapter_stamp(adapter)
    (adapter / "heads.safetensors").write_bytes(b"two!")
    os.utime(adapter / "heads.safetensors", ns=(1, 1))
    assert adapter_stamp(adapter) != before
