"""What a test does when the real component it needs is missing: one rule for every such test.

A plain ``make test`` on a user's machine skips, with the reason. Under CI (``CI`` set to a true value), or
when the heavy suite that needs the component is asked for explicitly (its ``asked_env`` variable is "1",
e.g. ``CORDLESION_TEST_CONTAINERS=1`` from ``make test-containers``), the test FAILS with the same reason:
a green CI means the real component ran, never that its test vanished.

    from tests.components import missing
    if shutil.which("sbatch") is None:
        missing("slurm", "sbatch not found: .ci/run installs slurm-wlm and munge")
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["beside_the_clone", "executable", "missing", "strict"]

_TRUE = {"1", "true", "yes", "on"}


def strict(asked_env: str | None = None) -> bool:
    """True under CI, or when ``asked_env`` (the heavy suite's own switch) is "1"."""
    if os.environ.get("CI", "").strip().lower() in _TRUE:
        return True
    return asked_env is not None and os.environ.get(asked_env, "").strip() == "1"


def missing(component: str, reason: str, *, asked_env: str | None = None) -> NoReturn:
    """Stop the calling test because ``component`` is missing or cannot start: FAIL when :func:`strict`,
    skip otherwise; both say ``component: reason``."""
    message = f"{component}: {reason}"
    if strict(asked_env):
        pytest.fail(f"required component missing (CI or an explicitly asked suite): {message}", pytrace=False)
    pytest.skip(message)


def executable(name: str) -> Path | None:
    """Where the command ``name`` is: next to this Python first (the venv's own tools: bosh, hadolint,
    bids-validator-deno, as bidsapp.validation finds the validator), then ``PATH``; None if nowhere.
    So a test sees exactly what a run would, and hiding a tool from both hides it from the test."""
    folders = [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]
    found = shutil.which(name, path=os.pathsep.join(f for f in folders if f))
    return Path(found) if found else None


def beside_the_clone(*parts: str) -> Path:
    """``../shared/<parts>`` beside this checkout: data and peers kept next to the clone, not in it. In a git
    worktree (``.git`` is a file naming the main repository's worktree folder) the main checkout's
    ``../shared`` is used where the worktree has none beside it, then ``/work/shared``. The first that exists,
    else the first."""
    repo = Path(__file__).resolve().parents[1]
    places = [repo.parent / "shared" / Path(*parts)]
    dot_git = repo / ".git"
    if dot_git.is_file() and dot_git.read_text().startswith("gitdir:"):
        main = Path(dot_git.read_text().split(":", 1)[1].strip()).parents[2]  # <main>/.git/worktrees/<name>
        places.append(main.parent / "shared" / Path(*parts))
    # last: the workplace's own shared folder, where CI may clone the repository away from it
    places.append(Path("/work/shared", *parts))
    return next((p for p in places if p.exists()), places[0])
