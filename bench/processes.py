"""Whole processes for the benches: wall time and peak RSS of one command, the ISA cap, the backend option.

A whole process is what a user pays: interpreter start, imports, model load, the image, the output.
``timed(cmd, env)`` runs one, waits for it with ``os.wait4`` and returns its wall seconds and the peak
RSS of the process (the largest of it and its waited-for children: a shell script's tools count too).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: ``as is`` and limited to AVX2 (the ISA of older cluster nodes): oneDNN (torch's and OpenVINO's
#: convolutions) and torch's own kernels. OpenVINO's own JIT kernels (e.g. its InstanceNorm, "MVN") do
#: not read the cap in release builds: bench/openvino_window.py records which kernels ran.
ISA_ENV: dict[str, dict[str, str]] = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2",
                                                            "ATEN_CPU_CAPABILITY": "avx2"}}


def env_for(isa: str, threads: int, **extra: str) -> dict[str, str]:
    """The environment of a timed process: the ISA cap, the thread count, this repository first."""
    return {**os.environ, **ISA_ENV[isa], "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONPATH": str(ROOT), **extra}


def timed(cmd: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None) -> dict:
    """Run ``cmd`` to its end: ``{"wall_s", "peak_rss_mb", "returncode", "stdout", "stderr"}``."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(map(str, cmd)), env=dict(env), cwd=cwd, stdout=out, stderr=err,
                                text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it with its own resource usage
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        texts = out.read(), err.read()
    # ru_maxrss (KiB on Linux): the largest of the process and its waited-for children
    return {"wall_s": wall, "peak_rss_mb": round(usage.ru_maxrss / 1024), "returncode": proc.returncode,
            "stdout": texts[0], "stderr": texts[1]}


def checked(result: dict, what: str) -> dict:
    """``result`` of :func:`timed`, or exit with the command's last words."""
    if result["returncode"] != 0:
        raise SystemExit(f"{what} failed (exit {result['returncode']}):\n{result['stderr'][-3000:]}")
    return result


def backend_option(backend: str | None, program: Sequence[str]) -> list[str]:
    """``["--backend", backend]`` for our command ``program`` once it has that option; [] when none is
    asked; exit with a clear line while the option is not wired into the command yet."""
    if backend is None:
        return []
    text = subprocess.run([*program, "--help"], capture_output=True, text=True,
                          env=env_for("native", 1)).stdout
    if "--backend" not in text:
        raise SystemExit(f"{' '.join(program)} has no --backend option yet (the OpenVINO backend is not "
                         f"wired into the engine): run without --backend")
    return ["--backend", backend]


SEGMENT = [sys.executable, "-m", "bidsapp.segment"]
