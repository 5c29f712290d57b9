#!/usr/bin/env python3
"""Bench (issue 10 item 4): indexing + planning a 1,000-subject BIDS dataset of tiny files.

Ours: ``plan.index`` (pybids, validate=False, index_metadata=False, fMRIPrep-style ignores) +
``plan.route`` + ``runner.prepare`` (input checksums and up-to-date checks against output_dir).
Peer: a default ``BIDSLayout(root)`` (validation and metadata indexing on, as most tools call it) and
the same query. Both in this process, alternating, ``--repeats`` times; min/median/max wall seconds.

Usage: .venv/bin/python bench/index_1000.py [--subjects 1000] [--repeats 3] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bidsapp import plan, runner, tasks
from bidsapp.settings import Settings

# Per subject: what a typical spinal cord / brain MS dataset holds (files are empty or tiny JSON).
FILES = ["anat/{s}_T2w.nii.gz", "anat/{s}_T2w.json", "anat/{s}_acq-ax_T2starw.nii.gz",
         "anat/{s}_acq-ax_T2starw.json", "anat/{s}_UNIT1.nii.gz", "anat/{s}_UNIT1.json",
         "anat/{s}_inv-1_MP2RAGE.nii.gz", "anat/{s}_inv-2_MP2RAGE.nii.gz", "anat/{s}_T1w.nii.gz",
         "anat/{s}_T1w.json", "dwi/{s}_dwi.nii.gz", "dwi/{s}_dwi.bval", "dwi/{s}_dwi.bvec",
         "dwi/{s}_dwi.json",
         "func/{s}_task-rest_bold.nii.gz", "func/{s}_task-rest_bold.json"]
SUFFIXES = ["T2w", "T2starw", "T2star", "UNIT1"]


@dataclass(frozen=True)
class _Model:  # stands in for a located model: planning only reads its identity
    task: str
    path: Path = Path("/models")
    release: str = "bench"
    demo: bool = False
    sha256: dict = field(default_factory=lambda: {"fold_0/checkpoint_final.pth": "0" * 64})


def make_dataset(root: Path, n: int) -> int:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))
    count = 0
    for i in range(1, n + 1):
        sub = f"sub-{i:04d}"
        for pattern in FILES:
            path = root / sub / pattern.format(s=sub)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}" if path.suffix == ".json" else "")
            count += 1
    return count


def ours(root: Path, out: Path) -> int:
    settings = Settings(bids_dir=root, output_dir=out)
    rules = plan.default_rules()
    jobs = plan.route(plan.index(root, suffixes=plan.rule_suffixes(rules)), rules)
    located = {name: _Model(name) for job in jobs for name in tasks.get(job.task).models_run(settings.crop)}
    items = runner.prepare(jobs, settings, located)
    return len(items)


def peer(root: Path) -> int:
    from bids import BIDSLayout

    layout = BIDSLayout(root)
    files = layout.get(datatype="anat", suffix=SUFFIXES, extension=[".nii", ".nii.gz"])
    return len([f for f in files if "inv" not in f.entities])


def timed(fn, *args) -> tuple[float, float, int]:
    """Wall and CPU seconds (CPU time is what the work costs when the machine is shared)."""
    start, cpu = time.perf_counter(), time.process_time()
    n = fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.work))
    root = work / "bids"
    n_files = make_dataset(root, args.subjects)
    t_ours, t_peer, c_ours, c_peer = [], [], [], []
    for _ in range(args.repeats):
        dt, cpu, n_ours = timed(ours, root, work / "out")
        t_ours.append(dt)
        c_ours.append(cpu)
        dt, cpu, n_peer = timed(peer, root)
        t_peer.append(dt)
        c_peer.append(cpu)
    assert n_ours == n_peer, (n_ours, n_peer)  # same images found
    print(f"machine: {platform.platform()}, python {platform.python_version()}")
    print(f"dataset: {args.subjects} subjects, {n_files} files; images planned: {n_ours}")
    for name, t, c in (("ours (index+route+prepare)", t_ours, c_ours),
                       ("default BIDSLayout + get", t_peer, c_peer)):
        print(f"{name:32s} wall min {min(t):7.2f} s  median {statistics.median(t):7.2f} s  "
              f"max {max(t):7.2f} s   CPU median {statistics.median(c):7.2f} s")
    print(f"speed-up (median): {statistics.median(t_peer) / statistics.median(t_ours):.1f}x; "
          f"target ours <= 10 s: {'PASS' if statistics.median(t_ours) <= 10 else 'FAIL'}")


if __name__ == "__main__":
    main()
