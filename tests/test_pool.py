"""Worker pool (bidsapp/pool.py): time limit, dead workers, SIGTERM; no worker outlives the pool."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from reliability_data import live_processes

from bidsapp import pool


def work(item):
    """Test worker function (module level: spawned workers import it)."""
    kind, value = item
    if kind == "sleep":
        time.sleep(value)
    elif kind == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "spin":  # busy, as a worker stuck in a long computation
        end = time.monotonic() + value
        while time.monotonic() < end:
            pass
    return (kind, value, os.getpid())


def children(pid: int | None = None) -> list[int]:
    """Live child processes of ``pid`` (default: this process), read from /proc; multiprocessing's
    resource tracker (one per parent, ends with it) is not a worker."""
    pid = os.getpid() if pid is None else pid
    found = []
    for child, parent, _ in live_processes():
        if parent == pid:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:  # it ended meanwhile
                continue
            if b"resource_tracker" not in cmdline:
                found.append(child)
    return found


def _run(items, **options):
    done, lost = [], []
    start = time.monotonic()
    pool.run_pool(work, items, pool.PoolOptions(**options), lambda i, r: done.append((i, r)),
                  lambda i, why: lost.append((i, why)))
    return done, lost, time.monotonic() - start


def test_every_item_done_by_the_workers():
    items = [("sleep", 0.01 * i) for i in range(6)]
    done, lost, _ = _run(items, workers=2)
    assert sorted(i for i, _ in done) == sorted(items) and lost == []
    assert len({r[2] for _, r in done}) == 2  # two worker processes shared the items
    assert children() == []


def test_an_item_past_its_time_limit_is_killed_and_the_others_land():
    items = [("sleep", 0.0), ("spin", 120.0), ("sleep", 0.0), ("sleep", 0.0)]
    done, lost, seconds = _run(items, workers=1, timeout_s=3.0)
    assert lost == [(("spin", 120.0), "timeout")]
    assert sorted(i for i, _ in done) == [("sleep", 0.0)] * 3  # a new worker took the rest
    assert seconds < 60 and children() == []


def test_a_dead_worker_loses_only_its_item():
    items = [("sleep", 0.0), ("die", 0), ("sleep", 0.0)]
    done, lost, _ = _run(items, workers=1)
    assert lost == [(("die", 0), f"died (exit -{signal.SIGKILL})")]
    assert len(done) == 2 and children() == []


def test_sigterm_stops_the_pool_and_reaps_every_worker():
    items = [("sleep", 60.0)] * 3
    timer = threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGTERM))
    start = time.monotonic()
    with pool.stop_on_signals():
        timer.start()
        with pytest.raises(pool.Interrupted) as err:
            _run(items, workers=2, grace_s=5.0)
    assert err.value.exit_code == 143 and err.value.name == "SIGTERM"
    assert time.monotonic() - start < 30 and children() == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
