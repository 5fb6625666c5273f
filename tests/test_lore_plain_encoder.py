"""The plain encoder gives sentence-transformers' vectors for the embedded embedder, and
leaves every other kind of model folder to sentence-transformers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from persona_agents.lore.embedder import embedded_embedder_path, load_embedder
from persona_agents.lore.plain_encoder import PlainSentenceEncoder, load_plain_encoder, plain_stack

TEXTS = ["Jason went to a party in the old factory and never came home.", "Brann forges swords.",
         "Hello", "", "A much longer line about the hidden path behind the waterfall, " * 12]


def test_embedded_embedder_runs_without_sentence_transformers_and_matches_it():
    from sentence_transformers import SentenceTransformer

    folder, _ = embedded_embedder_path()
    embedder = load_embedder("embedded")
    assert isinstance(embedder.model, PlainSentenceEncoder) and embedder.dimension == 384
    reference = SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(
        TEXTS, batch_size=2, normalize_embeddings=True, convert_to_numpy=True)
    ours = embedder.encode(TEXTS, batch_size=3)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=2e-5)


@pytest.mark.parametrize("change", ["extra_module", "max_pooling", "query_prompt"])
def test_other_stacks_are_left_to_sentence_transformers(tmp_path, change):
    folder, _ = embedded_embedder_path()
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    if change == "extra_module":
        modules = json.loads((copy / "modules.json").read_text())
        modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
        (copy / "modules.json").write_text(json.dumps(modules))
    elif change == "max_pooling":
        config = json.loads((copy / "1_Pooling/config.json").read_text())
        config.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
        (copy / "1_Pooling/config.json").write_text(json.dumps(config))
    else:
        (copy / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: "}}))
    assert plain_stack(copy) is None and load_plain_encoder(str(copy)) is None


def test_lean_bert_matches_transformers_bert_and_imports_no_transformers():
    """The embedded encoder runs in LeanBert (no transformers import); its vectors are those
    of transformers' BertModel through the same pooling."""
    import subprocess
    import sys

    folder, _ = embedded_embedder_path()
    encoder = load_plain_encoder(str(folder))
    assert encoder.lean
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    import torch

    with torch.inference_mode():
        batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=encoder.max_length, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
        ours_ids = encoder.tokenizer(TEXTS)
    assert torch.equal(ours_ids["input_ids"], batch["input_ids"])
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=2), reference, atol=2e-5)
    code = ("import sys; from persona_agents.lore.embedder import load_embedder; "
            "load_embedder('embedded').encode(['hi']); print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_repeated_one_sentence_query_is_encoded_once():
    # A turn asks for its player line's vector up to three times (lore, writers' lines,
    # heads' evidence); only the first may wait for the compute thread.
    from persona_agents.lore.embedder import Embedder

    calls: list[list[str]] = []

    class Counting:
        def encode(self, texts, **kwargs):
            calls.append(list(texts))
            return np.array([[float(len(t)), 1.0] for t in texts])

    embedder = Embedder(name="counting", fingerprint="counting", model=Counting(), dimension=2, recent_size=2)
    first = embedder.encode(["Fix my sword?"])
    again = embedder.encode(["Fix my sword?"])
    np.testing.assert_array_equal(first, again)
    again[0, 0] = -1.0  # the caller's copy, not the cached row
    np.testing.assert_array_equal(embedder.encode(["Fix my sword?"]), first)
    assert calls == [["Fix my sword?"]]
    embedder.encode(["a", "b"])  # batches are not cached
    embedder.encode(["a", "b"])
    embedder.encode(["one"])
    embedder.encode(["two"])  # the oldest query leaves the cache (size 2)
    embedder.encode(["Fix my sword?"])
    assert calls[-1] == ["Fix my sword?"] and len(calls) == 6
