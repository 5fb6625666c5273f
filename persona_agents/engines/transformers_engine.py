"""`transformers`: any transformers causal LM, on any device it supports, behind the engine
contract; concurrent turns run as one batch.

Turns that arrive while the model is busy wait in a queue; the next batch takes all of
them (up to `max_batch`): one prompt pass over the batch (left-padded), each turn's
`<STATE>` row and decision, then decode steps that advance every turn at once. On a GPU
a decode step costs about the same for 1 or 8 sequences, so 8 players are served in
about the time of one; turns are never serialised behind each other's whole reply.

- Positions come from the attention mask, so a left-padded row is computed as if alone
  (its greedy tokens are those of transformers `generate`; the test compares them).
- The game's decision (`after_prefill`'s ids) continues each prompt on the prompt pass's
  cache; rows with shorter decisions are padded in the middle, masked out.
- Each turn draws from its own generator seeded with the turn's seed (the fast engine's
  TokenChooser, so both engines sample alike): a reply does not depend on which turns
  shared its batch.
- A turn that ends (end-of-turn token, a prompt marker, its token budget) leaves the
  batch at once; its cache rows are dropped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import cast

from persona_agents.engines.contract import EngineRequest, EngineResult, ends_at_marker, verdict_ids
from persona_agents.fastpath.compute import on_compute_thread


@dataclass
class _Waiting:
    request: EngineRequest
    result: EngineResult | None = None
    error: BaseException | None = None


class TransformersEngine:
    name = "transformers"

    def __init__(self, loaded, max_batch: int = 8):
        self.loaded = loaded  # persona_agents.models.LoadedModel
        self.max_batch = max_batch
        self._queue: list[_Waiting] = []
        self._queue_lock = threading.Lock()
        #: Batches run and the largest one (how much batching happened; the bench reads them).
        self.batches = 0
        self.largest_batch = 0

    def run(self, request: EngineRequest) -> EngineResult:
        waiting = _Waiting(request)
        with self._queue_lock:
            self._queue.append(waiting)
        # The compute thread runs one call at a time: turns queued meanwhile are served
        # together by the first of these calls to get there; the others find them done.
        on_compute_thread(self._serve_queue)
        if waiting.error is not None:
            raise waiting.error
        assert waiting.result is not None
        return waiting.result

    def _serve_queue(self) -> None:
        while True:
            with self._queue_lock:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            if not batch:
                return
            try:
                results = self._run_batch([w.request for w in batch])
            except BaseException as exc:  # noqa: BLE001 - the model failed: every turn of the batch reports it
                for w in batch:
                    w.error = exc
            else:
                for w, result in zip(batch, results):
                    if isinstance(result, BaseException):
                        w.error = result
                    else:
                        w.result = result

    # -- one batch, on the compute thread ------------------------------------------------

    def _run_batch(self, requests: list[EngineRequest]) -> list[EngineResult | BaseException]:
        """Each turn's result, or the error its own callback (decision, stream) raised: one
        turn's failure ends that turn only."""
        import torch
        from transformers import DynamicCache

        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(requests))
        model = self.loaded.model
        device = model.device
        with self.loaded.lock, torch.inference_mode():
            ids, mask = _left_padded([r.prompt_ids for r in requests], device)
            pads = [ids.shape[1] - len(r.prompt_ids) for r in requests]
            cache = DynamicCache()
            hidden, logits = self._forward(ids, mask, cache)
            results: list[EngineResult | BaseException] = [EngineResult([]) for _ in requests]
            states = [None if r.state_index is None else hidden[i, pads[i] + r.state_index].float().cpu()
                      for i, r in enumerate(requests)]
            # Decide, then speak: each turn's verdict on its kept row.
            extras: dict[int, list[int]] = {}
            for i, request in enumerate(requests):
                results[i] = EngineResult([], states[i])
                try:
                    verdict = request.after_prefill(states[i]) if request.after_prefill else True
                except BaseException as exc:  # noqa: BLE001 - handed to that turn's caller
                    results[i] = exc
                    continue
                extra = verdict_ids(verdict)
                if extra is not None:
                    extras[i] = extra
            rows = list(extras)
            if not rows:
                return results
            if len(rows) < len(requests):
                _keep(cache, rows, device)
                mask, logits = mask[rows], logits[rows]
            width = max(len(extras[i]) for i in rows)
            if width:
                # The decisions, padded on the left (in the middle of each sequence) so every
                # row's last position is real; a row with no decision keeps its prompt's logits.
                cont = torch.zeros((len(rows), width), dtype=torch.long, device=device)
                cont_mask = torch.zeros_like(cont)
                for r, i in enumerate(rows):
                    if extras[i]:
                        cont[r, width - len(extras[i]):] = torch.tensor(extras[i], device=device)
                        cont_mask[r, width - len(extras[i]):] = 1
                mask = torch.cat([mask, cont_mask], dim=1)
                _, cont_logits = self._forward(cont, mask, cache)
                has = torch.tensor([bool(extras[i]) for i in rows], device=device)
                logits = torch.where(has[:, None], cont_logits, logits)
            failed = self._decode([requests[i] for i in rows], [cast(EngineResult, results[i]) for i in rows],
                                  [extras[i] for i in rows], mask, logits, cache)
            for k, error in failed.items():
                results[rows[k]] = error
        return results

    @property
    def _cache_argument(self) -> str:
        # transformers 5.2x names the cache argument `cache` (`past_key_values` is deprecated).
        import inspect

        return "cache" if "cache" in inspect.signature(self.loaded.model.forward).parameters else "past_key_values"

    def _forward(self, ids, mask, cache):
        """One pass over `ids` after what `cache` holds: (the final hidden states, the last
        position's logits). The decoder stack's output is the final norm's (what the heads read)."""
        import torch

        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        captured = []
        handle = self.loaded.model.get_decoder().register_forward_hook(
            lambda module, args, output: captured.append(
                output[0] if isinstance(output, tuple) else output.last_hidden_state))
        try:
            out = self.loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                    logits_to_keep=1, **{self._cache_argument: cache})
        finally:
            handle.remove()
        return captured[0], out.logits[:, -1].to(torch.float32)

    def _decode(self, requests, results, extras, mask, logits, cache) -> dict[int, BaseException]:
        """Decode steps until every turn has ended; the errors of turns whose stream failed."""
        import torch

        from persona_agents.fastpath.sampling import SamplingSettings, TokenChooser

        device = mask.device
        tok = self.loaded.tokenizer
        choosers = []
        for request, extra in zip(requests, extras):
            s = request.sampling
            choosers.append(TokenChooser(
                SamplingSettings(temperature=s.temperature, top_p=s.top_p, repetition_penalty=s.repetition_penalty),
                [*request.prompt_ids, *extra], request.seed, logits.shape[-1]))
        failed: dict[int, BaseException] = {}
        live = list(range(len(requests)))  # batch row -> index into requests
        while live:
            chosen, still = [], []
            for row, k in enumerate(live):
                request, new_ids = requests[k], results[k].new_ids
                token = choosers[k].choose(logits[row].cpu())
                new_ids.append(token)
                try:
                    if request.on_ids is not None:
                        request.on_ids([token])
                except BaseException as exc:  # noqa: BLE001 - handed to that turn's caller
                    failed[k] = exc
                    continue
                if not _ends(request, new_ids, tok):
                    chosen.append(token)
                    still.append(row)
            if not still:
                return failed
            if len(still) < len(live):
                _keep(cache, still, device)
                mask = mask[still]
            live = [live[row] for row in still]
            step = torch.tensor(chosen, dtype=torch.long, device=device)[:, None]
            mask = torch.cat([mask, torch.ones_like(step)], dim=1)
            _, logits = self._forward(step, mask, cache)
        return failed


def _left_padded(sequences, device):
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def _keep(cache, rows, device) -> None:
    import torch

    cache.batch_select_indices(torch.tensor(rows, dtype=torch.long, device=device))


def _ends(request: EngineRequest, new_ids: list[int], tok) -> bool:
    if new_ids[-1] in request.eos_ids or len(new_ids) >= request.sampling.max_new_tokens:
        return True
    return ends_at_marker(tok, new_ids, request.stop_markers)


def run_alone(engine: TransformersEngine, request: EngineRequest) -> EngineResult:
    """One request as its own batch, on the calling thread (tests and benches)."""
    result = engine._run_batch([request])[0]
    if isinstance(result, BaseException):
        raise result
    return result
