"""Worker processes that can be stopped: a per-image time limit, SIGTERM / SIGINT, dead workers.

``concurrent.futures.ProcessPoolExecutor`` can neither stop one task (its worker cannot be killed
alone) nor shut down without waiting for the running tasks, and a worker killed by the kernel breaks
the whole pool. Here each worker is a spawned process fed one item at a time over a pipe; the parent
waits on the pipes and the processes' sentinels, so it sees at once a result, a dead worker (its item
is reported lost, a new worker takes the next item) or an item past its time limit (its worker is
killed, likewise). On SIGTERM / SIGINT (:func:`stop_on_signals`) the parent raises
:class:`Interrupted`, sends SIGTERM to every worker (each raises :class:`Interrupted` in its item,
so the atomic writers remove their temporary files), waits ``grace_s`` and SIGKILLs what is left.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: stop, clean up, report. A BaseException, as KeyboardInterrupt is, so
    that no ``except Exception`` around one image's work takes it for that image's failure."""

    def __init__(self, signum: int, summary: Any = None, not_done: int = 0) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.summary = summary
        """What was done before the signal (set by the runner)."""
        self.not_done = not_done
        """Items neither done nor failed when the signal came (set by the runner)."""

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal: 143 for SIGTERM, 130 for SIGINT (what shells and schedulers expect)."""
        return 128 + self.signum


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block (main thread only) the signals raise :class:`Interrupted`; the previous
    handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():  # signal.signal works there only
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass(frozen=True)
class PoolOptions:
    """How many workers, their set-up, the per-item time limit and the grace period on stop."""

    workers: int = 1
    timeout_s: float | None = None
    """Per item, from the moment a worker takes it (None: no limit)."""
    grace_s: float = 10.0
    """After SIGTERM, how long workers may take to clean up before SIGKILL."""
    initializer: Callable[..., None] | None = None
    initargs: tuple = ()


@dataclass
class _Worker:
    process: Any
    conn: Any
    item: Any = None
    deadline: float | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def busy(self) -> bool:
        return self.item is not None


_STARTED, _RESULT = "started", "result"


def _worker_main(conn: Any, fn: Callable[[Any], Any], initializer: Callable[..., None] | None,
                 initargs: tuple) -> None:
    """A worker: items in, results out, until told to stop (None) or signalled."""
    # a terminal's Ctrl-C reaches the whole process group: the parent decides, and SIGTERMs us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        if initializer is not None:
            initializer(*initargs)
        while True:
            item = conn.recv()
            if item is None:
                return
            conn.send((_STARTED,))  # the time limit counts from here, not from the worker's start-up
            conn.send((_RESULT, fn(item)))
    except (Interrupted, EOFError, BrokenPipeError):  # stopped by the parent, or the parent is gone
        os._exit(128 + signal.SIGTERM)


def _start(ctx: Any, fn: Callable[[Any], Any], options: PoolOptions) -> _Worker:
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_worker_main, args=(child, fn, options.initializer, options.initargs),
                          daemon=True, name="cordlesion-worker")
    process.start()
    child.close()
    return _Worker(process, parent)


def run_pool(fn: Callable[[Any], Any], items: Sequence[Any], options: PoolOptions,
             on_done: Callable[[Any, Any], None], on_lost: Callable[[Any, str], None]) -> None:
    """``fn(item)`` for every item in worker processes; ``on_done(item, result)`` for each result,
    ``on_lost(item, why)`` for an item whose worker died (``why`` = "died (exit N)") or ran past
    ``options.timeout_s`` (``why`` = "timeout"). Always stops and reaps every worker before it returns
    or raises (e.g. :class:`Interrupted`)."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a parent holding torch threads or CUDA state
    pending = collections.deque(items)
    workers: list[_Worker] = []
    try:
        while pending or any(w.busy for w in workers):
            _assign(ctx, fn, workers, pending, options)
            _collect(workers, on_done, on_lost, options.timeout_s)
            _enforce_deadlines(workers, on_lost)
    finally:
        stop_workers(workers, options.grace_s)


def _assign(ctx: Any, fn: Callable[[Any], Any], workers: list[_Worker], pending: collections.deque,
            options: PoolOptions) -> None:
    while pending and len(workers) < max(1, options.workers):
        workers.append(_start(ctx, fn, options))
    for worker in workers:
        if pending and not worker.busy:
            worker.item = pending.popleft()
            worker.deadline = None
            worker.conn.send(worker.item)


def _collect(workers: list[_Worker], on_done: Callable[[Any, Any], None],
             on_lost: Callable[[Any, str], None], timeout_s: float | None) -> None:
    """Wait for a message, a dead worker or the nearest deadline, then hand each outcome over."""
    busy = [w for w in workers if w.busy]
    deadlines = [w.deadline for w in busy if w.deadline is not None]
    timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
    ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout))
    for worker in busy:
        if _receive(worker, on_done, timeout_s):
            continue
        if worker.process.sentinel in ready or not worker.process.is_alive():
            worker.process.join()
            item = worker.item
            workers.remove(worker)
            worker.conn.close()
            if worker.process.exitcode in (128 + signal.SIGTERM, -signal.SIGTERM):
                # SIGTERM from outside: a scheduler signals every process of the job; the run stops too
                raise Interrupted(signal.SIGTERM)
            on_lost(item, f"died (exit {worker.process.exitcode})")


def _receive(worker: _Worker, on_done: Callable[[Any, Any], None], timeout_s: float | None) -> bool:
    """Read the worker's messages; True when its item is done (result handed to ``on_done``)."""
    while worker.busy and worker.conn.poll():
        try:
            kind, *payload = worker.conn.recv()
        except (EOFError, OSError):  # died while sending: its sentinel tells
            return False
        if kind == _STARTED:
            worker.deadline = time.monotonic() + timeout_s if timeout_s else None
            continue
        if kind == _RESULT:
            item, worker.item, worker.deadline = worker.item, None, None
            on_done(item, payload[0])
            return True
    return False


def _enforce_deadlines(workers: list[_Worker], on_lost: Callable[[Any, str], None]) -> None:
    now = time.monotonic()
    for worker in [w for w in workers if w.busy and w.deadline is not None and w.deadline <= now]:
        item = worker.item
        log.debug("worker %s: past its time limit, killed", worker.process.pid)
        workers.remove(worker)
        stop_workers([worker], grace_s=2.0)  # stuck in C code more often than not: a short grace
        on_lost(item, "timeout")


def stop_workers(workers: Sequence[_Worker], grace_s: float) -> None:
    """SIGTERM every live worker (idle ones are told to stop), wait up to ``grace_s``, SIGKILL the
    rest, reap all: no worker outlives the pool."""
    for worker in workers:
        if not worker.process.is_alive():
            continue
        try:
            if worker.busy:
                worker.process.terminate()
            else:
                worker.conn.send(None)
        except (OSError, BrokenPipeError):
            worker.process.terminate()
    deadline = time.monotonic() + grace_s
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            log.warning("worker %s did not stop within %.0f s: killed", worker.process.pid, grace_s)
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
