"""Shared pieces of the lore tests (test_lore_*.py).

One real embedder and one index of the sample lore per test session, whichever lore
test file runs first; indexes are written into temporary cache folders, never into the
user's cache. Plain cached functions rather than fixtures so every lore test file shares
the same objects.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import yaml

from persona_agents.lore.embedder import EmbedderRegistry
from persona_agents.lore.scope import LoreFacts
from persona_agents.runtime import Runtime
from persona_agents.turn import GameContext, NpcState, Turn

from .conftest import NPCS_DIR, PLUGINS_DIR


@lru_cache(maxsize=1)
def shared_embedders() -> EmbedderRegistry:
    registry = EmbedderRegistry()
    registry.get("embedded")
    return registry


def runtime_for(npcs_dir: Path, cache_dir: Path) -> Runtime:
    """A runtime over `npcs_dir` writing indexes into `cache_dir`, with the shared embedder."""
    return Runtime(npcs_dir=Path(npcs_dir), cache_dir=Path(cache_dir), embedders=shared_embedders())


@lru_cache(maxsize=1)
def sample_runtime() -> Runtime:
    """The sample NPC folder with its index built once, in a temporary cache."""
    cache = Path(tempfile.mkdtemp(prefix="lore-test-cache-"))
    atexit.register(shutil.rmtree, cache, True)
    runtime = runtime_for(NPCS_DIR, cache)
    runtime.lore.index(NPCS_DIR, runtime.embedders.get("embedded"), runtime.cache_dir)
    return runtime


def sample_index():
    runtime = sample_runtime()
    return runtime.lore.index(NPCS_DIR, runtime.embedders.get("embedded"), runtime.cache_dir)


@lru_cache(maxsize=1)
def sample_personas():
    from persona_agents.persona_loader import load_personas
    from persona_agents.plugins import load_plugins

    return load_personas(NPCS_DIR, load_plugins(PLUGINS_DIR).registry)


def make_turn(persona, utterance: str, stage: str | None = None, stored_stage: str = "not_started", history=(),
              trust: float = 0.3, relationship: float = 0.0, items=(), actions=()) -> Turn:
    return Turn(
        npc_id=persona.id,
        player_id="player",
        utterance=utterance,
        persona=persona,
        state=NpcState(trust=trust, relationship=relationship, mood="neutral", quest_stage=stored_stage),
        context=GameContext(quest_stage=stage, items=tuple(items), actions=tuple(actions)),
        history=tuple(history),
    )


def all_open(item) -> LoreFacts:
    """Facts under which every stage and gate of `item` holds: only knowledge and scope
    decide, as leakage tests between NPCs need."""
    entry = item.entry
    return LoreFacts(stage=entry.stages[0] if entry.stages else "in_progress", trust=1.0, relationship=1.0,
                     items=frozenset(entry.requires_items), actions=frozenset(entry.requires_actions))


def write_lore(folder: Path, name: str, entries: list[dict], **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**top, "entries": entries}, sort_keys=False))
    return path
