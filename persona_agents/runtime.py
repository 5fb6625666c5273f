"""Shared services handed to every step: settings, loaded models and embedders, lore."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .lore.embedder import EmbedderRegistry
from .lore.retrieval import LoreRegistry
from .models import ModelRegistry, cache_dir


@dataclass
class Runtime:
    npcs_dir: Path
    cache_dir: Path = field(default_factory=cache_dir)
    models: ModelRegistry = field(default_factory=ModelRegistry)
    #: Sentence embedders, one per configured name, shared by all NPCs.
    embedders: EmbedderRegistry = field(default_factory=EmbedderRegistry)
    #: Lore folders and their indexes, shared by all NPCs.
    lore: LoreRegistry = field(default_factory=LoreRegistry)
