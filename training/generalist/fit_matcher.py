"""Fit an adapter's event matcher (persona_agents/multihead/matcher.py) and save it beside its heads.

    python training/generalist/fit_matcher.py --adapter training/adapters/smollm2-npc-v3 \
        [--also-into training/adapters/smollm2-npc] [--dev-npcs training/generalist/data/writer_d.jsonl] [--quick]

The matcher scores (player line, event) pairs from the event's meaning and the writers'
example lines; it reads no `<STATE>` vector, so it costs no model pass and the same file
serves every adapter fitted on the same turns (`--also-into`). It is fitted on the turns
the adapter's heads were refitted on (the adapter's `multihead.json` names the files), and
records their NPCs (`heads_npcs`): those the multihead step leaves to the heads.

How it is fitted, so that what it learns carries to NPCs it never saw:
1. the training NPCs in four folds; each fold's pairs scored by a matcher fitted on the
   other three (early stopping on the held-out fold);
2. the one threshold with the best flag micro-F1 after the game's rules on those
   out-of-fold scores, and the median of the folds' best epochs;
3. the matcher fitted on every training pair for that many epochs.

`--dev-npcs FILE`: leave the NPCs of FILE (e.g. one writer's) out of everything above and
report F1 after the rules on their turns: a development figure for NPCs never seen, kept
apart from the held-out sets of `measure.py`. Nothing is saved in that mode.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "training" / "generalist"
FOLDS = 4


def _scored_f1(pairs, probs, threshold: float, examples, flags) -> float:
    from persona_agents.multihead.evaluate import after_rules, flag_metrics

    fired = [[False] * len(flags) for _ in examples]
    for p, i, name in zip(probs, pairs.turn, pairs.event):
        fired[i][flags.index(name)] = bool(p >= threshold)
    return flag_metrics(after_rules(fired, examples, flags) or fired, examples, flags)["flag_micro_f1"]


def _subset(pairs, keep: np.ndarray):
    from persona_agents.multihead.matcher import PairSet

    return PairSet(pairs.features[keep], pairs.labels[keep], pairs.turn[keep],
                   [name for name, k in zip(pairs.event, keep) if k])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, required=True, help="the adapter folder to fit the matcher for")
    parser.add_argument("--also-into", type=Path, action="append", default=[],
                        help="another adapter folder fitted on the same turns: the same matcher is saved there too")
    parser.add_argument("--npcs-dir", type=Path, default=GEN / "npcs", help="the personas of the training turns")
    parser.add_argument("--dev-npcs", type=Path, help="a JSONL file whose NPCs are left out and scored (saves nothing)")
    parser.add_argument("--without-lines-share", type=float, default=0.0,
                        help="share of training turns read as if the persona had no example lines")
    parser.add_argument("--quick", action="store_true", help="a few turns and epochs: the code paths only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.time()

    from persona_agents.game import load_game
    from persona_agents.lore.embedder import load_embedder
    from persona_agents.multihead.artifacts import read_metadata
    from persona_agents.multihead.data import file_sha256, load_examples, load_personas_for_data
    from persona_agents.multihead.matcher import MatcherFit, build_pairs, fit_matcher, save_matcher

    adapter = args.adapter if args.adapter.is_absolute() else ROOT / args.adapter
    meta = read_metadata(adapter)
    training = meta.get("training", {})
    files = (training.get("heads_refit_data") or training.get("data") or {}).get("files")
    validation_files = (training.get("validation") or {}).get("files") or []
    if not files:
        raise SystemExit(f"{adapter / 'multihead.json'}: names no training files (training.heads_refit_data or "
                         "training.data). Fix: refit the adapter's heads with `persona-agents train --heads-only`")
    for others in args.also_into:
        other = read_metadata(others if others.is_absolute() else ROOT / others).get("training", {})
        other_files = (other.get("heads_refit_data") or other.get("data") or {}).get("files")
        if other_files != files:
            raise SystemExit(f"--also-into {others}: its heads were fitted on {other_files}, not {files}; the "
                             "matcher records which NPCs the heads know, so fit it for that adapter separately")
    for f in files:
        if (ROOT / f["path"]).is_file() and file_sha256(ROOT / f["path"]) != f.get("sha256"):
            logging.warning("%s changed since the adapter's heads were fitted on it: the matcher is fitted on the "
                            "file as it is now", f["path"])
    game = load_game(args.npcs_dir)
    flags = list(game.event_names)
    personas = load_personas_for_data(args.npcs_dir)
    train = load_examples([ROOT / f["path"] for f in files], flags, personas, game.extra_axes)
    validation = load_examples([ROOT / f["path"] for f in validation_files], flags, personas, game.extra_axes)
    heads_npcs = sorted({e.turn.persona.id for e in train})
    dev = []
    if args.dev_npcs:
        left_out = {json.loads(line)["npc_id"] for line in args.dev_npcs.read_text(encoding="utf-8").splitlines()
                    if line.strip()}
        dev = [e for e in train + validation if e.turn.persona.id in left_out]
        train = [e for e in train if e.turn.persona.id not in left_out]
        validation = [e for e in validation if e.turn.persona.id not in left_out]
    if args.quick:  # spread over the files: every kind of NPC and event
        train, validation, dev = train[::25], validation[::10], dev[::10]
    settings = MatcherFit(epochs=3 if args.quick else 60, patience=3 if args.quick else 6)

    def events_of(persona):
        return [name for name in flags if name in persona.flag_rules or not persona.flag_rules]

    embedder = load_embedder("embedded")
    logging.info("embedding %d training, %d validation and %d development turns...", len(train), len(validation),
                 len(dev))
    # A training record's own wording is left out of its evidence: players never quote the writer.
    pairs = build_pairs(train, embedder, events_of, exclude_same=True, without_lines_share=args.without_lines_share)
    val_pairs = build_pairs(validation, embedder, events_of, exclude_same=True)

    ids = sorted({e.turn.persona.id for e in train})
    fold_of = {npc: k % FOLDS for k, npc in enumerate(ids)}
    pair_fold = np.array([fold_of[train[i].turn.persona.id] for i in pairs.turn])
    out_of_fold = np.zeros(len(pairs.labels), dtype="float32")
    epochs = []
    for k in range(FOLDS):
        inside = pair_fold != k
        model, info = fit_matcher(_subset(pairs, inside), _subset(pairs, ~inside), settings)
        out_of_fold[~inside] = model.probabilities(pairs.features[~inside])
        epochs.append(info["best_epoch"])
        logging.info("fold %d of %d: NPCs %d held out, best epoch %d", k + 1, FOLDS,
                     sum(1 for v in fold_of.values() if v == k), info["best_epoch"])
    candidates = [round(float(t), 2) for t in np.arange(0.10, 0.91, 0.01)]
    f1s = [_scored_f1(pairs, out_of_fold, t, train, flags) for t in candidates]
    threshold = candidates[int(np.argmax(f1s))]
    fixed = max(1, int(statistics.median(epochs)))
    logging.info("threshold %.2f (out-of-fold F1 after the rules %.3f), %d epochs", threshold, max(f1s), fixed)
    model, info = fit_matcher(pairs, val_pairs, MatcherFit(epochs=fixed, patience=fixed + 1, seed=settings.seed))
    # Fixed epochs: the last one is kept whatever the validation loss says (the validation
    # turns share NPCs with training, so their loss favours memorising NPCs).
    summary = {"threshold": threshold, "epochs": fixed, "fold_best_epochs": epochs,
               "out_of_fold_f1_after_rules": round(max(f1s), 4),
               "validation_f1_after_rules": round(_scored_f1(val_pairs, model.probabilities(val_pairs.features),
                                                             threshold, validation, flags), 4)}
    if dev:
        dev_pairs = build_pairs(dev, embedder, events_of)
        summary["dev_npcs"] = sorted({e.turn.persona.id for e in dev})
        summary["dev_turns"] = len(dev)
        summary["dev_f1_after_rules"] = round(_scored_f1(dev_pairs, model.probabilities(dev_pairs.features),
                                                         threshold, dev, flags), 4)
        bare = build_pairs(dev, embedder, events_of, with_lines=False)
        summary["dev_persona_only_f1_after_rules"] = round(
            _scored_f1(bare, model.probabilities(bare.features), threshold, dev, flags), 4)
    summary["seconds"] = round(time.time() - started, 1)
    print(json.dumps(summary, indent=2))
    if dev or args.quick:
        return 0
    record = {**summary, "embedder": "embedded", "heads_npcs": heads_npcs, "events_fitted": flags,
              "training": {"files": [{"path": f["path"], "sha256": file_sha256(ROOT / f["path"])} for f in files],
                           "pairs": info["train_pairs"], "turns": len(train)}}
    for folder in [adapter, *args.also_into]:
        save_matcher(folder if folder.is_absolute() else ROOT / folder, model, threshold, record)
        print(f"saved the matcher into {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
