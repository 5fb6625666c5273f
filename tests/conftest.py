"""Shared fixtures: the real sample NPCs, temporary NPC folders, a tiny random model."""

from __future__ import annotations

import inspect
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
NPCS_DIR = REPO / "npcs"
PLUGINS_DIR = REPO / "plugins"
SAMPLE_NPC_IDS = (
    "mother_abandoned_factory",
    "blacksmith_village_center",
    "guard_city_gate",
    "merchant_traveling",
    "hermit_forest",
    "uncle_hideout",
)

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Test tiers (`make test-fast` leaves these markers out), set by where a test leads rather
#: than by hand: its fixtures (with the fixtures they use) and the names in the code of the
#: test, of those fixtures and of the test helpers they call (functions of this tests
#: package, followed through). A test gets a marker when it reaches every name of one of
#: the marker's sets.
LEADS: dict[str, tuple[frozenset[str], ...]] = {
    "model": (
        frozenset({"sample_manager"}),  # the real sample NPCs on the real embedded model
        frozenset({"sample_npcs_copy", "AgentManager"}),  # a manager over a copy of them
        # NPCs whose generate step names no model, so the embedded one: test_hooks' "bert",
        # test_state_store's pipelines
        frozenset({"traced_manager"}),
        frozenset({"pipeline_with"}),
    ),
    # a `persona-agents serve` process
    "server": (frozenset({"start_cli_server"}), frozenset({"shared_tiny_server"})),
    # the CLI or Python in a child process (server processes included)
    "subprocess": (frozenset({"subprocess"}),),
}


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def reached_names(item: pytest.Item) -> set[str]:
    """Fixture names of `item` and the global and attribute names its code reaches."""
    names = set(getattr(item, "fixturenames", ()))
    todo = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for name in names:
        for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ()):
            todo.append(fixturedef.func)
    seen: set[types.CodeType] = set()
    while todo:
        func = todo.pop()
        func = inspect.unwrap(getattr(func, "__func__", func)) if func is not None else None
        code = getattr(func, "__code__", None)
        if code is None or code in seen:
            continue
        seen.add(code)
        module_globals = getattr(func, "__globals__", {})
        for nested in _code_objects(code):
            for name in nested.co_names:
                names.add(name)
                target = module_globals.get(name)
                if isinstance(target, types.FunctionType) and target.__module__.startswith(f"{__package__}."):
                    todo.append(target)
    return names


# -- where the suite's memory goes (issue 32: one pytest process peaked near 12 GB) ----------
#: (growth of the process's peak RSS in MB, test id), for the tests that raised the peak.
_PEAK_GROWTH: list[tuple[float, str]] = []


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    before = _peak_rss_mb()
    try:
        return (yield)
    finally:
        grown = _peak_rss_mb() - before
        if grown >= 100:
            _PEAK_GROWTH.append((grown, item.nodeid))


def pytest_terminal_summary(terminalreporter) -> None:
    """The tests that raised the process's peak memory most: a suite that grows towards the
    machine's size says here which tests to look at."""
    if not _PEAK_GROWTH:
        return
    top = sorted(_PEAK_GROWTH, reverse=True)[:8]
    terminalreporter.write_sep("-", f"peak memory {_peak_rss_mb():.0f} MB; the tests that raised it most")
    for grown, nodeid in top:
        terminalreporter.write_line(f"+{grown:7.0f} MB  {nodeid}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = reached_names(item)
        for marker, leads in LEADS.items():
            if any(lead <= names for lead in leads):
                item.add_marker(marker)


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for CLI subprocesses: the venv's scripts first on PATH."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama with the embedded model's tokenizer.

    For pipeline mechanics only: it runs the real transformers generate step in
    milliseconds; what a user sees is tested on the real model.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from persona_agents.models import embedded_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def persona_dict(npc_id: str, model: str, **overrides) -> dict:
    data = {
        "id": npc_id,
        "name": npc_id.title(),
        "role": "a test character.",
        "pipeline": {
            "preprocess": ["normalize_input"],
            "prompt": ["chat_template"],
            "generate": [{"name": "transformers", "options": {"model": model}}],
        },
        "generation": {"max_new_tokens": 8, "temperature": 0.7},
    }
    data.update(overrides)
    return data


@pytest.fixture
def npc_folder(tmp_path, tiny_model_dir):
    """Returns write(npc_id, **fields) -> Path, writing personas on the tiny model into tmp/npcs."""
    folder = tmp_path / "npcs"
    folder.mkdir()

    def write(npc_id: str, **overrides) -> Path:
        path = folder / f"{npc_id}.yaml"
        path.write_text(yaml.safe_dump(persona_dict(npc_id, str(tiny_model_dir), **overrides)))
        return path

    write.folder = folder
    return write


@pytest.fixture
def sample_npcs_copy(tmp_path) -> Path:
    """A writable copy of the sample NPC folder (and the example plugins beside it)."""
    shutil.copytree(NPCS_DIR, tmp_path / "npcs")
    shutil.copytree(PLUGINS_DIR, tmp_path / "plugins")
    return tmp_path / "npcs"


@pytest.fixture(scope="session")
def sample_manager():
    """One manager over the real sample NPCs on the real embedded model, shared by tests."""
    from persona_agents.manager import AgentManager

    return AgentManager(NPCS_DIR)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session (tests/postgres_support.py), or skip."""
    import os

    from .postgres_support import REQUIRE_ENV, PostgresServer, why_not_available

    reason = why_not_available()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL is required ({REQUIRE_ENV}=1) but {reason}")
        pytest.skip(f"PostgreSQL: {reason}")
    server = PostgresServer()
    yield server
    server.stop()
