"""Fitting an adapter's event matcher (matcher.py) on the turns its heads were fitted on.

`persona-agents fit-matcher` runs this. How it is fitted, so that what it learns carries
to NPCs it never saw:

1. the training NPCs in four folds; each fold's pairs scored by a matcher fitted on the
   other three (early stopping on the held-out fold);
2. the one threshold with the best flag micro-F1 after the game's rules on those
   out-of-fold scores, then thresholds of their own for the events the turns label often
   (`choose_event_thresholds`), and the median of the folds' best epochs;
3. the matcher fitted on every training pair for that many epochs (the validation turns
   share NPCs with training, so their loss would favour memorising NPCs).

With `dev_npcs`, those NPCs are left out of everything and scored instead: a development
figure for NPCs never seen, kept apart from any held-out set; nothing is saved then.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import TrainingConfigError
from ..lore.embedded_mpnet import EMBEDDED_MPNET

#: The sentence model a matcher is fitted with unless told (`fit-matcher --embedder`).
MATCHER_EMBEDDER = EMBEDDED_MPNET

log = logging.getLogger(__name__)

FOLDS = 4


@dataclass
class MatcherRun:
    """What `fit_adapter_matcher` fitted and measured; `model` is None in development mode."""

    summary: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)
    model: Any = None


#: An event gets a threshold of its own when the training turns label it this many times
#: (out-of-fold): fewer, and its own threshold would follow a handful of NPCs' wordings.
EVENT_THRESHOLD_MIN_LABELS = 30


def _scored_f1(pairs, probs, threshold: float, examples, flags,
               event_thresholds: dict[str, float] | None = None) -> float:
    from .evaluate import after_rules, flag_metrics

    own = event_thresholds or {}
    fired = [[False] * len(flags) for _ in examples]
    for p, i, name in zip(probs, pairs.turn, pairs.event):
        fired[i][flags.index(name)] = bool(p >= own.get(name, threshold))
    return flag_metrics(after_rules(fired, examples, flags) or fired, examples, flags)["flag_micro_f1"]


def choose_event_thresholds(pairs, probs, threshold: float, examples, flags,
                            candidates) -> tuple[dict[str, float], float]:
    """Thresholds of their own for the events labelled at least EVENT_THRESHOLD_MIN_LABELS
    times, on the out-of-fold scores: each event's in turn (most labelled first, two rounds)
    moved to where the flag micro-F1 after the rules is highest, the others held. Why: a
    broad event (`give_hint`: any question may look like one) needs a surer match than a
    narrow one (`quest_complete`), whatever the NPC (on NPCs never seen, writers A-D left
    out in turn: F1 0.800 -> 0.813; training/generalist/README.md). Returns the thresholds
    and the F1 they reach."""
    from collections import Counter

    labelled = Counter(name for name, label in zip(pairs.event, pairs.labels) if label > 0)
    chosen: dict[str, float] = {}
    best = _scored_f1(pairs, probs, threshold, examples, flags)
    for _ in range(2):
        for name in sorted(labelled, key=lambda n: (-labelled[n], n)):
            if labelled[name] < EVENT_THRESHOLD_MIN_LABELS:
                continue
            for t in candidates:
                f1 = _scored_f1(pairs, probs, threshold, examples, flags, {**chosen, name: t})
                if f1 > best + 1e-4:
                    chosen[name], best = t, f1
    return chosen, best


def _subset(pairs, keep: np.ndarray):
    from .matcher import PairSet

    return PairSet(pairs.features[keep], pairs.labels[keep], pairs.turn[keep],
                   [name for name, k in zip(pairs.event, keep) if k])


def _resolve(path: str, npcs_dir: Path) -> Path:
    """A data path as `train` recorded it: relative to where it ran, usually the project
    root (the NPC folder's parent)."""
    for candidate in (Path(path), Path(npcs_dir).resolve().parent / path):
        if candidate.is_file():
            return candidate
    raise TrainingConfigError(f"{path}: the adapter's heads were fitted on this file, which is not here (looked "
                              f"in the current folder and beside {npcs_dir}). Fix: run from the project root, or "
                              "give the data back")


def heads_training_files(meta: dict, adapter: Path) -> tuple[list[dict], list[dict]]:
    """The (training, validation) files the adapter's heads were last fitted on."""
    training = meta.get("training") or {}
    files = (training.get("heads_refit_data") or training.get("data") or {}).get("files")
    if not files:
        raise TrainingConfigError(f"{adapter / 'multihead.json'}: names no training files (training.heads_refit_data "
                                  "or training.data). Fix: refit the adapter's heads with `persona-agents train "
                                  "--heads-only`")
    return files, (training.get("validation") or {}).get("files") or []


def fit_adapter_matcher(adapter: Path, npcs_dir: Path, dev_npcs: Sequence[str] = (), quick: bool = False,
                        without_lines_share: float = 0.0, dev_examples: Sequence[int] = (),
                        fewer_examples_share: float = 0.0, embedder: str = MATCHER_EMBEDDER) -> MatcherRun:
    from ..game import load_game
    from ..lore.embedder import load_embedder
    from .artifacts import read_metadata
    from .data import file_sha256, load_examples, load_personas_for_data
    from .matcher import MatcherFit, build_pairs, events_read_by_matcher, fit_matcher, with_examples_per_event

    started = time.time()
    meta = read_metadata(adapter)
    files, validation_files = heads_training_files(meta, adapter)
    for f in files:
        if file_sha256(_resolve(f["path"], npcs_dir)) != f.get("sha256"):
            log.warning("%s changed since the adapter's heads were fitted on it: the matcher is fitted on the file "
                        "as it is now", f["path"])
    game = load_game(npcs_dir)
    flags = list(game.event_names)
    personas = load_personas_for_data(npcs_dir)
    train = load_examples([_resolve(f["path"], npcs_dir) for f in files], flags, personas, game.extra_axes)
    validation = load_examples([_resolve(f["path"], npcs_dir) for f in validation_files], flags, personas,
                               game.extra_axes)
    heads_npcs = sorted({e.turn.persona.id for e in train})
    left_out = set(dev_npcs)
    dev = [e for e in train + validation if e.turn.persona.id in left_out]
    if left_out and not dev:
        raise TrainingConfigError(f"none of the NPCs to leave out ({', '.join(sorted(left_out))}) has turns among the "
                                  "adapter's training or validation turns. Fix: give --dev-npcs a file of NPCs the "
                                  "heads were fitted on")
    train = [e for e in train if e.turn.persona.id not in left_out]
    validation = [e for e in validation if e.turn.persona.id not in left_out]
    if quick:  # spread over the files: every kind of NPC and event
        train, validation, dev = train[::25], validation[::10], dev[::10]
    ids = sorted({e.turn.persona.id for e in train})
    if len(ids) < FOLDS:
        raise TrainingConfigError(f"the matcher learns across NPCs: its training turns have {len(ids)} NPC(s), it "
                                  f"needs at least {FOLDS}. Fix: fit it on an adapter whose heads were fitted on "
                                  "many NPCs' turns")
    settings = MatcherFit(epochs=3 if quick else 60, patience=3 if quick else 6)

    def events_of(persona):  # every event of the NPC: the matcher learns them all
        return events_read_by_matcher(persona, flags, flags, [], "matcher")

    embedder_ref = embedder
    counted = SentencesCounted(load_embedder(embedder_ref))
    log.info("Embedding %d training, %d validation and %d development turns...", len(train), len(validation),
             len(dev))
    # A training record's own wording is left out of its evidence: players never quote the writer.
    pairs = build_pairs(train, counted, events_of, exclude_same=True, without_lines_share=without_lines_share,
                        fewer_examples_share=fewer_examples_share)
    val_pairs = build_pairs(validation, counted, events_of, exclude_same=True)
    fold_of = {npc: k % FOLDS for k, npc in enumerate(ids)}
    pair_fold = np.array([fold_of[train[i].turn.persona.id] for i in pairs.turn])
    out_of_fold = np.zeros(len(pairs.labels), dtype="float32")
    epochs = []
    for k in range(FOLDS):
        inside = pair_fold != k
        model, info = fit_matcher(_subset(pairs, inside), _subset(pairs, ~inside), settings)
        out_of_fold[~inside] = model.probabilities(pairs.features[~inside])
        epochs.append(info["best_epoch"])
        log.info("Matcher fold %d of %d: %d NPCs held out, best epoch %d", k + 1, FOLDS,
                 sum(1 for v in fold_of.values() if v == k), info["best_epoch"])
    candidates = [round(float(t), 2) for t in np.arange(0.10, 0.91, 0.01)]
    f1s = [_scored_f1(pairs, out_of_fold, t, train, flags) for t in candidates]
    threshold = candidates[int(np.argmax(f1s))]
    own, own_f1 = choose_event_thresholds(pairs, out_of_fold, threshold, train, flags, candidates[::2])
    fixed = max(1, int(statistics.median(epochs)))
    log.info("Matcher threshold %.2f (out-of-fold F1 after the rules %.3f; %.3f with %d events' own thresholds), "
             "%d epochs", threshold, max(f1s), own_f1, len(own), fixed)
    model, info = fit_matcher(pairs, val_pairs, MatcherFit(epochs=fixed, patience=fixed + 1, seed=settings.seed,
                                                           restore_best=False))
    summary: dict[str, Any] = {
        "threshold": threshold, "event_thresholds": own, "epochs": fixed, "fold_best_epochs": epochs,
        "out_of_fold_f1_after_rules": round(max(f1s), 4),
        "out_of_fold_f1_after_rules_event_thresholds": round(own_f1, 4),
        "validation_f1_after_rules": round(_scored_f1(val_pairs, model.probabilities(val_pairs.features), threshold,
                                                      validation, flags, own), 4)}
    if left_out:
        dev_pairs = build_pairs(dev, counted, events_of)
        bare = build_pairs(dev, counted, events_of, with_lines=False)
        summary.update(
            dev_npcs=sorted({e.turn.persona.id for e in dev}), dev_turns=len(dev),
            dev_f1_after_rules=round(_scored_f1(dev_pairs, model.probabilities(dev_pairs.features), threshold, dev,
                                                flags, own), 4),
            dev_persona_only_f1_after_rules=round(_scored_f1(bare, model.probabilities(bare.features), threshold,
                                                             dev, flags, own), 4))
        by_k = {}
        for k in dev_examples:
            personas_cut: dict[str, Any] = {}  # one copy per persona: build_pairs embeds once per persona
            cut = [dataclasses.replace(e, turn=e.turn.replace(persona=personas_cut.setdefault(
                e.turn.persona.id, with_examples_per_event(e.turn.persona, k)))) for e in dev]
            cut_pairs = build_pairs(cut, counted, events_of)
            by_k[str(k)] = round(_scored_f1(cut_pairs, model.probabilities(cut_pairs.features), threshold, cut,
                                            flags, own), 4)
        if by_k:
            summary["dev_f1_after_rules_by_examples_per_event"] = by_k
    summary["seconds"] = round(time.time() - started, 1)
    if left_out:
        return MatcherRun(summary)
    from .event_deltas import typical_deltas

    record = {**summary, "embedder": embedder_ref, "heads_npcs": heads_npcs, "events_fitted": flags,
              # What an event's turn typically does to trust and relationship (event_deltas.py).
              "event_deltas": typical_deltas(train),
              "without_lines_share": without_lines_share, "fewer_examples_share": fewer_examples_share,
              "training": {"files": [{"path": f["path"], "sha256": file_sha256(_resolve(f["path"], npcs_dir))}
                                     for f in files], "pairs": info["train_pairs"], "turns": len(train)}}
    return MatcherRun(summary, record, model)


class SentencesCounted:
    """An embedder that shows how many sentences it has embedded (a progress bar on stderr):
    with all-mpnet-base-v2 a fit spends most of its 25 minutes embedding, at about 20
    sentences a second on 2 cores, and the number of sentences is only known once every
    persona's example lines are read."""

    def __init__(self, inner, chunk: int = 256):
        from tqdm import tqdm

        self.inner, self.chunk = inner, chunk
        self.bar = tqdm(desc=f"Embedding sentences ({inner.name})", unit=" sentences", file=sys.stderr,
                        mininterval=2.0)

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        if len(texts) <= self.chunk:
            self.bar.update(len(texts))
            return self.inner.encode(texts, batch_size=batch_size)
        parts = []
        for i in range(0, len(texts), self.chunk):  # in chunks, so that the bar moves
            parts.append(self.inner.encode(texts[i:i + self.chunk], batch_size=batch_size))
            self.bar.update(len(parts[-1]))
        return np.concatenate(parts)


def check_same_heads_data(adapter: Path, others: Sequence[Path]) -> None:
    """Every folder in `others` must have had its heads fitted on the adapter's files: the
    matcher records which NPCs the heads know."""
    from .artifacts import read_metadata

    files, _ = heads_training_files(read_metadata(adapter), adapter)
    for other in others:
        theirs, _ = heads_training_files(read_metadata(other), other)
        if theirs != files:
            raise TrainingConfigError(f"--also-into {other}: its heads were fitted on {[f['path'] for f in theirs]}, "
                                      f"not {[f['path'] for f in files]}. Fix: fit its matcher separately")
