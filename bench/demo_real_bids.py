"""Run the demo models on real healthy-control scans and report what they find.

    .venv/bin/python bench/demo_real_bids.py [BIDS_DIR] [--threads 2] [--json OUT.json]

Default BIDS_DIR: ../shared/data/real-bids (T2w and T2starw of two healthy controls). For each image:
``lesion_ms`` (demo) lesion count, voxels and mm3, and the ``spinalcord`` (demo) cord volume. Healthy
controls have no lesions: every lesion voxel found is a false positive of models trained on phantoms.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bidsapp.imaging import load_image
from bidsapp.metrics import lesion_stats, voxel_volume_mm3
from bidsapp.pipelines import RunOptions, segment

DEMO_CPU = RunOptions(demo=True, device="cpu")

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-bids"


def run(bids_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(bids_dir.glob("sub-*/**/anat/*_T2*.nii.gz")):
        if not path.name.endswith(("_T2w.nii.gz", "_T2starw.nii.gz")):
            continue
        img = load_image(path)
        start = time.perf_counter()
        lesion = segment(img, task="lesion_ms", options=DEMO_CPU)
        lesion_s = time.perf_counter() - start
        cord = segment(img, task="spinalcord", options=DEMO_CPU)
        stats = lesion_stats(lesion.mask)
        cord_voxels = int(np.asarray(cord.mask.dataobj).sum())
        rows.append(
            {
                "image": path.relative_to(bids_dir).as_posix(),
                "shape": list(img.shape),
                "zooms_mm": [round(float(z), 3) for z in img.header.get_zooms()[:3]],
                "lesion_count": stats.count,
                "lesion_voxels": int(np.asarray(lesion.mask.dataobj).sum()),
                "lesion_mm3": round(stats.total_mm3, 1),
                "lesion_ms_seconds": round(lesion_s, 2),
                "cord_voxels": cord_voxels,
                "cord_mm3": round(cord_voxels * voxel_volume_mm3(img), 1),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bids_dir", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args.bids_dir)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        f"{args.threads} threads"
    )
    print("| image | shape | voxel mm | lesions | lesion voxels | lesion mm3 | lesion_ms s | cord mm3 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['image']} | {r['shape']} | {r['zooms_mm']} | {r['lesion_count']} | {r['lesion_voxels']} "
            f"| {r['lesion_mm3']} | {r['lesion_ms_seconds']} | {r['cord_mm3']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
