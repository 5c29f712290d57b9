"""Time the vertebral level map (bidsapp.analysis.levels) against the real SCT 7.3 CLI on phantoms.

    PYTHONPATH=$PWD python bench/levels_bench.py --reps 7 [--sct /tmp/sct-oracle/venv/bin]

Ours: ``level_map`` (SCT's rule alone) and the whole per-image step (checks, rule, per-lesion columns), on a
sagittal 0.8 mm and an axial 0.5x0.5x3 mm phantom (discs of the sagittal one). SCT: ``sct_label_vertebrae
-discfile`` (a new process each time, as a user runs it), alternating with ours. Prints min/median/max.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bidsapp.analysis.lesions import lesion_labels
from bidsapp.analysis.levels import checked_rule, disc_points, lesion_levels, level_map
from bidsapp.demo.phantom import Appearance, Grid, make_anatomy, make_phantom
from bidsapp.demo.vertebrae import disc_label_image


def _phantoms():
    rng = np.random.default_rng(5)
    anatomy = make_anatomy(rng, n_lesions=4)
    look = Appearance(noise=0.02)
    sagittal_grid = Grid(orientation=("P", "S", "R"), voxel_size=(0.8,) * 3, fov_mm=(40, 48, 100))
    axial_grid = Grid(orientation=("L", "A", "S"), voxel_size=(0.5, 0.5, 3.0), fov_mm=(44, 44, 70))
    sagittal = make_phantom("T2w", rng=rng, anatomy=anatomy, look=look, grid=sagittal_grid)
    axial = make_phantom("T2w", rng=rng, anatomy=anatomy, look=look, grid=axial_grid)
    return {"sagittal": sagittal, "axial": axial}, disc_label_image(sagittal.image, anatomy)


def _whole_step(phantom, discs) -> None:
    rule, _ = checked_rule(phantom.cord, discs, "bench", bounding_only=True)
    labels = lesion_labels(phantom.lesion)
    lesion_levels(labels, rule.voxel_levels((np.asanyarray(phantom.cord.dataobj) > 0) | (labels > 0)))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _line(name: str, times: list[float]) -> str:
    return (f"{name:38s} min {min(times):7.3f} s  median {statistics.median(times):7.3f} s  "
            f"max {max(times):7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--sct", type=Path, default=Path("/tmp/sct-oracle/venv/bin"),
                        help="folder of SCT's commands (skipped when absent)")
    args = parser.parse_args()
    phantoms, disc_img = _phantoms()
    discs = disc_points(disc_img)
    work = Path(tempfile.mkdtemp(prefix="levels-bench-"))
    nib.save(disc_img, work / "discs.nii.gz")
    sct = args.sct / "sct_label_vertebrae"
    for name, ph in phantoms.items():
        nib.save(ph.image, work / f"{name}.nii.gz")
        nib.save(ph.cord, work / f"{name}_cord.nii.gz")
        cmd = [str(sct), "-i", str(work / f"{name}.nii.gz"), "-s", str(work / f"{name}_cord.nii.gz"),
               "-c", "t2", "-discfile", str(work / "discs.nii.gz"), "-ofolder", str(work / name)]
        ours, whole, theirs = [], [], []
        for _ in range(args.reps):
            ours.append(_timed(lambda ph=ph: level_map(ph.cord, discs)))
            whole.append(_timed(lambda ph=ph: _whole_step(ph, discs)))
            if sct.exists():
                theirs.append(_timed(lambda cmd=cmd: subprocess.run(cmd, check=True, capture_output=True)))
        cord_voxels = int((np.asanyarray(ph.cord.dataobj) > 0).sum())
        print(f"{name} {ph.cord.shape}, {cord_voxels} cord voxels, {args.reps} reps")
        print(_line("  ours level_map", ours))
        print(_line("  ours checks + rule + lesion columns", whole))
        if theirs:
            print(_line("  SCT 7.3 sct_label_vertebrae (CLI)", theirs))


if __name__ == "__main__":
    main()
