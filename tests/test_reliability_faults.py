"""Fault rows of docs/RELIABILITY.md: SIGKILL at random points, a full disk, Ctrl-C.

Nothing half-written may ever appear under a final name: every visible .nii.gz must load (whole gzip
stream, CRC checked) and every .json must parse, after every kill.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_data import (
    ENV_1THREAD,
    RUN_PY,
    HalfThenENOSPC,
    main_in_process,
    masks,
    reference_run,
    run_app,
    scan_outputs,
    tiny_bids,
)

from bidsapp import cli, derivatives
from tests.components import missing

FAST = ["--demo", "--skip_bids_validator", "--nprocs", "1", "--omp-nthreads", "1"]
N_KILLS = 8
KILL_LOOP_BUDGET_S = 120.0  # a guard for an overloaded machine; about 15 s on a quiet one


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_bids(tmp_path_factory.mktemp("rel_faults") / "bids", n_subjects=2)


def _start(bids: Path, out: Path, *extra: str) -> subprocess.Popen:
    # A new session: the kill reaches the app and any worker it started, as a scheduler's would.
    return subprocess.Popen([sys.executable, str(RUN_PY), str(bids), str(out), "participant", *FAST, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV_1THREAD}, start_new_session=True)


class _StartedWork(logging.Handler):
    """In the child: sets ``event`` when the runner starts an image."""

    def __init__(self, event) -> None:
        super().__init__(logging.INFO)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if ": task " in record.getMessage():
            self.event.set()


def _app_child(args: list[str], event) -> None:
    # A fork of this test process runs the app: the same code as run.py without paying the torch
    # and pybids imports 8+ times (as DataLoader workers, it sets one thread before any torch work).
    import torch

    torch.set_num_threads(1)
    os.environ.update(ENV_1THREAD)
    logging.getLogger().addHandler(_StartedWork(event))
    os._exit(cli.main(args))


def _started(child, event, timeout: float = 60.0) -> bool:
    """True once the child starts an image; False if it ended (or hung) before."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if event.wait(0.05):
            return True
        if child.exitcode is not None:
            return False
    return False


def test_sigkill_at_random_points_then_rerun_completes(tiny, tmp_path, tmp_path_factory):
    ref = reference_run(tmp_path_factory, tiny)
    out = tmp_path / "out"
    rng = random.Random(20261124)
    ctx = multiprocessing.get_context("fork")
    # --overwrite: every run rewrites files that already exist, the harshest moment to be killed.
    # -w: a killed run cannot remove its default temporary work folder; keep those under tmp_path
    args = [str(tiny), str(out), "participant", *FAST, "--overwrite", "-w", str(tmp_path / "work")]
    kills, start = 0, time.monotonic()
    while kills < N_KILLS and time.monotonic() - start < KILL_LOOP_BUDGET_S:
        event = ctx.Event()
        child = ctx.Process(target=_app_child, args=(args, event))
        child.start()
        # The kill lands at a random point of the image work (indexing writes nothing).
        if _started(child, event):
            time.sleep(rng.uniform(0.0, ref.work_seconds))
        if child.exitcode is None:
            # SIGKILL, and every third time SIGTERM (what schedulers send first: also not caught)
            os.kill(child.pid, signal.SIGTERM if kills % 3 == 2 else signal.SIGKILL)
            kills += 1
        else:
            assert child.exitcode == 0, f"the app failed (exit {child.exitcode}) without being killed"
        child.join()
        if out.exists():
            scan_outputs(out)  # raises on any corrupt file under a final name
    assert kills >= N_KILLS, f"only {kills} kills in {KILL_LOOP_BUDGET_S} s"
    final = run_app([tiny, out, "participant", *FAST])  # the real run.py finishes the job
    assert final.returncode == 0, final.stderr[-2000:]
    found = scan_outputs(out)
    assert found["png"] and found["json"]  # QC pictures and sidecars were scanned too
    assert masks(out) == ref.masks  # byte for byte what an uninterrupted run writes
    assert masks(out, "*_probseg.nii.gz") == ref.probsegs
    # a killed writer may leave its temporary file: hidden (dot name), never under a final name
    assert all(Path(t).name.startswith(".") for t in found["temp"])


def test_full_disk_injected_enospc(tiny, tmp_path, monkeypatch, capsys):
    """Every output write (NIfTI and JSON share one atomic writer) hits ENOSPC after half its bytes:
    a clear error per image, no file left."""
    out = tmp_path / "out"
    real_fdopen, hits = os.fdopen, []

    def inside(path: str) -> bool:
        return str(path).startswith(str(out / "sub-"))

    def full_fdopen(fd, *a, **k):
        fh = real_fdopen(fd, *a, **k)
        return HalfThenENOSPC(fh, hits) if inside(os.readlink(f"/proc/self/fd/{fd}")) else fh

    monkeypatch.setattr(derivatives.os, "fdopen", full_fdopen)
    code = main_in_process([tiny, out, "participant", *FAST])
    err = capsys.readouterr().err
    assert code == 1, err
    assert hits, "the output writes were not reached"
    failed = [line for line in err.splitlines() if "FAILED" in line]
    assert len(failed) == 2 and all("No space left on device" in line for line in failed), failed
    found = scan_outputs(out)
    assert [n for n in found["nifti"] + found["json"] if n.startswith("sub-")] == []
    assert found["temp"] == []


def test_full_disk_real_tmpfs(tiny, tmp_path):
    """A real 600 KiB tmpfs as output_dir (needs mount rights: root, as CI; a user's machine skips, and
    test_full_disk_injected_enospc covers the same code there)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)],
                                 capture_output=True, text=True)
        why = (mounted.stderr.strip()[-300:] or f"exit {mounted.returncode}") if mounted.returncode else ""
    except OSError as exc:  # no mount command
        why = str(exc)
    if why:
        missing("tmpfs mount", f"cannot mount a tmpfs here ({why}); test_full_disk_injected_enospc covers "
                "the same code")
    try:
        (mnt / "filler").write_bytes(b"\0" * (560 * 1024))  # leave room for metadata, not for images
        res = run_app([tiny, mnt / "out", "participant", *FAST])
        assert res.returncode in (1, 73), res.stderr[-2000:]
        assert "No space left on device" in res.stderr
        found = scan_outputs(mnt / "out") if (mnt / "out").exists() else {"nifti": [], "temp": []}
        assert found["temp"] == [] and found["nifti"] == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_ctrl_c_stops_cleanly_with_130(tiny, tmp_path):
    out = tmp_path / "out"
    proc = _start(tiny, out)
    deadline = time.monotonic() + 60
    for line in proc.stderr:  # wait until an image is being processed, then press Ctrl-C
        if ": task " in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err.lower()
    assert "Traceback" not in err
    if out.exists():
        assert scan_outputs(out)["temp"] == []
