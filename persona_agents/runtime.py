"""Shared services handed to every step: settings and the loaded models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .models import ModelRegistry, cache_dir


@dataclass
class Runtime:
    npcs_dir: Path
    cache_dir: Path = field(default_factory=cache_dir)
    models: ModelRegistry = field(default_factory=ModelRegistry)
