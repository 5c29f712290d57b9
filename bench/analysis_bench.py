"""Lesion analysis timing: one typical mask (320 x 320 x 60, a few lesions, with and without the cord
mask) and the group-level per-lesion table over 2,000 per-image tables (synthetic TSVs on disk).

    .venv/bin/python bench/analysis_bench.py [--images 2000] [--reps 3]

Prints a JSON record; bench/RESULTS-analysis.md holds the figures and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from analysis_phantoms import TubeLesion, tube_phantom  # noqa: E402

from bidsapp.analysis import analyze_lesions  # noqa: E402
from bidsapp.analysis.tables import (  # noqa: E402
    LESION_DICTIONARY,
    combine_tables,
    lesion_tsv,
    write_table,
)

LESIONS = (TubeLesion(0.0, 1.0, -40.0, 2.0, 1.5, 6.0), TubeLesion(1.5, -1.0, -10.0, 1.5, 1.5, 4.0),
           TubeLesion(-1.0, 0.5, 15.0, 2.5, 2.0, 9.0), TubeLesion(0.5, 2.0, 45.0, 1.2, 1.0, 3.0),
           TubeLesion(12.0, 8.0, 0.0, 1.5, 1.5, 2.0))  # the last one outside the cord


def _time(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def per_image(reps: int) -> dict:
    # sagittal grid: 60 R-L slices of 0.8 mm, 320 x 320 in-plane at 0.5 mm (A-P, S-I)
    tube = tube_phantom(LESIONS, radius=5.0, tilt_deg=12.0, orientation=("R", "P", "S"),
                        voxel=(0.8, 0.5, 0.5), fov=(48.0, 160.0, 160.0))
    with_cord, analysis = _time(lambda: analyze_lesions(tube.mask, tube.cord), reps)
    without, _ = _time(lambda: analyze_lesions(tube.mask), reps)
    return {"shape": list(tube.mask.shape), "lesions": analysis.count, "with_cord_s": round(with_cord, 3),
            "without_cord_s": round(without, 3)}


def group(n: int, reps: int) -> dict:
    rng = np.random.default_rng(0)
    tube = tube_phantom(LESIONS[:3], radius=5.0)
    template = lesion_tsv(analyze_lesions(tube.mask, tube.cord)).splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n):  # 0-3 lesions per image, each its own file as the participant level writes
            path = Path(tmp) / f"sub-{i // 2:04d}_ses-{i % 2}_T2w_lesions.tsv"
            path.write_text("\n".join(template[: 1 + int(rng.integers(0, 4))]) + "\n")
            paths.append(path)

        def build() -> int:
            parts = ((p.name.split("_")[:2], p.read_text()) for p in paths)
            text = combine_tables(parts, ("participant_id", "session_id"))
            write_table(Path(tmp) / "group_lesions.tsv", text, LESION_DICTIONARY)
            return text.count("\n") - 1

        seconds, rows = _time(build, reps)
    return {"images": n, "rows": rows, "seconds": round(seconds, 3)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    record = {"per_image": per_image(args.reps), "group": group(args.images, args.reps),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "processor": platform.processor() or platform.machine()}, "reps": args.reps,
              "statistic": "median"}
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
