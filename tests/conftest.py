"""Shared pytest fixtures. Session-scoped data are READ-ONLY: copy before modifying."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bidsapp.demo.dataset import write_dataset
from bidsapp.demo.phantom import Phantom, make_phantom
from bidsapp.validation import ValidatorUnavailableError, find_validator
from tests.components import missing

#: seed of the shared phantom dataset; the demo models were trained on other seeds
#: (bidsapp/models/demo/*/demo_training.json lists them)
PHANTOM_BIDS_SEED = 20261124


@pytest.fixture(scope="session")
def bids_validator() -> Path:
    """bids-validator-deno, found as a run finds it and started once (``--version``): tests that validate
    ask for it, so a missing or broken validator is named (skip for a user, fail under CI) instead of
    showing up as some run's exit code."""
    try:
        exe = find_validator()
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
        why = "" if proc.returncode == 0 else \
            f"{exe} --version exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
    except (ValidatorUnavailableError, OSError, subprocess.TimeoutExpired) as exc:
        why = f"cannot start: {exc} (requirements.txt)"
    if why:
        missing("bids-validator-deno", why)
    return Path(exe)


@pytest.fixture(scope="session")
def phantom_bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-subject phantom BIDS dataset (sessions, acq-/run- entities, T2w, T2starw, T2star, UNIT1 and
    MP2RAGE inversions, a healthy control) with ground truth under ``derivatives/groundtruth``.
    Written once per session; treat it as read-only."""
    root = tmp_path_factory.mktemp("phantom_bids")
    write_dataset(root, n_subjects=5, seed=PHANTOM_BIDS_SEED)
    return root


@pytest.fixture(scope="session")
def phantom_factory() -> Callable[..., Phantom]:
    """``phantom_factory(contrast, seed, **make_phantom_kwargs) -> Phantom``, cached per arguments
    (the same arguments return the same object: do not modify its arrays)."""
    cache: dict[tuple, Phantom] = {}

    def factory(contrast: str = "T2w", seed: int = 0, **kwargs) -> Phantom:
        key = (contrast, seed, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in cache:
            cache[key] = make_phantom(contrast, rng=np.random.default_rng(seed), **kwargs)
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def participant_run(bids_validator: Path, phantom_bids: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The participant level run ONCE on ``phantom_bids`` with the demo models (2 worker processes,
    input validation on, HOME unusable). Returns the output_dir; READ-ONLY: copy before modifying.
    Its exit code was 0 (the fixture fails otherwise)."""
    import os

    from bidsapp.cli import main

    out = tmp_path_factory.mktemp("participant_run") / "cordlesion"
    home = os.environ.get("HOME")
    os.environ["HOME"] = "/dev/null"  # any cache written under HOME would fail (not a folder)
    try:
        code = main([str(phantom_bids), str(out), "participant", "--demo", "--nprocs", "2",
                     "--omp-nthreads", "1", "-w", str(tmp_path_factory.mktemp("participant_work"))])
    finally:
        if home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = home
    if code != 0:
        pytest.fail(f"participant level on the phantom dataset exited {code}")
    return out
