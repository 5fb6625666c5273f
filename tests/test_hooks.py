"""Every hook has a test_hook_<name>, and every hook is documented in docs/plugins.md."""

from __future__ import annotations

import inspect
import re

import pytest

from persona_agents import hookspecs
from persona_agents.errors import InputError
from persona_agents.manager import AgentManager
from persona_agents.plugins import HOOK_NAMES, load_plugins

from .conftest import REPO
from .plugins import shouting, turn_tracer


def _hook_names() -> list[str]:
    return sorted(n for n, f in vars(hookspecs).items() if inspect.isfunction(f) and hasattr(f, "persona_agents_spec"))


def test_hook_names_constant_matches_the_specs():
    assert sorted(HOOK_NAMES) == _hook_names()


def test_every_hook_has_a_test():
    tests = {n for n in globals() if n.startswith("test_hook_")}
    assert {f"test_hook_{n}" for n in _hook_names()} <= tests


def test_every_hook_is_documented_with_its_signature():
    readme = (REPO / "docs" / "plugins.md").read_text()
    for name in _hook_names():
        # the parameters as a plugin writes them (the spec's type annotations left out)
        signature = f"{name}({', '.join(inspect.signature(getattr(hookspecs, name)).parameters)})"
        assert re.search(re.escape(signature), readme), f"docs/plugins.md does not document `{signature}`"


@pytest.fixture
def traced_manager(npc_folder):
    turn_tracer.EVENTS.clear()
    npc_folder("anna")
    npc_folder("bert", pipeline={
        "preprocess": ["normalize_input", {"name": "shout", "options": {"exclaim": 2}}],
        "prompt": ["chat_template"], "generate": ["transformers"],
    })
    host = load_plugins(None, extra=[("turn_tracer", turn_tracer), ("shouting", shouting)])
    try:
        yield AgentManager(npc_folder.folder, host=host)
    finally:
        host.pm.unregister(turn_tracer)
        host.pm.unregister(shouting)


def test_hook_register_steps(traced_manager):
    # A step registered by a plugin is used by the NPC that names it, and only by it.
    bert = traced_manager.turn("bert", "hello there", seed=1)
    anna = traced_manager.turn("anna", "hello there", seed=1)
    assert bert.meta["steps"]["preprocess"] == ["normalize_input", "shout"]
    assert anna.meta["steps"]["preprocess"] == ["normalize_input"]
    assert ("before", "bert", "hello there") in turn_tracer.EVENTS


def test_hook_run_turn(traced_manager):
    response = traced_manager.turn("anna", "  hi   you ", seed=3)
    kinds = [e[0] for e in turn_tracer.EVENTS]
    assert kinds == ["before", "after", "completed"]
    assert response.meta["traced"] is True  # the wrapper changed the result
    turn_tracer.EVENTS.clear()
    with pytest.raises(InputError):
        traced_manager.turn("anna", "   ", seed=3)
    assert [e[0] for e in turn_tracer.EVENTS] == ["before", "error"]  # wrappers see failures too


def test_hook_turn_completed(traced_manager):
    response = traced_manager.turn("anna", "hello", seed=5)
    assert turn_tracer.EVENTS[-1] == ("completed", "anna", response.text)
