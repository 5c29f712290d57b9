"""Time and memory of the legacy pipeline (cord mask given) on phantoms of the sizes users have.

    OMP_NUM_THREADS=1 .venv/bin/python bench/legacy_bench.py [--repeats 3]

Prints, per case: image shape, wall and CPU seconds (median of the repeats) and the process's peak
RSS. SCT users reported memory kills with these models (SCT #4612, onnxruntime's CPU arena).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np

from bidsapp import legacy
from bidsapp.demo.phantom import Grid, make_anatomy, make_phantom
from bidsapp.models import locate

CASES = {  # task: (contrast, orientation, voxel size mm, field of view mm R-L, A-P, S-I)
    "t2 sagittal 0.8 mm, 40x48x96 mm": ("t2", "T2w", ("P", "I", "R"), (0.8, 0.8, 0.8), (40, 48, 96)),
    "t2 sagittal 0.8 mm, 64x64x300 mm (whole cervical+thoracic FOV)":
        ("t2", "T2w", ("P", "I", "R"), (0.8, 0.8, 0.8), (64, 64, 300)),
    "t2_ax axial 0.5x0.5x3 mm, 40x48x96 mm": ("t2_ax", "T2w", ("L", "A", "S"), (0.5, 0.5, 3.0), (40, 48, 96)),
    "t2s axial 0.5x0.5x5 mm, 40x48x96 mm": ("t2s", "T2starw", ("L", "A", "S"), (0.5, 0.5, 5.0), (40, 48, 96)),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name, (task, contrast, orientation, voxel, fov) in CASES.items():
        rng = np.random.default_rng(5)
        ph = make_phantom(contrast, rng=rng, anatomy=make_anatomy(rng, n_lesions=3, z_range=(-40, 40)),
                          grid=Grid(orientation, voxel, fov))
        model = legacy.load_model(str(locate(task, demo=True).path), "cpu")
        data, cord = np.asanyarray(ph.image.dataobj), np.asanyarray(ph.cord.dataobj)
        walls, cpus = [], []
        for _ in range(args.repeats):
            w, c = time.perf_counter(), time.process_time()
            legacy.run_legacy(data, ph.image.affine, cord, task, model)
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{name}: shape {ph.image.shape}, wall {statistics.median(walls):.2f} s, "
              f"CPU {statistics.median(cpus):.2f} s, peak RSS so far {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
