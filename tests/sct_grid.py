"""The geometry grid on which our default outputs are compared with the REAL SCT 7.3 (``make test-sct``,
tests/test_sct_real_grid.py; bench/sct_grid_table.py prints the README table from the same cases).

Each case is a phantom (``engine_models.phantom_array``) on a grid that exercises one of SCT's numbers:
orientations RAS, LAS, LPS, PSR, RPI and an oblique one; spacings exactly on nnU-Net's 3:1 anisotropy
threshold (0.8/2.4, 0.7/2.1, 0.9/2.7: float32 puts them on either side of it unless rounded as SCT's
``Image`` does; the sagittal 0.7/2.1 one picks another resampling axis) and just off it (2.41, 2.39); a
0.9 mm axis of 60 voxels whose target size (x 0.9 / 0.8) is a .5 that float32 rounds the other way;
0.35 mm voxels; odd sizes; float32 and int16 data. Images are small: SCT's own run costs ~8-15 s a call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from tests import sct_oracle as so
from tests.engine_models import phantom_array
from tests.sct_real import model_zip

__all__ = ["CASES", "Case", "Models", "agreement", "build_models", "image"]

ORIGIN = (12.5, -40.0, 7.0)


@dataclass(frozen=True)
class Case:
    """A test image: ``shape``, voxel sizes ``zooms`` (mm), nibabel axis ``codes``, stored ``dtype``,
    ``tilt`` degrees of rotation about R-L (an oblique grid), ``mp2rage``: also run SCT's MP2RAGE
    recipe on it (1 mm images only, where SCT's voxel margins are millimetres); ``qform``: False for an
    sform-only header (SCT writes a qform, code 2)."""

    shape: tuple[int, int, int]
    zooms: tuple[float, float, float]
    codes: tuple[str, str, str]
    dtype: str = "float32"
    tilt: float = 0.0
    mp2rage: bool = False
    qform: bool = True


CASES: dict[str, Case] = {
    "RAS 0.8x0.8x2.4 f32": Case((63, 57, 17), (0.8, 0.8, 2.4), ("R", "A", "S")),
    "LAS 0.8x0.8x2.4 i16": Case((64, 56, 20), (0.8, 0.8, 2.4), ("L", "A", "S"), "int16"),
    "LPS 0.35x0.35x3 f32": Case((131, 91, 9), (0.35, 0.35, 3.0), ("L", "P", "S"), qform=False),
    "PSR 0.7x0.7x2.1 f32": Case((48, 72, 25), (0.7, 0.7, 2.1), ("P", "S", "R")),  # issue 22's 0.61 row
    "RPI 0.9x0.9x2.7 i16": Case((60, 51, 15), (0.9, 0.9, 2.7), ("R", "P", "I"), "int16"),  # 60: a .5 size
    "RPI 0.8x0.8x2.41 i16": Case((57, 49, 19), (0.8, 0.8, 2.41), ("R", "P", "I"), "int16"),
    "LAS 0.8x0.8x2.39 f32": Case((61, 55, 21), (0.8, 0.8, 2.39), ("L", "A", "S")),
    "RAS 1 mm f32": Case((51, 49, 33), (1.0, 1.0, 1.0), ("R", "A", "S"), mp2rage=True),
    "oblique 1 mm 9 deg i16": Case((45, 47, 31), (1.0, 1.0, 1.0), ("R", "A", "S"), "int16", 9.0, True),
}


def _affine(case: Case) -> np.ndarray:
    aff = np.zeros((4, 4))
    for i, (world, flip) in enumerate(nio.axcodes2ornt(case.codes)):
        aff[int(world), i] = flip * case.zooms[i]
    if case.tilt:
        c, s = math.cos(math.radians(case.tilt)), math.sin(math.radians(case.tilt))
        aff[:3, :3] = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ aff[:3, :3]
    aff[:3, 3] = ORIGIN
    aff[3, 3] = 1
    return aff


def image(case: Case, seed: int = 3) -> nib.Nifti1Image:
    """The phantom on ``case``'s grid, qform (code 1, unless ``case.qform`` is False: code 0) and sform
    (code 2) set, stored as ``case.dtype``."""
    data = phantom_array(case.shape, seed)
    if case.dtype == "int16":
        data = np.round(data).astype(np.int16)
    aff = _affine(case)
    img = nib.Nifti1Image(data, aff)
    img.set_qform(aff, 1 if case.qform else 0)
    img.set_sform(aff, 2)
    img.header.set_slope_inter(1.0, 0.0)
    return img


@dataclass(frozen=True)
class Models:
    """The release-shaped random-weight checkpoints: trainer ``folders`` by task, and their SCT ``zips``."""

    folders: dict[str, Path]
    zips: dict[str, Path]


def build_models(root: Path) -> Models:
    """lesion_ms (5 folds, ResEnc), spinalcord (noisy, one fold), lesion_ms_mp2rage (one fold) under
    ``root``, each also zipped as SCT installs a model."""
    lesion, _ = so.build_lesion_ms_release(root / "ms", "raise SystemExit('ran')\n")
    folders = {"lesion_ms": lesion, "spinalcord": so.build_spinalcord(root / "sc"),
               "lesion_ms_mp2rage": so.build_mp2rage(root / "mp")}
    zips = {task: model_zip(folder, root / f"{task}.zip") for task, folder in folders.items()}
    return Models(folders, zips)


def agreement(ours: np.ndarray, ref: np.ndarray) -> dict:
    """Dice and differing voxels of two masks, or (float maps) mean and max |difference| and the voxels
    that differ at all."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    if ref.dtype.kind == "f" and not np.isin(ref, (0, 1)).all():
        d = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
        return {"mean_abs": float(d.mean()), "max_abs": float(d.max()), "differing": int((d > 0).sum())}
    a, b = ours.astype(bool), ref.astype(bool)
    total = int(a.sum() + b.sum())
    dice = 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
    return {"dice": dice, "differing": int((a != b).sum()), "foreground": float(b.mean())}
