"""Shared services handed to every step: settings, loaded models and embedders, lore.

Paths a persona names (an adapter folder, a local model checkpoint) are the game's, not
the shell's: a relative one resolves against the *game folder*, the parent of the
persona folder (`npcs/`'s parent), whatever the working directory is. Absolute paths
and the `embedded` keyword stay as they are (`Runtime.path`, `Runtime.model_ref`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .lore.embedder import EmbedderRegistry
from .lore.retrieval import LoreRegistry
from .models import EMBEDDED_ALIASES, ModelRegistry, cache_dir

#: Prefixes that always mean a path, even where nothing exists there yet.
_EXPLICIT_PATH = ("./", "../", ".\\", "..\\", "~")


def game_dir(npcs_dir: str | Path) -> Path:
    """The game folder of a persona folder: its parent, absolute (so `--npcs-dir .` run
    inside `npcs/` still means the project root, not `npcs/` itself)."""
    return Path(os.path.abspath(npcs_dir)).parent


def is_keyword(ref: str) -> bool:
    """`embedded`, `embedded:<name>` and the embedded model's aliases: names, not paths."""
    return ref in EMBEDDED_ALIASES or ref == "embedded" or ref.startswith("embedded:")


def _under(base: Path, ref: str | Path) -> Path:
    path = Path(ref).expanduser()
    return path if path.is_absolute() else base / path


def _model_under(base: Path, ref: str) -> str:
    if is_keyword(ref):
        return ref
    if looks_like_path(ref):
        return str(_under(base, ref))
    candidate = base / ref
    return str(candidate) if candidate.exists() else ref


def plugins_dir_of(npcs_dir: str | Path, plugins_dir: str | Path | None = None) -> Path:
    """Where a game's local plugins live: `plugins_dir` if given, else `plugins/` in the
    game folder (beside the persona folder)."""
    return Path(plugins_dir) if plugins_dir is not None else game_dir(npcs_dir) / "plugins"


def resolve_game_path(ref: str | Path, npcs_dir: str | Path) -> Path:
    """A file or folder a persona names (always a path): absolute as given, else under
    the game folder."""
    return _under(game_dir(npcs_dir), ref)


def looks_like_path(ref: str) -> bool:
    """Whether a model reference is a path whatever exists: absolute, or ./ ../ ~."""
    return Path(ref).is_absolute() or ref.startswith(_EXPLICIT_PATH) or ref in (".", "..")


def resolve_model_ref(ref: str, npcs_dir: str | Path) -> str:
    """A model reference as a loader takes it: a keyword (`embedded`) or an absolute path
    unchanged; `./x`, `../x` or a relative path that exists in the game folder, that path
    under the game folder; anything else (`org/model`) a model id, unchanged."""
    return _model_under(game_dir(npcs_dir), ref)


@dataclass
class Runtime:
    npcs_dir: Path
    cache_dir: Path = field(default_factory=cache_dir)
    models: ModelRegistry = field(default_factory=ModelRegistry)
    #: Sentence embedders, one per configured name, shared by all NPCs.
    embedders: EmbedderRegistry = field(default_factory=EmbedderRegistry)
    #: Lore folders and their indexes, shared by all NPCs.
    lore: LoreRegistry = field(default_factory=LoreRegistry)
    #: The game folder (the persona folder's parent, absolute): what relative paths in
    #: personas resolve against. Fixed when the runtime is made.
    game_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.game_dir = game_dir(self.npcs_dir)

    def path(self, ref: str | Path) -> Path:
        """A path option (an adapter folder): absolute as given, else under the game folder."""
        return _under(self.game_dir, ref)

    def model_ref(self, ref: str) -> str:
        """A model option (keyword, model id or local path), with a local path resolved
        against the game folder (see `resolve_model_ref`)."""
        return _model_under(self.game_dir, ref)
