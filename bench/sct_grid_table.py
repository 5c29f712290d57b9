"""The README's "Same results as SCT" table: our default outputs vs the REAL SCT 7.3's on the grid of
tests/sct_grid.py, from the files a ``make test-sct`` run leaves behind.

    CORDLESION_TEST_SCT=1 PYTHONPATH=. .venv/bin/python -m pytest -m sct_oracle tests/test_sct_real_grid.py \\
        --basetemp /tmp/grid                        # SCT's outputs: /tmp/grid/grid0/<case>/sct_*.nii.gz
    PYTHONPATH=. .venv/bin/python bench/sct_grid_table.py /tmp/grid/grid0            # this CPU
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 PYTHONPATH=. .venv/bin/python \\
        bench/sct_grid_table.py /tmp/grid/grid0                                      # limited to AVX2

Our side is recomputed here (``pipelines.segment``, default options, CPU) in the ISA this process was given;
each SCT output found (``sct_lesion_ms``, ``sct_lesion_ms_soft``, ``sct_spinalcord``) gives one row: Dice and
differing voxels for masks, mean |d| / max |d| / differing voxels for the soft map.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bidsapp import pipelines  # noqa: E402
from bidsapp.pipelines import RunOptions  # noqa: E402
from tests import sct_grid as sg  # noqa: E402

OUTPUTS = {"sct_lesion_ms.nii.gz": ("lesion_ms", "mask"),
           "sct_lesion_ms_soft.nii.gz": ("lesion_ms", "probseg"),
           "sct_spinalcord.nii.gz": ("spinalcord", "mask")}


def _folders(grid: Path) -> dict[str, Path]:
    models = grid / "models"
    found = {"lesion_ms": next((models / "ms" / "folder").glob("nnUNetTrainer*"))}
    for task, sub in (("spinalcord", "sc"), ("lesion_ms_mp2rage", "mp")):
        found[task] = next((models / sub).glob("nnUNetTrainer*"), models / sub)
    return found


def rows(grid: Path) -> list[tuple[str, str, dict]]:
    folders, out = _folders(grid), []
    for case in sg.CASES:
        d = grid / case.replace(" ", "_")
        done: dict[str, pipelines.SegmentationResult] = {}
        for name, (task, field) in OUTPUTS.items():
            if not (d / name).exists():
                continue
            if task not in done:
                done[task] = pipelines.segment(nib.load(str(d / "in.nii.gz")), task=task, models=folders,
                                               options=RunOptions(device="cpu", backend="auto"))
            ours = np.asanyarray(getattr(done[task], field).dataobj)
            ref = np.asanyarray(nib.load(str(d / name)).dataobj)
            label = f"{task} {'soft map' if field == 'probseg' else 'mask'}"
            out.append((label, case, sg.agreement(ours, ref)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="the grid folder of a test-sct run (.../grid0)")
    args = parser.parse_args()
    print("| output | image | Dice | differing voxels | soft mean abs d | soft max abs d |")
    print("|---|---|---|---|---|---|")
    for label, case, r in rows(args.grid):
        if "dice" in r:
            print(f"| {label} | {case} | {r['dice']:.5f} | {r['differing']} | | |")
        else:
            print(f"| {label} | {case} | | {r['differing']} | {r['mean_abs']:.1e} | {r['max_abs']:.1e} |")


if __name__ == "__main__":
    main()
