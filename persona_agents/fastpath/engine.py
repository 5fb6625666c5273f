"""Continuous batching: concurrent turns share the model's forward passes.

One `BatchEngine` per loaded model, run by the compute thread (compute.py). Turns
submit a `GenerationJob` and wait for it. A job's prompt pass (prefill, compute-bound)
runs in chunks of `prefill_chunk` tokens; once it is done the job replies, one decode
step at a time, together with every other replying sequence: the weights, which a decode
step is bound by, are read once for all of them. A sequence leaves the batch as soon as
it ends (end-of-turn token, a prompt marker, or its token budget), so a long reply never
holds back a short one, and a job that arrives while others decode joins them: requests
that arrive close together share the forward passes without any fixed waiting window.

Each round runs one piece of work: a prompt chunk, or a decode step for all replying
sequences, whichever belongs to the smallest job: a job in its prompt pass counts its
whole prompt, a replying one the decode steps it may still take (each worth
`decode_step_tokens` prompt tokens), less an allowance for how long the job has waited
since it last got work (`aging_tokens_per_s`), so that no job waits for ever. Why
(issue 33): a request that fills every budget has a prompt pass a few times an ordinary
one; run in one piece, it held up every turn that arrived meanwhile (an ordinary turn
sent alongside took 2.8x its time). Counting the whole prompt, not what is left of it,
keeps a long prompt behind a short one however far it has got: an ordinary turn waits
for at most the chunk under way. A turn that arrives while others reply has its prompt
pass first and then joins their decode steps.

A prompt's first `prefix_len` tokens may be shared with later prompts (an NPC's persona,
events and example lines: the sectioned prompt's version 2 puts them first; version 3
follows them with the conversation, which the next turn repeats plus one exchange):
their keys and values are kept (`prefix_cache_tokens` tokens in all, least recently
used out). A later job copies the longest run of its own prefix that a kept one shares
into its slot, and its prompt pass starts after it. Causal attention makes those keys
and values the same as a pass over the whole prompt would compute.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Sequence, cast

import torch

from .compute import ComputeThread, compute_thread
from .decoder import KVCache, LeanDecoder
from .sampling import SamplingSettings, TokenChooser

log = logging.getLogger("persona_agents.fastpath")

#: A kept prefix that a newly kept one continues but for at most this many closing tokens
#: (the `</CTX>` of last turn's conversation) is dropped: the new one serves it all.
SUPERSEDED_TAIL = 8


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many first tokens two prompts share."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def release_freed_memory() -> None:
    """Ask glibc to hand freed heap pages back to the OS (no-op elsewhere): tensors of a
    few MB are malloc'ed from the heap, which otherwise keeps its peak size."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass(eq=False)
class GenerationJob:
    """One reply to generate. The worker fills `new_ids` (the end-of-turn token included,
    as transformers does), `kept` (the final hidden state at `keep_index`) and `error`."""

    prompt_ids: Sequence[int]
    max_new_tokens: int
    sampling: SamplingSettings = SamplingSettings()
    seed: int = 0
    eos_ids: frozenset[int] = frozenset()
    #: True when the reply so far must end (a prompt marker appeared in its text).
    should_stop: Callable[[list[int]], bool] | None = None
    keep_index: int | None = None
    #: The first tokens of `prompt_ids` that many jobs share (kept in the prefix cache).
    prefix_len: int = 0
    #: Called on the compute thread right after the prompt pass with the kept hidden state
    #: (decide, then speak): False ends the job there, with no new tokens; a list of token
    #: ids continues the prompt with them (the game's decision) before the reply.
    after_prefill: Callable[[torch.Tensor | None], bool | list[int]] | None = None
    on_token: Callable[[int], None] | None = None
    on_end: Callable[[], None] | None = None
    new_ids: list[int] = field(default_factory=list)
    kept: torch.Tensor | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    # worker bookkeeping
    slot: int = -1
    chooser: TokenChooser | None = None  # set once the prompt pass is done: the job replies
    prefilled: int = 0  # prompt tokens already in the cache
    reused_from: tuple[int, ...] | None = None  # the kept prefix its prompt pass started from
    last_served: float = 0.0  # when it was submitted or last got a prompt chunk or decode step
    last_hidden: torch.Tensor | None = None


class BatchEngine:
    """The jobs of one model, run in rounds by the compute thread; `generate` is safe from
    any thread."""

    def __init__(self, decoder: LeanDecoder, vocab_size: int, max_batch: int = 8, initial_length: int = 512,
                 compute: ComputeThread | None = None, prefill_chunk: int = 128, decode_step_tokens: int = 10,
                 aging_tokens_per_s: float = 100.0, prefix_cache_tokens: int = 4096):
        if prefill_chunk < 1:
            raise ValueError("prefill_chunk must be at least 1")
        # Measured on the embedded model (2-core CPU): a decode step 15 ms, a prompt token
        # 1.4 ms in a long pass; a 128-token chunk 0.18 s, and a 64-token one 0.11 s (a
        # pass reads all the weights, so small chunks cost more per token).
        self.prefill_chunk = prefill_chunk
        self.decode_step_tokens = decode_step_tokens
        self.aging_tokens_per_s = aging_tokens_per_s
        # prompt prefix ids -> (keys, values) per layer, (kv_heads, len, head_dim) each
        self._prefixes: OrderedDict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = OrderedDict()
        self.prefix_cache_tokens = prefix_cache_tokens
        #: Jobs whose prompt pass started from a kept prefix (all or part of theirs), and jobs
        #: that computed and kept one.
        self.prefix_hits = self.prefix_misses = 0
        #: Prompt tokens whose prompt pass the prefix cache saved.
        self.prefix_reused_tokens = 0
        self.decoder = decoder
        self.vocab_size = vocab_size
        self.max_batch = max_batch
        self._length = initial_length
        self._cache: KVCache | None = None
        self._pending: deque[GenerationJob] = deque()
        self._active: list[GenerationJob | None] = []  # index = cache slot
        self._lock = threading.Lock()
        self.max_active_seen = 0
        #: How often a grown cache was given back (tests and benches read it).
        self.released = 0
        self._compute = compute or compute_thread()
        self._compute.add_engine(self)
        # The weights of batched steps are packed while nothing runs (about 0.7 s for the
        # embedded model): a process is ready for its first turn without waiting for them.
        for job in decoder.batch_packing_jobs():
            self._compute.when_idle(job)

    # -- the callers' side -----------------------------------------------------------------

    def generate(self, job: GenerationJob, timeout: float | None = None) -> GenerationJob:
        if self._compute.is_current:
            raise RuntimeError("generate() was called on the compute thread, which would wait for itself")
        job.last_served = time.monotonic()
        with self._lock:
            self._pending.append(job)
        self._compute.wake()
        if not job.done.wait(timeout):
            raise TimeoutError(f"generation did not finish within {timeout} s")
        if job.error is not None:
            raise job.error
        return job

    # -- the compute thread's side ---------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self._pending) or self._busy()

    def round(self) -> None:
        """Start the waiting jobs that have a free slot, then run one piece of work: a
        prompt chunk or a decode step, for the smallest job (see above)."""
        while True:
            with self._lock:
                if not self._pending or self._free_slot() is None:
                    break
                job = self._pending.popleft()
            self._start(job)
        prefilling = [job for job in self._active if job is not None and job.chooser is None]
        replying = [job for job in self._active if job is not None and job.chooser is not None]
        if prefilling:
            now = time.monotonic()
            first = min(prefilling, key=lambda job: self._priority(job, now))
            if not replying or self._priority(first, now) <= min(self._priority(job, now) for job in replying):
                self._prefill_chunk(first)
                replying = []
        if replying:
            self._step()
        self._release_if_idle()

    def _priority(self, job: GenerationJob, now: float) -> float:
        """The job's size in prompt tokens, less the waiting allowance: lowest goes first."""
        if job.chooser is None:
            left = len(job.prompt_ids)
        else:
            left = (job.max_new_tokens - len(job.new_ids)) * self.decode_step_tokens
        return left - self.aging_tokens_per_s * (now - job.last_served)

    def _release_if_idle(self) -> None:
        """Give a grown cache back once nothing runs: one long prompt must not keep its
        memory for the life of the process (the next job allocates the usual size)."""
        cache = self._cache
        if cache is None or cache.max_len <= self._length or self._busy():
            return
        with self._lock:
            if self._pending:
                return
        self._cache = None
        self.released += 1
        release_freed_memory()

    def _busy(self) -> bool:
        return any(job is not None for job in self._active)

    def _free_slot(self) -> int | None:
        for slot, job in enumerate(self._active):
            if job is None:
                return slot
        return len(self._active) if len(self._active) < self.max_batch else None

    def _ensure_cache(self, slots: int, length: int) -> KVCache:
        """A cache with at least `slots` slots of `length` positions, keeping what it holds."""
        cache = self._cache
        if cache is not None and cache.slots >= slots and cache.max_len >= length:
            return cache
        new_slots = max(slots, cache.slots if cache else 0)
        new_len = max(self._length, cache.max_len if cache else 0)
        while new_len < length:
            new_len *= 2
        grown = self.decoder.new_cache(new_slots, new_len)
        if cache is not None:
            for old, new in ((cache.k, grown.k), (cache.v, grown.v)):
                for a, b in zip(old, new):
                    b[: cache.slots, :, : cache.max_len] = a
        self._cache = grown
        return grown

    def _start(self, job: GenerationJob) -> None:
        """Give a waiting job a cache slot; its prompt pass runs in later rounds."""
        try:
            if not job.prompt_ids:
                raise ValueError("empty prompt")
            if job.max_new_tokens < 1:
                raise ValueError("max_new_tokens must be at least 1")
            slot = cast(int, self._free_slot())  # started only while a slot is free
            self._ensure_cache(slot + 1, len(job.prompt_ids) + job.max_new_tokens)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            self._finish(job, error=exc)
            return
        job.slot = slot
        if slot == len(self._active):
            self._active.append(job)
        else:
            self._active[slot] = job
        self._use_prefix(job)

    def _prefix_of(self, job: GenerationJob) -> tuple[int, ...] | None:
        """The job's shareable prefix, when it has one the cache can serve: at least one
        prompt token after it, and the kept position (the heads' row) not inside it."""
        n = job.prefix_len
        keep = job.keep_index if job.keep_index is None or job.keep_index >= 0 else len(job.prompt_ids) + job.keep_index
        if n <= 0 or n >= len(job.prompt_ids) or (keep is not None and keep < n) or self.prefix_cache_tokens < n:
            return None
        return tuple(job.prompt_ids[:n])

    def _use_prefix(self, job: GenerationJob) -> None:
        """Start the job's prompt pass after the longest run of its prefix that a kept prefix
        shares: all of it for a prompt that opens like the last one (sectioned version 2),
        up to the newest exchange for the next turn of a conversation (version 3: persona,
        then the conversation, which grows by one exchange a turn)."""
        key = self._prefix_of(job)
        if key is None or not self._prefixes:
            return
        best, n = max(((cached, _common_length(cached, key)) for cached in self._prefixes), key=lambda found: found[1])
        if n == 0:
            return
        self._prefixes.move_to_end(best)
        keys, values = self._prefixes[best]
        cache = cast(KVCache, self._cache)
        for layer, (k, v) in enumerate(zip(keys, values)):
            cache.k[layer][job.slot, :, :n] = k[:, :n]
            cache.v[layer][job.slot, :, :n] = v[:, :n]
        job.prefilled = n
        job.reused_from = best
        self.prefix_hits += 1
        self.prefix_reused_tokens += n

    def _keep_prefix(self, job: GenerationJob) -> None:
        """Keep the prefix the job has just computed (its prompt pass has passed it)."""
        key = self._prefix_of(job)
        if key is None or key in self._prefixes:
            return
        cache, n = cast(KVCache, self._cache), len(key)
        self._prefixes[key] = ([k[job.slot, :, :n].clone() for k in cache.k],
                               [v[job.slot, :, :n].clone() for v in cache.v])
        self.prefix_misses += 1
        # The conversation's last prefix, which this one continues but for its closing
        # tokens, serves nothing this one does not: drop it rather than hold both.
        old = job.reused_from
        if old is not None and old in self._prefixes and _common_length(old, key) >= len(old) - SUPERSEDED_TAIL:
            del self._prefixes[old]
        while sum(len(k) for k in self._prefixes) > self.prefix_cache_tokens:
            self._prefixes.popitem(last=False)

    def _prefill_chunk(self, job: GenerationJob) -> None:
        """The job's next `prefill_chunk` prompt tokens; after the last, it starts replying."""
        try:
            prompt = job.prompt_ids
            begin, end = job.prefilled, min(len(prompt), job.prefilled + self.prefill_chunk)
            if begin < job.prefix_len < end:
                end = job.prefix_len  # a chunk ends where the shareable prefix does
            keep_at = None if job.keep_index is None else (
                job.keep_index if job.keep_index >= 0 else len(prompt) + job.keep_index)
            keep = [end - 1 - begin] if end == len(prompt) else []
            if keep_at is not None and begin <= keep_at < end:
                keep.append(keep_at - begin)
            hidden = self.decoder.prefill(cast(KVCache, self._cache), job.slot, list(prompt[begin:end]), keep,
                                          start=begin)
            job.prefilled = end
            job.last_served = time.monotonic()
            if end == job.prefix_len:
                self._keep_prefix(job)
            if keep_at is not None and begin <= keep_at < end:
                job.kept = hidden[-1].clone()
            if end < len(prompt):
                return
            verdict = True if job.after_prefill is None else job.after_prefill(job.kept)
            if verdict is False:
                self._finish(job)  # decided not to speak
                return
            if isinstance(verdict, list) and verdict:
                hidden = self._continue(job, verdict)
            job.chooser = TokenChooser(job.sampling, list(job.prompt_ids), job.seed, self.vocab_size)
            self.max_active_seen = max(self.max_active_seen,
                                       sum(j is not None and j.chooser is not None for j in self._active))
            self._accept(job, self.decoder.logits(hidden[:1])[0])
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            log.debug("prefill failed", exc_info=True)
            self._finish(job, error=exc)

    def _continue(self, job: GenerationJob, ids: list[int]) -> torch.Tensor:
        """Run `ids` after the job's prompt, on its cache slot (a few tokens: in one piece);
        they become part of the prompt. Returns the last position's hidden state."""
        start = len(job.prompt_ids)
        job.prompt_ids = [*job.prompt_ids, *ids]
        cache = self._ensure_cache(job.slot + 1, len(job.prompt_ids) + job.max_new_tokens)
        hidden = self.decoder.prefill(cache, job.slot, ids, [-1], start=start)
        job.prefilled = len(job.prompt_ids)
        return hidden

    def _step(self) -> None:
        """One decode step for every replying sequence (rows 0..last replying slot, so the
        cache is read as a view; free slots ride along as one-token dummies, but a slot
        whose prompt pass is under way must not be written, so then only replying rows go)."""
        last = max(slot for slot, job in enumerate(self._active) if job is not None and job.chooser is not None)
        rows = self._active[: last + 1]
        if any(job is not None and job.chooser is None for job in rows):
            slots = [i for i, job in enumerate(rows) if job is not None and job.chooser is not None]
        else:
            slots = list(range(last + 1))
        jobs = [rows[i] for i in slots]
        tokens = [job.new_ids[-1] if job else 0 for job in jobs]
        positions = [len(job.prompt_ids) + len(job.new_ids) - 1 if job else 0 for job in jobs]
        try:
            hidden = self.decoder.decode(cast(KVCache, self._cache), slots, tokens, positions)
            live = [i for i, job in enumerate(jobs) if job is not None]
            logits = self.decoder.logits(hidden[live], decode=True)
        except BaseException as exc:  # noqa: BLE001
            log.exception("decode step failed")
            self.fail_all(exc)
            return
        now = time.monotonic()
        for row, index in enumerate(live):
            cast(GenerationJob, jobs[index]).last_served = now
            self._accept(cast(GenerationJob, jobs[index]), logits[row])

    def _accept(self, job: GenerationJob, logits: torch.Tensor) -> None:
        try:
            token = cast(TokenChooser, job.chooser).choose(logits)  # set when the job was admitted
            job.new_ids.append(token)
            if job.on_token is not None:
                job.on_token(token)
            ended = (token in job.eos_ids or len(job.new_ids) >= job.max_new_tokens
                     or (job.should_stop is not None and job.should_stop(job.new_ids)))
        except BaseException as exc:  # noqa: BLE001
            self._finish(job, error=exc)
            return
        if ended:
            self._finish(job)

    def _finish(self, job: GenerationJob, error: BaseException | None = None) -> None:
        if 0 <= job.slot < len(self._active) and self._active[job.slot] is job:
            self._active[job.slot] = None
            while self._active and self._active[-1] is None:
                self._active.pop()
        if error is None and job.on_end is not None:
            try:
                job.on_end()
            except BaseException as exc:  # noqa: BLE001
                error = exc
        job.error = error
        job.done.set()

    def fail_all(self, error: BaseException) -> None:
        for job in [j for j in self._active if j is not None]:
            self._finish(job, error=error)
        with self._lock:
            pending, self._pending = list(self._pending), deque()
        for job in pending:
            self._finish(job, error=error)
