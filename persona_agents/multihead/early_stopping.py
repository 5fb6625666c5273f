"""Epochs of shuffled minibatches with early stopping: the one loop the small fits share
(the heads refit, the deltas' own trunk, the event matcher)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class Stopped:
    epochs_run: int
    best_epoch: int
    best_loss: float  # inf when nothing was validated


def fit_epochs(module: torch.nn.Module, n: int, step: Callable[[torch.Tensor], None],
               validate: Callable[[], float] | None, snapshot: Callable[[], Any],
               restore: Callable[[Any], None], *, epochs: int, patience: int, batch_size: int,
               generator: torch.Generator, min_delta: float, restore_best: bool = True) -> Stopped:
    """Each epoch: `step(rows)` for every minibatch of a fresh permutation of `n` rows
    (from `generator`, so a seed gives the same batches), with `module` in training mode;
    then, in eval mode, `validate()`. The fit stops after `patience` epochs without the
    validation loss falling by `min_delta`, and the best epoch's `snapshot()` is
    `restore`d (unless `restore_best` is False: the last epoch is kept). Without
    `validate`, every epoch runs and the last is kept."""
    best_state, best_loss, best_epoch, since, epoch = snapshot(), float("inf"), 0, 0, 0
    for epoch in range(1, epochs + 1):
        module.train()
        for rows in torch.randperm(n, generator=generator).split(batch_size):
            step(rows)
        module.eval()
        if validate is None:
            continue
        with torch.no_grad():
            loss = validate()
        if loss < best_loss - min_delta:
            best_state, best_loss, best_epoch, since = snapshot(), loss, epoch, 0
        else:
            since += 1
            if since >= patience:
                break
    if validate is not None and restore_best:
        restore(best_state)
    module.eval()
    return Stopped(epoch, best_epoch if validate is not None else epoch, best_loss)
