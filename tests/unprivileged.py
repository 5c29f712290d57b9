"""Commands run as an unprivileged user, for the tests of permissions: root writes anywhere, and CI runs as
root, so a permission test run as root proves nothing (it used to skip there, i.e. never ran in CI).

As root the command runs as ``nobody`` (setpriv, util-linux); as any other user it runs as that user. Its
files must be readable by that user: pytest's tmp folders are 0700, hence :func:`shared_folder`.

    with shared_folder() as base:
        proc = run_unprivileged([sys.executable, RUN_PY, base / "bids", base / "out", "participant"])
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
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
    argv = [str(c) for c in cmd]
    if os.geteuid() == 0:
        setpriv = executable("setpriv")
        if setpriv is None:
            missing("setpriv", "not found (util-linux): needed to drop root for a permission test")
        argv = [str(setpriv), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    full = {**os.environ, "PYTHONPATH": str(REPO), "HOME": "/nonexistent", **(env or {})}
    return subprocess.run(argv, env=full, capture_output=True, text=True, timeout=timeout)


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
