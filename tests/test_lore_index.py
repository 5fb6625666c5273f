"""The on-disk lore index: incremental updates, reuse, and corrupt or mismatched files."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from persona_agents.default_plugins.lore_steps import FaissLore
from persona_agents.lore.entries import LoreFolder
from persona_agents.lore.index import INDEX_FILE, MANIFEST_FILE, LoreIndex, index_dir
from persona_agents.lore.retrieval import semantic_search
from persona_agents.models import CACHE_ENV, cache_dir

from .lore_support import make_turn, runtime_for, sample_personas, write_lore

NPC = "anna"
ENTRIES = [
    {"id": "w_river", "text": "The river floods every spring and the ferry stops.", "scope": "world"},
    {"id": "w_bakery", "text": "The bakery sells honey bread on market days.", "scope": "world"},
    {"id": "a_key", "text": "Anna hides the chapel key under the loose stone by the well.", "scope": "npc",
     "known_by": [NPC]},
]


class Knows:
    lore = ["town"]
    factions: list[str] = []


@pytest.fixture
def small(tmp_path, monkeypatch):
    """A three-entry NPC folder and a temporary cache (also through the environment)."""
    npcs = tmp_path / "npcs"
    write_lore(npcs / "lore", "town", ENTRIES)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return npcs


def open_index(npcs):
    """The index as a step gets it in a new process: synced on first use."""
    runtime = runtime_for(npcs, cache_dir())
    return runtime.lore.index(npcs, runtime.embedders.get("embedded"), runtime.cache_dir)


def first_sync(npcs, **options):
    """What the first sync of a new process does (its report)."""
    embedder = runtime_for(npcs, cache_dir()).embedders.get("embedded")
    index = LoreIndex(LoreFolder(npcs / "lore"), embedder, index_dir(cache_dir(), npcs, embedder.name), npcs)
    return index.sync(**options)


def top(index, query):
    return [h.item.id for h in semantic_search(index, query, NPC, Knows, None, k=1)]


def test_first_use_builds_then_later_processes_reuse_the_index(small):
    index = open_index(small)
    assert (index.directory / INDEX_FILE).is_file() and (index.directory / MANIFEST_FILE).is_file()
    assert str(index.directory).startswith(str(cache_dir()))
    manifest = json.loads((index.directory / MANIFEST_FILE).read_text())
    assert manifest["embedder"].startswith("embedded:all-minilm-l6-v2@") and manifest["dimension"] == 384
    assert set(manifest["entries"]) == {"w_river", "w_bakery", "a_key"}
    assert all(len(rec["sha256"]) == 64 for rec in manifest["entries"].values())
    report = first_sync(small)  # a new process: everything reused from disk
    assert (report.embedded, report.reused, report.removed, report.created, report.rebuilt_because) == (
        0, 3, 0, False, None)


def test_only_new_and_changed_entries_are_embedded(small):
    index = open_index(small)
    assert top(index, "Where is the chapel key?") == ["a_key"]
    changed = [ENTRIES[0], {**ENTRIES[1], "text": "The bakery burned down last winter."},
               {"id": "w_smith", "text": "The smith shoes horses at dawn.", "scope": "world"}]
    write_lore(small / "lore", "town", changed)
    report = first_sync(small)
    assert (report.embedded, report.reused, report.removed) == (2, 1, 1)
    assert top(index, "What happened to the bakery?") == ["w_bakery"]  # the running index caught up too
    assert top(index, "Where is the chapel key?") != ["a_key"]  # removed entries are gone


def test_a_changed_sample_lore_file_changes_the_next_turn(sample_npcs_copy, monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    silvia = sample_personas()["mother_abandoned_factory"].persona
    step = FaissLore(FaissLore.Options(k=3), silvia, runtime_for(sample_npcs_copy, cache_dir()))
    question = "Did Jason have a pet?"
    assert "silvia_jason_dog" not in [c.id for c in step.run(make_turn(silvia, question)).lore]

    path = sample_npcs_copy / "lore" / "silvia.yaml"
    data = yaml.safe_load(path.read_text())
    data["entries"].append({"id": "silvia_jason_dog", "text": "Jason had a pet dog, a grey hound called Ash, "
                            "who still waits by the door.", "scope": "npc", "known_by": [silvia.id]})
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    turn = step.run(make_turn(silvia, question))  # no rebuild asked for
    assert turn.lore[0].id == "silvia_jason_dog"
    assert turn.meta["lore"][0]["id"] == "silvia_jason_dog"


def corrupt_index(directory):
    (directory / INDEX_FILE).write_bytes(b"not a faiss index")


def truncate_index(directory):
    data = (directory / INDEX_FILE).read_bytes()
    (directory / INDEX_FILE).write_bytes(data[: len(data) // 2])


def broken_manifest(directory):
    (directory / MANIFEST_FILE).write_text('{"format_version": 1, "entr')


def other_dimension(directory):
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["dimension"] = 768
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


def other_embedder(directory):
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["embedder"] = "sentence-transformers/all-mpnet-base-v2"
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


def lost_manifest(directory):
    (directory / MANIFEST_FILE).unlink()


@pytest.mark.parametrize("damage, reason", [
    (corrupt_index, "index.faiss does not match the hash in its manifest"),
    (truncate_index, "index.faiss does not match the hash in its manifest"),
    (broken_manifest, "its manifest cannot be read"),
    (other_dimension, "it was built with dimension 768, this run needs 384"),
    (other_embedder, "it was built with embedder 'sentence-transformers/all-mpnet-base-v2'"),
    (lost_manifest, "its manifest cannot be read"),
])
def test_a_damaged_or_mismatched_index_is_rebuilt_with_a_message(small, caplog, damage, reason):
    directory = open_index(small).directory
    damage(directory)
    with caplog.at_level(logging.WARNING, logger="persona_agents.lore"):
        index = open_index(small)
    messages = [r.getMessage() for r in caplog.records if r.name == "persona_agents.lore"]
    assert any("is not usable (" + reason in m and m.endswith("rebuilding it.") for m in messages), messages
    assert top(index, "Where is the chapel key?") == ["a_key"]
    assert first_sync(small).embedded == 0  # the rebuilt files are good again


def test_first_build_and_rebuild_on_request_embed_everything(small):
    report = first_sync(small)
    assert (report.embedded, report.created, report.rebuilt_because) == (3, True, None)
    report = first_sync(small, rebuild=True)
    assert (report.embedded, report.rebuilt_because) == (3, "a rebuild was asked for")


def test_no_temporary_files_are_left_behind(small):
    directory = open_index(small).directory
    assert sorted(p.name for p in directory.iterdir()) == [".lock", INDEX_FILE, MANIFEST_FILE]
