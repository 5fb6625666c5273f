"""Evaluating a multi-head adapter on labelled data, beside a majority baseline.

Figures: flag micro- and macro-F1 (macro over the flags that occur in the data or are
predicted: F1 is undefined for a flag absent from both), precision and recall per flag,
the mean absolute error of the trust and relationship deltas, and the LM loss (mean
cross-entropy per reply token, end token included). Where the personas have `flag_rules`,
the flag figures are also given after the game's rules (`after_rules`): a predicted flag
the rules do not allow in the example's state is dropped, as `game_rules` would refuse it
in the game; that is what a player sees fire.

The baseline predicts, for each flag, its majority value in the evaluated data (for rare
events: never), and for each delta the data's median; its LM loss is the base model's
without the adapter, on the same prompts and replies.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..rules import allowed_flags
from .collator import EncodedDataset, MultiHeadCollator
from .data import Example
from .heads import MultiHeadModel


@dataclass
class Predictions:
    flag_probs: list[list[float]]
    deltas: list[list[float]]
    lm_loss: float
    #: (examples, hidden) <STATE> vectors, when asked for (the heads refit reuses them)
    states: torch.Tensor | None = None

    def rescore(self, heads, evidence: torch.Tensor | None = None) -> "Predictions":
        """The same examples through other heads (no new forward pass); `evidence`: their
        few-shot evidence rows, for heads that read it."""
        with torch.no_grad():
            out = heads(self.states, evidence)
        return Predictions(out.flag_probs.tolist(), out.deltas.tolist(), self.lm_loss, self.states)


def batch_starts(n: int, batch_size: int, progress: str | None):
    """range(0, n, batch_size), behind a progress bar on stderr when `progress` names it:
    scoring a few hundred turns takes minutes on a CPU."""
    starts = range(0, n, batch_size)
    if progress is None:
        return starts
    from tqdm import tqdm

    return tqdm(starts, desc=progress, unit="batch", file=sys.stderr, mininterval=2.0)


@torch.inference_mode()
def predict(model: MultiHeadModel, dataset: EncodedDataset, pad_token_id: int, batch_size: int = 8,
            heads: bool = True, keep_states: bool = False, progress: str | None = None) -> Predictions:
    """One teacher-forced forward per batch: reply LM loss and the heads at <STATE> (which
    see only the prompt, as at inference). `progress`: a progress bar's label (none if None)."""
    model.eval()
    device = next(model.parameters()).device  # a GPU after training on one (training.finish_heads)
    collate = MultiHeadCollator(pad_token_id)
    # Similar lengths together: less padding, the same figures.
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
    probs: dict[int, list[float]] = {}
    deltas: dict[int, list[float]] = {}
    states: dict[int, torch.Tensor] = {}
    loss_sum, tokens = 0.0, 0
    for start in batch_starts(len(order), batch_size, progress):
        index = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in index]).items()}
        out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["state_index"])
        loss_sum += float(torch.nn.functional.cross_entropy(out.reply_logits, out.reply_targets, reduction="sum"))
        tokens += int(out.reply_targets.numel())
        if heads:
            for row, i in enumerate(index):
                probs[i] = out.heads.flag_probs[row].tolist()
                deltas[i] = out.heads.deltas[row].tolist()
                if keep_states:
                    states[i] = out.state_hidden[row].float().cpu().clone()
    n = len(dataset)
    return Predictions(flag_probs=[probs.get(i, []) for i in range(n)], deltas=[deltas.get(i, []) for i in range(n)],
                       lm_loss=loss_sum / max(tokens, 1),
                       states=torch.stack([states[i] for i in range(n)]) if keep_states and n else None)


def _r(x: float) -> float:
    return round(float(x), 4)


def flag_metrics(predicted: Sequence[Sequence[bool]], examples: Sequence[Example],
    flags: Sequence[str]) -> dict[str, Any]:
    per_flag: dict[str, dict[str, float]] = {}
    TP = FP = FN = 0
    f1s = []
    for k, name in enumerate(flags):
        tp = fp = fn = 0
        for pred, ex in zip(predicted, examples):
            truth = name in ex.flags
            tp += pred[k] and truth
            fp += pred[k] and not truth
            fn += truth and not pred[k]
        TP, FP, FN = TP + tp, FP + fp, FN + fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        per_flag[name] = {"precision": _r(precision), "recall": _r(recall), "f1": _r(f1), "support": tp + fn}
        if tp + fp + fn:
            f1s.append(f1)
    exact = sum(all(p[k] == (name in ex.flags) for k, name in enumerate(flags)) for p, ex in zip(predicted, examples))
    return {
        "flag_micro_f1": _r(2 * TP / (2 * TP + FP + FN) if TP else 0.0),
        "flag_macro_f1": _r(sum(f1s) / len(f1s) if f1s else 0.0),
        "flag_micro_precision": _r(TP / (TP + FP) if TP + FP else 0.0),
        "flag_micro_recall": _r(TP / (TP + FN) if TP + FN else 0.0),
        "flag_exact_match": _r(exact / max(len(examples), 1)),
        "per_flag": per_flag,
    }


def delta_metrics(predicted: Sequence[Sequence[float]], examples: Sequence[Example]) -> dict[str, float]:
    n = max(len(examples), 1)
    return {
        "delta_mae_trust": _r(sum(abs(p[0] - e.delta[0]) for p, e in zip(predicted, examples)) / n),
        "delta_mae_relationship": _r(sum(abs(p[1] - e.delta[1]) for p, e in zip(predicted, examples)) / n),
    }


def allowed_table(examples: Sequence[Example], flags: Sequence[str]) -> list[list[bool]] | None:
    """(examples x flags): whether the example's persona rules allow each flag in its state
    (state-only: no flag history in the data); None when no persona has rules."""
    if not any(e.turn.persona.flag_rules for e in examples):
        return None
    table = []
    for example in examples:
        allowed = set(allowed_flags(example.turn)) if example.turn.persona.flag_rules else set(flags)
        table.append([name in allowed for name in flags])
    return table


def after_rules(fired: Sequence[Sequence[bool]], examples: Sequence[Example],
    flags: Sequence[str]) -> list[list[bool]] | None:
    """`fired` less the flags the example's persona rules forbid in its state; None when no
    persona has rules (nothing to apply)."""
    table = allowed_table(examples, flags)
    if table is None:
        return None
    return [[bool(f) and a for f, a in zip(row, allowed)] for row, allowed in zip(fired, table)]


def score(pred: Predictions, examples: Sequence[Example], flags: Sequence[str], thresholds: dict[str,
    float], fired: Sequence[Sequence[bool]] | None = None) -> dict[str, Any]:
    """The figures; `fired` overrides which events fired (default: each probability
    against its flag's threshold)."""
    if fired is None:
        fired = [[p[k] >= thresholds[name] for k, name in enumerate(flags)] for p in pred.flag_probs]
    report: dict[str, Any] = {"n_examples": len(examples), **flag_metrics(fired, examples, flags),
                              **delta_metrics(pred.deltas, examples), "lm_loss": _r(pred.lm_loss)}
    for name in flags:
        report["per_flag"][name]["threshold"] = _r(thresholds[name])
    kept = after_rules(fired, examples, flags)
    if kept is not None:
        report["after_rules"] = flag_metrics(kept, examples, flags)
    return report


def majority_baseline(examples: Sequence[Example], flags: Sequence[str]) -> dict[str, Any]:
    n = len(examples)
    majority = [sum(name in e.flags for e in examples) * 2 > n for name in flags]
    medians = [statistics.median(e.delta[axis] for e in examples) for axis in (0, 1)] if n else [0.0, 0.0]
    report = {"kind": "majority", **flag_metrics([majority] * n, examples, flags),
              **delta_metrics([medians] * n, examples)}
    report.pop("per_flag")
    return report


def example_evidence(bundle, examples: Sequence[Example], without_lines: bool = False,
                     exclude_same: bool = False, embedder=None) -> torch.Tensor | None:
    """The few-shot evidence rows of `examples`, for heads that read it (else None)."""
    if not bundle.heads.config.evidence_size:
        return None
    from .evidence import evidence_tensor

    return evidence_tensor(examples, bundle.flags, bundle.meta.get("evidence", {}).get("embedder", "embedded"),
                           exclude_same=exclude_same, without_lines=without_lines, embedder=embedder)


def matcher_fired(found, bundle, examples: Sequence[Example], flags: Sequence[str],
                  thresholds: dict[str, float], fired: list[list[bool]], probs: list[list[float]],
                  game_events: Sequence[str], read_events: str, without_lines: bool,
                  embedder) -> dict[str, dict[str, int]] | None:
    """Where the adapter has an event matcher (`found`: load_matcher's answer), the events it decides
    (as the multihead step does, `read_events`: alone, or together with the heads) replace
    the heads' in `fired` and `probs`, in place. `embedder`: a callable giving the sentence
    embedder (loaded once per eval). Returns how many turns each event was read by the
    matcher alone (`"matcher"`) and by both (`"both"`), or None."""
    from .matcher import blend, build_pairs, event_readers, event_threshold, heads_npcs

    if found is None or read_events == "heads":
        return None
    model, meta = found
    known = heads_npcs(bundle.meta, meta)
    readers: dict[str, dict[str, str]] = {}

    def events_of(persona):
        # "Persona only" is a persona whose writer gave no example lines.
        persona = persona.model_copy(update={"lines": []}) if without_lines else persona
        readers[persona.id] = event_readers(persona, game_events, bundle.flags, known, read_events)
        return list(readers[persona.id])

    pairs = build_pairs(examples, embedder(meta.get("embedder", "embedded")), events_of,
                        with_lines=not without_lines)
    counts: dict[str, dict[str, int]] = {"matcher": {}, "both": {}}
    for p, i, name in zip(model.probabilities(pairs.features), pairs.turn, pairs.event):
        k = flags.index(name)
        who = readers[examples[i].turn.persona.id][name]
        if who == "both":
            p, threshold = blend(probs[i][k], thresholds[name], float(p), meta["threshold"])
        else:
            threshold = event_threshold(meta, name)
        fired[i][k], probs[i][k] = bool(p >= threshold), float(p)
        counts[who][name] = counts[who].get(name, 0) + 1
    return counts


def bound_deltas(found, predictions: Predictions, examples: Sequence[Example], flags: Sequence[str],
                 fired: Sequence[Sequence[bool]]) -> int:
    """As the multihead step does: the events that fire and the rules allow bound the
    heads' deltas by each event's typical delta (event_deltas.py, fitted with the adapter's
    event matcher, `found`: load_matcher's answer; nothing without one), in place. Returns
    how many turns changed."""
    from .event_deltas import deltas_after_events

    typical = found[1].get("event_deltas", {}) if found else {}
    if not typical:
        return 0
    kept = after_rules(fired, examples, flags) or fired
    changed = 0
    for i, row in enumerate(kept):
        before = list(predictions.deltas[i])
        after = [*deltas_after_events(before[0], before[1], [name for name, on in zip(flags, row) if on], typical),
                 *before[2:]]
        if after != before:
            predictions.deltas[i], changed = after, changed + 1
    return changed


def evaluate_adapter(adapter_dir, examples: Sequence[Example], batch_size: int = 8, base_lm_loss: bool = True,
                     without_lines: bool = False, game_events: Sequence[str] | None = None,
                     read_events: str = "auto") -> dict[str, Any]:
    """Load an adapter (unmerged, so the base can be scored too) and evaluate `examples`.
    `without_lines`: the heads (and the event matcher) get no few-shot evidence, as for
    personas without authored lines (the "persona only" figure). `game_events`: the
    game's events (default: the adapter's); `read_events`: who decides them, as the
    multihead step's option of that name."""
    from .artifacts import load_adapter

    bundle = load_adapter(adapter_dir, merge=False)
    meta = bundle.meta
    dataset = EncodedDataset(examples, bundle.tokenizer, bundle.flags, int(meta.get("max_length", 384)),
                             bundle.history_turns, strict=False, prompt_version=bundle.prompt_version)
    model = MultiHeadModel(bundle.model, bundle.heads)
    pad = bundle.tokenizer.pad_token_id if bundle.tokenizer.pad_token_id is not None else bundle.tokenizer.eos_token_id
    from ..lore.embedder import load_embedder

    embedders: dict[str, Any] = {}

    def embedder(ref: str):  # one load per name for the heads' evidence and the matcher
        return embedders[ref] if ref in embedders else embedders.setdefault(ref, load_embedder(ref))

    ref = bundle.meta.get("evidence", {}).get("embedder", "embedded")
    evidence = example_evidence(bundle, examples, without_lines,
                                embedder=None if without_lines or not bundle.heads.config.evidence_size
                                else embedder(ref))
    predictions = predict(model, dataset, pad, batch_size, progress="Evaluating", keep_states=evidence is not None)
    if evidence is not None:
        predictions = predictions.rescore(bundle.heads, evidence)
    # Events labelled in the data that the adapter was never trained on (a studio's own):
    # scored as never predicted, so they count as misses rather than vanish from the figures.
    game_events = list(game_events) if game_events is not None else list(bundle.flags)
    unknown = list(dict.fromkeys([*(n for n in game_events if n not in bundle.flags),
                                  *(f for e in examples for f in e.flags if f not in bundle.flags)]))
    flags, thresholds = list(bundle.flags) + unknown, {**bundle.thresholds, **{n: 2.0 for n in unknown}}
    if unknown:
        predictions = Predictions([row + [0.0] * len(unknown) for row in predictions.flag_probs], predictions.deltas,
                                  predictions.lm_loss, predictions.states)
    fired = [[p[k] >= thresholds[name] for k, name in enumerate(flags)] for p in predictions.flag_probs]
    from .matcher import load_matcher

    found = load_matcher(adapter_dir)  # once, for the events it reads and the deltas' bounds
    matched = matcher_fired(found, bundle, examples, flags, thresholds, fired, predictions.flag_probs,
                            game_events, read_events, without_lines, embedder)
    bounded = bound_deltas(found, predictions, examples, flags, fired)
    report = score(predictions, examples, flags, thresholds, fired)
    # Events of the game no labelled turn has and nothing fired: no figure to give.
    for name in unknown:
        if not report["per_flag"][name]["support"] and not any(row[flags.index(name)] for row in fired):
            report["per_flag"].pop(name)
            report.get("after_rules", {}).get("per_flag", {}).pop(name, None)
    report["baseline"] = majority_baseline(examples, flags)
    labelled_unknown = [n for n in unknown if any(n in e.flags for e in examples)]
    if labelled_unknown:
        report["events_unknown_to_adapter"] = {n: sum(n in e.flags for e in examples) for n in labelled_unknown}
    report["events_read_by_matcher"] = (matched or {}).get("matcher", {})
    report["events_read_by_heads_and_matcher"] = (matched or {}).get("both", {})
    report["deltas_bounded_by_events"] = bounded
    if base_lm_loss:
        with bundle.model.disable_adapter():
            report["baseline"]["lm_loss"] = _r(predict(model, dataset, pad, batch_size, heads=False,
                                                          progress="Base model LM loss").lm_loss)
    report["adapter"] = str(adapter_dir)
    report["thresholds_version"] = meta.get("thresholds_version")
    if bundle.heads.config.evidence_size:
        report["evidence"] = "none (persona only)" if without_lines else "authored lines' examples"
    return report


def format_report(report: dict[str, Any]) -> str:
    """The figures as a small table for people."""
    b = report.get("baseline", {})
    rows = [("flag micro-F1", "flag_micro_f1"), ("flag macro-F1", "flag_macro_f1"),
            ("flag micro precision", "flag_micro_precision"), ("flag micro recall", "flag_micro_recall"),
            ("flags exactly right", "flag_exact_match"), ("delta MAE trust", "delta_mae_trust"),
            ("delta MAE relationship", "delta_mae_relationship"), ("LM loss on replies", "lm_loss")]
    lines = [f"{report['n_examples']} examples, adapter {report.get('adapter', '-')}", "",
             f"{'':<24}{'adapter':>10}{'baseline':>10}"]
    for label, key in rows:
        base = b.get(key)
        lines.append(f"{label:<24}{report[key]:>10.4f}" + (f"{base:>10.4f}" if base is not None else f"{'-':>10}"))
    ruled = report.get("after_rules")
    if ruled:
        for label, key in (("micro-F1 after rules", "flag_micro_f1"), ("macro-F1 after rules", "flag_macro_f1")):
            lines.append(f"{label:<24}{ruled[key]:>10.4f}{'-':>10}")
    lines += ["", f"{'flag':<20}{'prec':>7}{'recall':>7}{'F1':>7}{'support':>8}{'thresh':>8}"
              + (f"{'F1 ruled':>10}" if ruled else "")]
    for name, m in report["per_flag"].items():
        lines.append(f"{name:<20}{m['precision']:>7.3f}{m['recall']:>7.3f}{m['f1']:>7.3f}{m['support']:>8}"
                     f"{m.get('threshold', 0):>8.3f}" + (f"{ruled['per_flag'][name]['f1']:>10.3f}" if ruled else ""))
    return "\n".join(lines)
