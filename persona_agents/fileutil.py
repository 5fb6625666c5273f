"""File helpers shared by the caches and loaders: a cross-process lock, an atomic write,
JSON and YAML reading."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock held through `path`, so processes that start together (tests,
    server replicas) never build the same cache twice at once. `filelock` (the lock the
    Hugging Face caches use) works on every platform, where `fcntl` is Unix-only."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path):
    """A UTF-8 JSON file's content (config files of model and tokenizer folders)."""
    return json.loads(path.read_text(encoding="utf-8"))


def load_yaml(text: str):
    """`yaml.safe_load`, parsed by libyaml when PyYAML has it (about 10x faster; persona and
    lore files are parsed at every start). A document libyaml rejects is parsed again by
    the pure-Python parser, so errors keep PyYAML's own messages and line numbers."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", None)
    if loader is not None:
        try:
            return yaml.load(text, Loader=loader)  # noqa: S506 - CSafeLoader is the safe loader
        except yaml.YAMLError:
            pass
    return yaml.safe_load(text)
