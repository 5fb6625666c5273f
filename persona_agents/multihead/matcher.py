"""Events read by meaning: a small scorer that knows no NPC and no event by name (issue 26).

The state heads learn each event of each NPC from its labelled turns: on an NPC they never
saw they fall to about 0.6 F1, and an event outside their vocabulary (a studio's own
`waive_fee`) they cannot fire at all. The matcher scores one (player line, event) pair at
a time from what the studio wrote about the event, so what it learnt carries to any NPC
and any event:

- the player's line and the NPC's last line (the ask may answer an offer), each against
  the event's meaning for this NPC (the rule's `means`, else the game's description);
- the few-shot evidence of `evidence.py`: how close the line comes to the writer's example
  player lines for this event (the closest, and the mean of the two closest), and how far
  ahead of the other events' examples it is;
- how far the line's closeness to this event's meaning leads its closeness to the NPC's
  other events' meanings (a line about buying is nearer every trade-like meaning; what
  counts is which of this NPC's events it is nearest).

Sentences are embedded with the matcher's own sentence model, named in `matcher.json`
(`embedder`): all-mpnet-base-v2 since 2026-12-07 (`lore/embedded_mpnet.py`; on NPCs it
never saw it reads events better than the lore's all-MiniLM-L6-v2, at 89 ms a turn for the
player's and the NPC's lines on 2 cores against 16; training/generalist/README.md).
Normalised vectors.
The matcher is fitted on pairs from many NPCs' labelled turns (`fit_matcher`; the whole
recipe in matcher_fit.py, `persona-agents fit-matcher`), saved in
the adapter folder beside the heads (`matcher.safetensors`, `matcher.json`), and read at
inference by the multihead step's `HeadsReader` (reader.py) for the events
`event_readers` hands it: on NPCs the heads were not fitted on, those with example lines;
on NPCs they were fitted on, the same events together with the heads (`blend`); on every
NPC, those no head knows.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..persona import Persona
from .early_stopping import fit_epochs
from .evidence import EventEvidence

log = logging.getLogger(__name__)

WEIGHTS_FILE = "matcher.safetensors"
META_FILE = "matcher.json"
#: The scalar features after the four vector blocks (see `pair_features`).
SCALARS = ("cos_line_means", "cos_context_means", "example_best", "has_examples", "example_margin",
           "example_is_top", "none_best", "has_none_examples", "example_top_two_mean", "meaning_margin")


def event_meaning(persona: Persona, event: str, descriptions: Mapping[str, str] | None = None) -> str:
    """What the event means for this NPC, as the prompt shows it: `event: means`, with the
    game's description of the event where the persona's rule has no `means`."""
    rule = persona.flag_rules.get(event)
    means = (rule.means if rule is not None and rule.means else None) or (descriptions or {}).get(event) \
        or event.replace("_", " ")
    return f"{event.replace('_', ' ')}: {means}"


class PersonaEvents:
    """One persona's events for the matcher: their meanings embedded once, and the evidence
    bank of its authored example lines."""

    def __init__(self, persona: Persona, events: Sequence[str], embedder, with_lines: bool = True,
                 descriptions: Mapping[str, str] | None = None):
        self.events = list(events)
        self.meanings = embedder.encode([event_meaning(persona, e, descriptions) for e in self.events], batch_size=64) \
            if self.events else np.zeros((0, 1), dtype="float32")
        self.bank = EventEvidence(persona, self.events, embedder) if with_lines and self.events else None

    def pair_features(self, line: np.ndarray, context: np.ndarray | None, utterance: str,
                      exclude_same: bool = False) -> np.ndarray:
        """(events x features): one row per event of this persona, for one player line.
        `context` is the NPC's last line embedded (None on a first turn)."""
        n = len(self.events)
        if context is None:
            context = np.zeros_like(line)
        if self.bank is not None:
            sims = self.bank.similarities(utterance, line, exclude_same=exclude_same)
            evidence = self.bank.features(utterance, sims=sims)
            top_two = self.bank.top_two_means(sims)
        else:
            evidence, top_two = np.zeros(2 * n + 2, dtype="float32"), np.zeros(n + 1, dtype="float32")
        best, present = evidence[: n + 1], evidence[n + 1:]
        rows = np.zeros((n, feature_size(line.shape[0])), dtype="float32")
        dim = line.shape[0]
        line_means = self.meanings @ line
        for k in range(n):
            meaning = self.meanings[k]
            others = np.delete(best, k)  # the other events' and the "no event" examples
            top = float(others.max()) if others.size else 0.0
            other_means = np.delete(line_means, k)  # how far this meaning leads the NPC's other events'
            rows[k, :dim] = line * meaning
            rows[k, dim:2 * dim] = context * meaning
            rows[k, 2 * dim:3 * dim] = meaning
            rows[k, 3 * dim:4 * dim] = line
            rows[k, 4 * dim:] = [float(line_means[k]), float(context @ meaning), best[k], present[k],
                                 best[k] - top if present[k] else 0.0, float(present[k] and best[k] >= top),
                                 best[n], present[n], top_two[k],
                                 float(line_means[k] - (other_means.max() if other_means.size else 0.0))]
        return rows


def feature_size(dim: int) -> int:
    return 4 * dim + len(SCALARS)


class EventMatcher(torch.nn.Module):
    """(pairs x features) -> one logit per pair."""

    def __init__(self, dim: int, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.net = torch.nn.Sequential(
            torch.nn.Linear(feature_size(dim), hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(self(torch.from_numpy(features))).numpy()


@dataclass
class PairSet:
    """Pairs of labelled turns and their NPC's events: features, labels and where each
    pair came from (turn index, event name)."""

    features: np.ndarray
    labels: np.ndarray
    turn: np.ndarray
    event: list[str]


def with_examples_per_event(persona, k: int):
    """The persona with at most `k` example player lines per event (the first ones, line
    by line); small-talk lines keep theirs. How many examples a writer must give: scored
    for k = 1, 2, 3, ... on NPCs the matcher never saw."""
    kept: dict[str, int] = {}
    lines = []
    for line in persona.lines:
        if not line.events:
            lines.append(line)
            continue
        room = min(k - kept.get(event, 0) for event in line.events)
        examples = line.examples[:max(room, 0)]
        for event in line.events:
            kept[event] = kept.get(event, 0) + len(examples)
        lines.append(line.model_copy(update={"examples": examples}))
    return persona.model_copy(update={"lines": lines})


def npc_last_line(turn) -> str:
    """The NPC's line the player answers ("" on a first turn): the matcher's context."""
    return turn.history[-1].npc if turn.history else ""


def build_pairs(examples: Sequence, embedder, events_of, exclude_same: bool = False,
                with_lines: bool = True, without_lines_share: float = 0.0, fewer_examples_share: float = 0.0,
                seed: int = 42) -> PairSet:
    """Pairs (turn, event) for every event `events_of(persona)` gives the turn's NPC.
    `exclude_same`: a training record's own wording is left out of its evidence.
    `without_lines_share`: that share of the turns (seeded) is read as if the persona had
    no example lines, so the matcher also learns to read an event's meaning alone;
    `fewer_examples_share`: that share with each event cut to 1-`FEWER_EXAMPLES_MAX`
    examples (uniform), so it learns what a writer's first few examples are worth."""
    rng = np.random.default_rng(seed)
    utterances = [e.turn.utterance for e in examples]
    lines = embedder.encode(utterances, batch_size=64) if examples else np.zeros((0, 1), "float32")
    contexts_text = [npc_last_line(e.turn) for e in examples]
    wanted = sorted({c for c in contexts_text if c})
    vectors = dict(zip(wanted, embedder.encode(wanted, batch_size=64))) if wanted else {}
    personas: dict[tuple[int, int], PersonaEvents] = {}
    feats: list[np.ndarray] = []
    labels: list[float] = []
    turns: list[int] = []
    names: list[str] = []
    for i, example in enumerate(examples):
        persona = example.turn.persona
        lines_here = with_lines and not (without_lines_share and rng.random() < without_lines_share)
        # 0: no lines; -1: all the examples; k: at most k per event
        cut = 0 if not lines_here else -1
        if lines_here and fewer_examples_share and rng.random() < fewer_examples_share:
            cut = int(rng.integers(1, FEWER_EXAMPLES_MAX + 1))
        reader = personas.get((id(persona), cut))
        if reader is None:
            shown = with_examples_per_event(persona, cut) if cut > 0 else persona
            reader = personas[(id(persona), cut)] = PersonaEvents(shown, events_of(persona), embedder, cut != 0)
        if not reader.events:
            continue
        context = vectors.get(contexts_text[i])
        feats.append(reader.pair_features(lines[i], context, utterances[i], exclude_same=exclude_same))
        labels.extend(float(name in example.flags) for name in reader.events)
        turns.extend([i] * len(reader.events))
        names.extend(reader.events)
    dim = lines.shape[1] if len(examples) else 1
    return PairSet(np.concatenate(feats) if feats else np.zeros((0, feature_size(dim)), "float32"),
                   np.array(labels, dtype="float32"), np.array(turns, dtype=np.int64), names)


@dataclass
class MatcherFit:
    epochs: int = 40
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 256
    patience: int = 6
    seed: int = 42
    #: False: the last epoch is kept whatever the validation loss says (a fixed-epoch fit).
    restore_best: bool = True


def fit_matcher(train: PairSet, validation: PairSet, settings: MatcherFit = MatcherFit(),
                progress: bool = False) -> tuple[EventMatcher, dict]:
    """The matcher fitted on `train` pairs, the epoch with the lowest validation loss kept
    (or the last, `settings.restore_best` False)."""
    torch.manual_seed(settings.seed)
    dim = (train.features.shape[1] - len(SCALARS)) // 4
    model = EventMatcher(dim)
    x, y = torch.from_numpy(train.features), torch.from_numpy(train.labels)
    vx, vy = torch.from_numpy(validation.features), torch.from_numpy(validation.labels)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(settings.seed)

    def step(rows: torch.Tensor) -> None:
        optimiser.zero_grad()
        loss_fn(model(x[rows]), y[rows]).backward()
        optimiser.step()

    def validate() -> float:
        loss = float(loss_fn(model(vx), vy)) if len(vx) else 0.0
        if progress:
            log.info("matcher validation loss %.4f", loss)
        return loss

    stopped = fit_epochs(model, len(x), step, validate, lambda: {k: v.clone() for k, v in model.state_dict().items()},
                         model.load_state_dict, epochs=settings.epochs, patience=settings.patience,
                         batch_size=settings.batch_size, generator=generator, min_delta=1e-4,
                         restore_best=settings.restore_best)
    return model, {"best_epoch": stopped.best_epoch, "epochs_run": stopped.epochs_run,
                   "validation_loss": round(stopped.best_loss, 5), "train_pairs": len(x), "validation_pairs": len(vx)}


def event_readers(persona: Persona, game_events: Sequence[str], adapter_flags: Sequence[str],
                  heads_npcs: Sequence[str], mode: str = "auto") -> dict[str, str]:
    """Who decides each event of this NPC the heads do not decide alone: `"matcher"` (the
    matcher alone) or `"both"` (the heads and the matcher together, `blend`). Events not in
    the mapping are the heads'.

    - `auto`:
      - on an NPC the heads were not fitted on (they learn NPCs from their labelled turns,
        and fall to about 0.6 F1 on others), the matcher decides the events its writer gave
        at least `MIN_EXAMPLES` example player lines for (`lines:` with `examples`);
      - on an NPC the heads were fitted on, those events are decided by both: the heads know
        the NPC and the matcher reads wordings its labelled turns never had (the sample
        NPCs in a new author's many voices: heads 0.80 F1, matcher 0.71, both 0.85);
      - on every NPC, the matcher decides the events the adapter has no head for (a
        studio's own events).
      An event with fewer examples stays with the heads where they know it: the matcher
      learnt to lean on the examples and reads almost nothing from a meaning alone (on NPCs
      it never saw: F1 0.41 with one example per event, 0.60 with three, 0.70 with five,
      against the heads' 0.62; `persona-agents fit-matcher --dev-examples`);
    - `matcher`: the matcher decides every event; `heads`: the heads decide every event
      (events unknown to the adapter never fire).

    The NPC's events are the game's events its persona has a rule for (all of them for a
    persona without rules, as the heads propose them)."""
    if mode not in READ_MODES:
        raise ValueError(f"read_events '{mode}': choose one of {', '.join(READ_MODES)}")
    own = [name for name in game_events if name in persona.flag_rules or not persona.flag_rules]
    if mode == "heads":
        return {}
    if mode == "matcher":
        return {name: "matcher" for name in own}
    seen = persona.id in set(heads_npcs)
    given = {name: 0 for name in own}
    for line in persona.lines:
        for name in line.events:
            given[name] = given.get(name, 0) + len(line.examples)
    readers = {}
    for name in own:
        if name not in adapter_flags:
            readers[name] = "matcher"
        elif given[name] >= MIN_EXAMPLES:
            readers[name] = "both" if seen else "matcher"
    return readers


def events_read_by_matcher(persona: Persona, game_events: Sequence[str], adapter_flags: Sequence[str],
                           heads_npcs: Sequence[str], mode: str = "auto") -> list[str]:
    """The events of this NPC the matcher decides alone (`event_readers`)."""
    readers = event_readers(persona, game_events, adapter_flags, heads_npcs, mode)
    return [name for name, who in readers.items() if who == "matcher"]


def _log_odds(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def blend(heads_p: float, heads_threshold: float, matcher_p: float, matcher_threshold: float) -> tuple[float, float]:
    """An event decided by both: the mean of the two probabilities in log-odds, against the
    mean of their thresholds in log-odds (the event fires when the heads' margin over their
    threshold and the matcher's over its own, in log-odds, add up to at least zero: one
    reader sure of it outvotes the other's doubt). Returns (probability, threshold)."""
    def mean(a: float, b: float) -> float:
        return 1 / (1 + math.exp(-(_log_odds(a) + _log_odds(b)) / 2))

    return mean(heads_p, matcher_p), mean(heads_threshold, matcher_threshold)


def heads_npcs(adapter_meta: Mapping, matcher_meta: Mapping) -> list[str]:
    """The NPCs the adapter's heads were fitted on: as `train` recorded them in
    multihead.json (so a later heads refit on a studio's NPCs counts), else as the matcher
    recorded them when it was fitted."""
    training = adapter_meta.get("training") or {}
    for record in (training.get("heads_refit_data"), training.get("data")):
        if record and "npcs" in record:
            return list(record["npcs"])
    return list(matcher_meta.get("heads_npcs", []))


#: The most examples per event a `fewer_examples_share` turn keeps (build_pairs).
FEWER_EXAMPLES_MAX = 5
#: Example player lines an event needs before `auto` hands it to the matcher on a new NPC.
MIN_EXAMPLES = 5
#: How a multihead step reads events: see `events_read_by_matcher`.
READ_MODES = ("auto", "heads", "matcher")


def event_threshold(meta: Mapping, event: str) -> float:
    """The matcher's threshold for an event it decides alone: its own where the fit chose
    one (an event common enough in the training turns, `event_thresholds` in matcher.json),
    else the one threshold for every other event (a studio's own events among them). An
    event decided with the heads (`blend`) takes the one threshold: on the sample NPCs'
    development set, 0.856 F1 after the rules against 0.840 with the events' own (the
    heads' thresholds are already calibrated per event on the NPCs they know)."""
    return float((meta.get("event_thresholds") or {}).get(event, meta["threshold"]))


class NpcMatcher:
    """The matcher for one NPC at inference: its events, meanings and example bank ready."""

    def __init__(self, model: EventMatcher, threshold: float, persona: Persona, events: Sequence[str], embedder,
                 descriptions: Mapping[str, str] | None = None, blended: Sequence[str] = (),
                 event_thresholds: Mapping[str, float] | None = None):
        self.model, self.threshold, self.events = model, float(threshold), list(events)
        #: Thresholds of their own for some events (`event_threshold`); `threshold` for the rest.
        self.event_thresholds = {name: float(t) for name, t in (event_thresholds or {}).items()}
        #: The events of `events` decided together with the heads (`blend`), not by the matcher alone.
        self.blended = frozenset(blended)
        self.embedder = embedder
        self.reader = PersonaEvents(persona, self.events, embedder, descriptions=descriptions)

    def threshold_for(self, event: str) -> float:
        return self.event_thresholds.get(event, self.threshold)

    def probabilities(self, utterance: str, line: np.ndarray | None = None,
                      npc_last_line: np.ndarray | None = None) -> dict[str, float]:
        """Each event's probability for one player line; `line` and `npc_last_line` are their
        vectors (`embedder`), the line's embedded here when not given."""
        if not self.events:
            return {}
        if line is None:
            line = self.embedder.encode([utterance])[0]
        rows = self.reader.pair_features(line, npc_last_line, utterance)
        return {name: round(float(p), 6) for name, p in zip(self.events, self.model.probabilities(rows))}


def save_matcher(folder: Path, model: EventMatcher, threshold: float, info: dict) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    meta = {"dim": model.dim, "hidden": model.hidden, "threshold": threshold, "scalars": list(SCALARS), **info}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_matcher(folder: Path) -> tuple[EventMatcher, dict] | None:
    """The adapter's matcher and its metadata, or None when the adapter has none."""
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / META_FILE).is_file():
        return None
    from safetensors.torch import load_file

    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    if meta.get("scalars") != list(SCALARS):
        raise ValueError(f"{folder / META_FILE}: the matcher was saved with features {meta.get('scalars')}, this "
                         f"version reads {list(SCALARS)}. Fix: refit it with `persona-agents fit-matcher "
                         f"--adapter {folder}`")
    model = EventMatcher(int(meta["dim"]), int(meta["hidden"]))
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    model.eval()
    return model, meta
