"""What a studio plans by (issue 26): NPCs held out of the heads refit, on cached vectors.

    python training/generalist/folds.py --adapter training/adapters/smollm2-npc [--quick] [--out folds.json]

A LoRA retrain per fold costs hours on this CPU, so every fold keeps the adapter's LoRA
and refits only the heads (as `make adapter-heads` does, same settings), on `<STATE>`
vectors computed once and kept in the vector cache (persona_agents/multihead/vector_cache.py):
after the first run a fold takes a minute. Conditions:

- **a sample NPC held out**: each of the six sample NPCs in turn is left out of the heads
  refit (its training and validation turns), then scored on its turns in
  `heldout_fresh` and in another author's many voices, against the refit on all NPCs;
- **new NPCs, three ways** (the four held-out NPCs, another author, never trained on):
  persona only (no few-shot evidence), persona + the example player lines of their
  authored lines (at least five per event), and with labelled data: their conversations
  split in two, the heads refitted with one half added to the training data and scored
  on the other, both ways.

Figures: flag micro-F1 after the game's rules, end_conversation recall after the rules,
delta MAE. Thresholds are calibrated on the validation turns as `train` does
(after the rules, end_conversation precision >= 0.8). `--quick` runs every code path on a
few turns and epochs (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "training" / "generalist"
HELD = GEN / "heldout"
SAMPLE_NPCS = ("blacksmith_village_center", "guard_city_gate", "hermit_forest", "merchant_traveling",
               "mother_abandoned_factory", "uncle_hideout")


def _load(paths, flags, npcs_dir: Path, lore: bool, limit: int | None):
    from persona_agents.multihead.data import load_examples, load_personas_for_data, retrieve_lore

    examples = load_examples(paths, flags, load_personas_for_data(npcs_dir))
    if limit:  # spread over the file: every kind of NPC and event
        examples = examples[:: max(1, len(examples) // limit)][:limit]
    return retrieve_lore(examples, npcs_dir) if lore else examples


def _conversation(example) -> str:
    return example.conversation_id or example.source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", default="training/adapters/smollm2-npc")
    parser.add_argument("--quick", action="store_true", help="a few turns and epochs: the code paths only")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    from persona_agents.game import load_game
    from persona_agents.lore.embedder import load_embedder
    from persona_agents.multihead.artifacts import load_adapter
    from persona_agents.multihead.calibrate import calibrate_thresholds
    from persona_agents.multihead.collator import EncodedDataset
    from persona_agents.multihead.evaluate import Predictions, after_rules, allowed_table, delta_metrics, flag_metrics
    from persona_agents.multihead.evidence import evidence_matrix
    from persona_agents.multihead.refit import RefitSettings, allowed_mask, refit_heads, state_vectors, targets
    from persona_agents.multihead.vector_cache import StateVectorCache

    limit = 12 if args.quick else None
    bundle = load_adapter(ROOT / args.adapter, merge=True)
    flags, meta = list(bundle.flags), bundle.meta
    unknown = [name for name in load_game(HELD / "npcs").events if name not in flags]
    lore = bool(meta.get("retrieve_lore"))
    gen_npcs = GEN / "npcs"
    sets = {
        "train": _load([ROOT / "training/data/train.jsonl", GEN / "data/split/train.jsonl"], flags, gen_npcs, lore,
                       limit and 2 * limit),
        "validation": _load([ROOT / "training/data/validation.jsonl", GEN / "data/split/validation.jsonl"], flags,
                            gen_npcs, lore, limit),
        # The held-out author's own events, which no adapter knows, count as misses (as `eval` does).
        "new": _load([HELD / "data/new_npcs.jsonl"], flags + unknown, HELD / "npcs", lore, limit),
        "voices": _load([HELD / "data/sample_voices.jsonl"], flags, ROOT / "npcs", lore, limit),
        "fresh": _load([ROOT / "training/data/heldout_fresh.jsonl"], flags, ROOT / "npcs", lore, limit),
    }
    # faiss (the lore retrieval above) limits OpenMP to one thread, which torch's prompt
    # passes would inherit: every core back for them.
    torch.set_num_threads(os.cpu_count() or 1)
    tok = bundle.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    cache = StateVectorCache.for_adapter(ROOT / args.adapter, meta)
    vectors = {}
    for name, examples in sets.items():
        dataset = EncodedDataset(examples, tok, flags, int(meta["max_length"]), bundle.history_turns, strict=False,
                                 prompt_version=bundle.prompt_version)
        vectors[name] = state_vectors(bundle.model, dataset, pad, progress=f"<STATE> vectors, {name}", cache=cache)
    embedder = load_embedder("embedded")
    # A training record's own wording is left out of its evidence, as in `train`.
    evidence = {name: torch.from_numpy(evidence_matrix(ex, flags, embedder,
                                                       exclude_same=name in ("train", "validation")))
                for name, ex in sets.items()}
    settings = RefitSettings(epochs=3 if args.quick else meta["heads_refit"]["epochs"],
                             seed=meta["heads_refit"].get("seed", 42))
    floors = {"end_conversation": 0.8} if "end_conversation" in flags else {}

    def fit(train_rows: list[int], extra: list[tuple[str, list[int]]] = (), val_rows: list[int] | None = None):
        """Heads refitted on the chosen training rows (+ rows of other sets), thresholds
        calibrated on the chosen validation rows."""
        t_ex = [sets["train"][i] for i in train_rows] + [sets[s][i] for s, rows in extra for i in rows]
        x = torch.cat([vectors["train"][train_rows], *[vectors[s][rows] for s, rows in extra]])
        ev = torch.cat([evidence["train"][train_rows], *[evidence[s][rows] for s, rows in extra]])
        v_rows = val_rows if val_rows is not None else list(range(len(sets["validation"])))
        v_ex = [sets["validation"][i] for i in v_rows]
        val = (vectors["validation"][v_rows], *targets(v_ex, flags))
        heads, _ = refit_heads(bundle.heads, x, *targets(t_ex, flags), val=val, settings=settings,
                               mask=allowed_mask(t_ex, flags), val_mask=allowed_mask(v_ex, flags),
                               evidence=ev, val_evidence=evidence["validation"][v_rows])
        with torch.no_grad():
            probs = heads(vectors["validation"][v_rows], evidence["validation"][v_rows]).flag_probs.tolist()
        thresholds, _ = calibrate_thresholds(probs, [[int(n in e.flags) for n in flags] for e in v_ex], flags,
                                             floors, allowed=allowed_table(v_ex, flags), min_threshold=0.15)
        return heads, thresholds

    def measure(heads, thresholds, name: str, rows: list[int], without_lines: bool = False) -> dict:
        examples = [sets[name][i] for i in rows]
        ev = torch.zeros_like(evidence[name][rows]) if without_lines else evidence[name][rows]
        with torch.no_grad():
            out = heads(vectors[name][rows], ev)
        pred = Predictions(out.flag_probs.tolist(), out.deltas.tolist(), 0.0)
        scored = flags + [n for n in unknown if any(n in e.flags for e in examples)]
        fired = [[p[k] >= thresholds[n] for k, n in enumerate(flags)] + [False] * (len(scored) - len(flags))
                 for p in pred.flag_probs]
        kept = after_rules(fired, examples, scored) or fired
        ruled = flag_metrics(kept, examples, scored)
        end = ruled["per_flag"].get("end_conversation", {})
        return {"n": len(rows), "f1_after_rules": ruled["flag_micro_f1"],
                "end_recall": end.get("recall") if end.get("support") else None,
                **delta_metrics(pred.deltas, examples)}

    every = list(range(len(sets["train"])))
    all_heads, all_thresholds = fit(every)
    results: dict[str, dict] = {}

    def row(label: str, figures: dict) -> None:
        results[label] = figures
        end = "-" if figures["end_recall"] is None else f"{figures['end_recall']:.2f}"
        print(f"| {label} | {figures['n']} | {figures['f1_after_rules']:.3f} | {end} | "
              f"{figures['delta_mae_trust']:.3f} / {figures['delta_mae_relationship']:.3f} |", flush=True)

    print("| condition | turns | flag micro-F1 after rules | end_conversation recall | delta MAE trust / rel. |")
    print("|---|---|---|---|---|")
    new_rows = list(range(len(sets["new"])))
    row("new NPCs, persona only", measure(all_heads, all_thresholds, "new", new_rows, without_lines=True))
    row("new NPCs, persona + authored lines", measure(all_heads, all_thresholds, "new", new_rows))
    # With labelled data: conversations of the new NPCs in two halves, each half added to
    # the training data in turn and the other half scored; the two halves' figures pooled.
    conversations = sorted({_conversation(e) for e in sets["new"]})
    halves = [{c for i, c in enumerate(conversations) if i % 2 == k} for k in (0, 1)]
    pooled: list[dict] = []
    for k in (0, 1):
        taught = [i for i in new_rows if _conversation(sets["new"][i]) in halves[k]]
        scored = [i for i in new_rows if _conversation(sets["new"][i]) not in halves[k]]
        heads, thresholds = fit(every, [("new", taught)])
        pooled.append({**measure(heads, thresholds, "new", scored), "taught": len(taught)})
    total = sum(p["n"] for p in pooled)
    row(f"new NPCs, + labelled data (about {sum(p['taught'] for p in pooled) // 2} of their turns)",
        {"n": total, **{key: (None if any(p[key] is None for p in pooled) else
                              round(sum(p[key] * p["n"] for p in pooled) / max(total, 1), 4))
                        for key in ("f1_after_rules", "end_recall", "delta_mae_trust", "delta_mae_relationship")}})
    for npc in SAMPLE_NPCS:
        scored = {name: [i for i, e in enumerate(sets[name]) if e.turn.persona.id == npc]
                  for name in ("fresh", "voices")}
        if not any(scored.values()):
            continue
        kept_train = [i for i in every if sets["train"][i].turn.persona.id != npc]
        kept_val = [i for i, e in enumerate(sets["validation"]) if e.turn.persona.id != npc]
        if not kept_train or not kept_val:  # --quick's few turns may all be this NPC's
            continue
        heads, thresholds = fit(kept_train, val_rows=kept_val)
        for name, label in (("fresh", "heldout_fresh"), ("voices", "many voices")):
            if scored[name]:
                row(f"{npc} ({label}), heads refitted on all NPCs",
                    measure(all_heads, all_thresholds, name, scored[name]))
                row(f"{npc} ({label}), held out of the heads refit", measure(heads, thresholds, name, scored[name]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
