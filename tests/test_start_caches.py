"""The caches that make a process start fast: adapters merged into their base, and packed
quantized weights. Each gives exactly what the slow path gives, never a stale entry, and
survives a damaged file."""

from __future__ import annotations

import pytest
import torch

from persona_agents.fastpath import packcache

from .conftest import REPO

ADAPTER = REPO / "training" / "adapters" / "smollm2-npc"


def test_packed_weights_come_back_from_disk(tmp_path):
    calls = []

    def pack(w):
        calls.append(1)
        return {"double": w * 2}

    weight = torch.randn(32, 64)
    first = packcache.cached("test", weight, pack, folder=tmp_path)
    second = packcache.cached("test", weight.clone(), pack, folder=tmp_path)
    assert len(calls) == 1 and torch.equal(first["double"], second["double"])
    changed = weight.clone()
    changed[5, 7] += 1e-3  # any change to the weights: a new entry
    packcache.cached("test", changed, pack, folder=tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("test-*.safetensors"))) == 2


def test_a_damaged_packed_entry_is_packed_again(tmp_path):
    weight = torch.randn(16, 32)
    packcache.cached("test", weight, lambda w: {"w": w}, folder=tmp_path)
    (entry,) = tmp_path.glob("test-*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    again = packcache.cached("test", weight, lambda w: {"w": w + 1}, folder=tmp_path)
    assert torch.equal(again["w"], weight + 1)


@pytest.mark.model
def test_cached_merge_is_the_peft_merge(tmp_path, monkeypatch):
    from persona_agents.fastpath.compute import on_compute_thread
    from persona_agents.multihead import merged_cache
    from persona_agents.multihead.artifacts import load_adapter

    monkeypatch.setattr(merged_cache, "cache_dir", lambda: tmp_path)
    fresh = on_compute_thread(load_adapter, ADAPTER)  # peft merges and writes the entry
    (entry,) = (tmp_path / "merged").glob("*.safetensors")
    cached = on_compute_thread(load_adapter, ADAPTER)
    want, got = fresh.model.state_dict(), cached.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    names = {m: n for n, m in fresh.model.named_modules()}
    cached_names = {m: n for n, m in cached.model.named_modules()}
    assert {names[m]: [t.sum().item() for t in f[:2]] + [f[2]] for m, f in fresh.low_rank.items()} == \
        {cached_names[m]: [t.sum().item() for t in f[:2]] + [f[2]] for m, f in cached.low_rank.items()}
    assert len(cached.low_rank) == 60  # q and v of 30 layers

    entry.write_bytes(entry.read_bytes()[:1000])  # damaged: merged again by peft, same result
    again = on_compute_thread(load_adapter, ADAPTER)
    assert all(torch.equal(want[k], v) for k, v in again.model.state_dict().items())
