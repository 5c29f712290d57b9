#!/usr/bin/env python3
"""Bench (issue 10 item 5): ``--nprocs`` scaling of the participant level on 8 phantom images.

Runs ``run.py BIDS OUT participant --demo --overwrite`` as a subprocess (process start, indexing,
model loading per worker included: what a user waits for), for each (workers, threads per worker)
setting, ``--repeats`` times, alternating settings. Prints min/median/max wall seconds and the
speed-up over one worker. The 8 images are all ``lesion_ms`` (T2w/T2starw) of a phantom dataset.

Usage: .venv/bin/python bench/nprocs_scaling.py [--repeats 3] [--settings 1x2,2x1,1x1] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# sub-02 (T2w run-1, run-2, T2starw), sub-03 (T2w, T2starw), sub-05 (T2w ax, T2w sag, T2starw): 8 images
PARTICIPANTS = ["02", "03", "05"]
FILTER = {"UNIT1": {"subject": "none"}}


def image_seconds(out: Path) -> float:
    """Sum of the per-image times recorded in the sidecars (load, segment, write, QC in the worker)."""
    return sum(json.loads(p.read_text())["Provenance"]["RunTimeSeconds"]
               for p in out.rglob("*_label-lesion_*_mask.json"))


def run(bids: Path, out: Path, work: Path, nprocs: int, threads: int, device: str, filt: Path) -> float:
    cmd = [sys.executable, str(ROOT / "run.py"), str(bids), str(out), "participant", "--demo", "--overwrite",
           "--skip_bids_validator", "--nprocs", str(nprocs), "--omp-nthreads", str(threads),
           "--device", device, "-w", str(work), "--participant-label", *PARTICIPANTS,
           "--bids-filter-file", str(filt)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settings", default="1x1,1x2,2x1", help="comma list of WORKERSxTHREADS")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    settings = [tuple(int(v) for v in s.split("x")) for s in args.settings.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-nprocs-", dir=args.work))
    bids = work / "bids"
    subprocess.run([sys.executable, "-m", "bidsapp.demo", str(bids), "--subjects", "5", "--seed", "7"],
                   check=True, capture_output=True, cwd=ROOT)
    filt = work / "filter.json"
    filt.write_text(json.dumps(FILTER))
    times: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    busy: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    run(bids, work / "out", work / "w", 1, 1, args.device, filt)  # warm-up: file cache, first outputs
    n_images = len(list((work / "out").rglob("*_label-lesion_*_mask.nii.gz")))
    for _ in range(args.repeats):
        for nprocs, threads in settings:
            times[(nprocs, threads)].append(run(bids, work / "out", work / "w", nprocs, threads, args.device,
                                                filt))
            busy[(nprocs, threads)].append(image_seconds(work / "out"))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs visible "
          f"({len(os.sched_getaffinity(0))} usable), python {platform.python_version()}, "
          f"device {args.device}")
    print(f"images: {n_images} (lesion_ms, demo models), repeats: {args.repeats}")
    base = statistics.median(times[settings[0]])
    for (nprocs, threads), t in times.items():
        med = statistics.median(t)
        print(f"--nprocs {nprocs} --omp-nthreads {threads}: min {min(t):6.1f} s  median {med:6.1f} s  "
              f"max {max(t):6.1f} s  ({n_images / med:.2f} images/s, x{base / med:.2f} vs first setting); "
              f"per-image work summed {statistics.median(busy[(nprocs, threads)]):6.1f} s")


if __name__ == "__main__":
    main()
