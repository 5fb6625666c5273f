"""The one thread that runs a process's torch work.

Why one thread: torch's CPU kernels run on an OpenMP team owned by the thread that
calls them, and GNU OpenMP stops its workers from spinning between kernels as soon as
the process has more OpenMP threads than CPUs. Every thread that calls torch brings its
own team, so a server whose request threads each ran a kernel pays a sleeping worker's
wake-up (tens of microseconds) on every one of the ~150 kernels of a decode step.
Measured here on 2 cores: an int4 matrix-vector product took 52 us on the only team and
126 us once a second thread had used torch; a whole turn went from 0.80 s to 1.25 s.

So generation (the batch engines), model loading and the lore embedder all run on this
thread: callers hand it work with `on_compute_thread(fn, ...)` and wait for the result,
and engines registered with `add_engine` get a round (admit, decode step) whenever they
have work. Calls made from the compute thread itself run inline.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Protocol

log = logging.getLogger("persona_agents.fastpath")

THREADS_ENV = "PERSONA_AGENTS_TORCH_THREADS"


class Engine(Protocol):
    def has_work(self) -> bool: ...
    def round(self) -> None: ...
    def fail_all(self, error: BaseException) -> None: ...


class ComputeThread:
    def __init__(self, threads: int | None = None):
        self._threads = threads
        self._calls: deque[tuple[Future, Callable[..., Any], tuple, dict]] = deque()
        self._engines: list[Engine] = []
        self._idle: deque[Callable[[], Any]] = deque()
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="persona-agents-compute", daemon=True)
        self._thread.start()

    @property
    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Run `fn` on the compute thread and return its result (or raise its error)."""
        if self.is_current:
            return fn(*args, **kwargs)
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the compute thread has stopped (the process is exiting)")
            self._calls.append((future, fn, args, kwargs))
            self._cond.notify()
        return future.result()

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the work in hand: at exit, so that no torch kernel is still running on
        this (daemon) thread while the interpreter tears torch down (that aborts the process)."""
        with self._cond:
            self._closed = True
            self._idle.clear()
            self._cond.notify()
        if not self.is_current:
            self._thread.join(timeout)

    def when_idle(self, fn: Callable[[], Any]) -> None:
        """Run `fn` once nothing else waits (no calls, no engine work); for preparation that
        may be done later, in small pieces, such as packing weights a first turn does not need."""
        with self._cond:
            self._idle.append(fn)
            self._cond.notify()

    def add_engine(self, engine: Engine) -> None:
        with self._cond:
            self._engines.append(engine)

    def wake(self) -> None:
        """An engine has new work."""
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        import torch

        threads = self._threads or int(os.environ.get(THREADS_ENV, 0) or 0) or torch.get_num_threads()
        torch.set_num_threads(threads)
        with torch.inference_mode():
            while True:
                idle = None
                with self._cond:
                    while not self._closed and not self._calls and not self._idle and not any(
                            e.has_work() for e in self._engines):
                        self._cond.wait()
                    if self._closed:
                        for future, *_ in self._calls:
                            future.set_exception(RuntimeError("the compute thread has stopped"))
                        break
                    calls, self._calls = list(self._calls), deque()
                    engines = list(self._engines)
                    if not calls and self._idle and not any(e.has_work() for e in engines):
                        idle = self._idle.popleft()
                if idle is not None:
                    try:
                        idle()
                    except BaseException:  # noqa: BLE001 - preparation only; the work redoes it on demand
                        log.exception("idle-time preparation failed")
                    continue
                for future, fn, args, kwargs in calls:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(fn(*args, **kwargs))
                        except BaseException as exc:  # noqa: BLE001 - handed to the caller
                            future.set_exception(exc)
                for engine in engines:
                    if engine.has_work():
                        try:
                            engine.round()
                        except BaseException as exc:  # noqa: BLE001 - never kill the thread
                            log.exception("batch engine round failed")
                            engine.fail_all(exc)


_compute: ComputeThread | None = None
_compute_lock = threading.Lock()


def compute_thread() -> ComputeThread:
    """The process's compute thread, started on first use."""
    global _compute
    with _compute_lock:
        if _compute is None:
            _compute = ComputeThread()
            atexit.register(_compute.close)
        return _compute


def on_compute_thread(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run `fn(*args, **kwargs)` on the compute thread; see the module docstring."""
    return compute_thread().call(fn, *args, **kwargs)
