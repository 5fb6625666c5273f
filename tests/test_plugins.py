"""Plugin discovery: built-ins, entry points, the local folder, the allow-list, and loud failures."""

from __future__ import annotations

import sys
import textwrap

import pytest

from persona_agents.errors import PluginError
from persona_agents.plugins import ALLOW_LIST_ENV, DEFAULT_PLUGINS, load_plugins

from .conftest import PLUGINS_DIR
from .plugins import duplicate_step, misspelled_hook, shouting


def test_builtin_steps_are_registered_by_builtin_plugins():
    host = load_plugins(None)
    by_name = {s.name: s for s in host.registry.all()}
    assert by_name["normalize_input"].plugin == "normalize"
    assert by_name["transformers"].stage == "generate"
    assert {"chat_template", "sectioned"} <= set(host.registry.names("prompt"))
    assert [p.name for p in host.plugins][: len(DEFAULT_PLUGINS)] == [m.rsplit(".", 1)[-1] for m in DEFAULT_PLUGINS]


def test_local_plugins_folder_is_loaded():
    host = load_plugins(PLUGINS_DIR)
    info = host.registry.get("catchphrase")
    assert info is not None and info.stage == "postprocess" and info.plugin == "catchphrase"
    assert any(p.name == "catchphrase" and p.source.endswith("plugins/catchphrase.py") for p in host.plugins)


def test_duplicate_step_names_fail_naming_both_plugins():
    with pytest.raises(PluginError) as info:
        load_plugins(None, extra=[("duplicate_step", duplicate_step)])
    assert str(info.value).startswith(
        "Duplicate step name 'normalize_input': registered by plugin 'normalize' and by plugin 'duplicate_step'."
    )


def test_misspelled_hook_fails_at_load():
    with pytest.raises(PluginError) as info:
        load_plugins(None, extra=[("misspelled_hook", misspelled_hook)])
    message = str(info.value)
    assert "Plugin 'misspelled_hook' implements an unknown hook" in message
    assert "register_step" in message and "Known hooks: register_steps, run_turn, turn_completed" in message


def test_allow_list_restricts_local_plugins(tmp_path, monkeypatch):
    (tmp_path / "extra_steps.py").write_text(textwrap.dedent(shouting.__loader__.get_source(shouting.__name__)))
    assert load_plugins(tmp_path).registry.get("shout") is not None
    monkeypatch.setenv(ALLOW_LIST_ENV, "someone_else")
    host = load_plugins(tmp_path)
    assert host.registry.get("shout") is None
    assert host.registry.get("normalize_input") is not None  # built-ins always load


def test_broken_local_plugin_names_its_file(tmp_path):
    (tmp_path / "broken.py").write_text("import does_not_exist_anywhere\n")
    with pytest.raises(PluginError) as info:
        load_plugins(tmp_path)
    assert f"Local plugin {tmp_path / 'broken.py'} failed to import: ModuleNotFoundError" in str(info.value)


def test_pip_installed_plugin_registers_through_the_entry_point_group(tmp_path, monkeypatch):
    # A real installed distribution on sys.path: its metadata declares the entry point.
    (tmp_path / "pa_fancy_steps.py").write_text(shouting.__loader__.get_source(shouting.__name__))
    dist = tmp_path / "pa_fancy_steps-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pa-fancy-steps\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[persona_agents]\nfancy = pa_fancy_steps\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        host = load_plugins(None)
        assert host.registry.get("shout").plugin == "fancy"
        assert any(p.name == "fancy" and p.source == "entry point pa_fancy_steps" for p in host.plugins)
        monkeypatch.setenv(ALLOW_LIST_ENV, "catchphrase")
        assert load_plugins(None).registry.get("shout") is None
    finally:
        sys.modules.pop("pa_fancy_steps", None)


def test_registering_a_non_step_is_rejected():
    class NotAStep:
        name = "x"

    class Plugin:
        @staticmethod
        def register_steps(register):
            register(NotAStep)

    from persona_agents import hookimpl

    Plugin.register_steps = hookimpl(Plugin.register_steps)
    with pytest.raises(PluginError, match="which is not a persona_agents.steps.Step subclass"):
        load_plugins(None, extra=[("bad", Plugin)])
