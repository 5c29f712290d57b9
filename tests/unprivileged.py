"""Commands run as an unprivileged user, for the tests of permissions: root writes anywhere, and CI runs as
root, so a permission test run as root proves nothing (it used to skip there, i.e. never ran in CI).

As root the command runs as ``nobody`` (setpriv, util-linux); as any other user it runs as that user. Its
files must be readable by that user: pytest's tmp folders are 0700, hence :func:`shared_folder`.

    with shared_folder() as base:
        proc = run_unprivileged([sys.executable, RUN_PY, base / "bids", base / "out", "participant"])
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.components import executable, missing

__all__ = ["NOBODY", "run_unprivileged", "shared_folder"]

REPO = Path(__file__).resolve().parents[1]
#: uid and gid of ``nobody`` (Debian's, and the kernel's overflow ids)
NOBODY = 65534


def run_unprivileged(cmd: Sequence[object], *, timeout: float = 300,
                     env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``cmd`` as ``nobody`` when this process is root, as this user otherwise; this tree's ``bidsapp``
    first on PYTHONPATH, HOME unusable (a run must not need it). Text output captured."""
    full = {**os.environ, "PYTHONPATH": str(REPO), "HOME": "/nonexistent", **(env or {})}
    argv = [*_drop_root(), *map(str, cmd)]
    return subprocess.run(argv, env=full, capture_output=True, text=True, timeout=timeout)


@functools.lru_cache(maxsize=1)
def _drop_root() -> tuple[str, ...]:
    """The prefix that runs a command as ``nobody`` when this process is root (none otherwise), once checked:
    ``nobody`` must be able to run this Python and import this checkout (not so under a 0700 /root)."""
    if os.geteuid() != 0:
        return ()
    setpriv = executable("setpriv")
    if setpriv is None:
        missing("setpriv", "not found (util-linux): needed to drop root for a permission test")
    prefix = (str(setpriv), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    probe = subprocess.run([*prefix, sys.executable, "-c", "import bidsapp"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO), "HOME": "/nonexistent"}, timeout=120)
    if probe.returncode != 0:
        missing("an unprivileged user", f"nobody cannot run {sys.executable} with {REPO} (a checkout or venv "
                f"under a private folder?): {probe.stderr.strip()[-300:]}")
    return prefix


@contextlib.contextmanager
def shared_folder() -> Iterator[Path]:
    """A fresh folder (0755) under the system temp folder that every user can read; removed afterwards
    (its modes restored first, so a read-only folder inside does not stop the removal)."""
    base = Path(tempfile.mkdtemp(prefix="cordlesion-unprivileged-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for folder in [base, *(p for p in base.rglob("*") if p.is_dir() and not p.is_symlink())]:
            folder.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
