"""The phantom dataset's vertebral files: disc labels as raters leave them, and the true levels.

- ``derivatives/labels/<folder>/<image stem>_label-discs_dlabel.nii.gz`` (+ ``.json``): one voxel per disc at
  its posterior tip, SCT values, on the image's grid; written for the SAGITTAL images only, as studies label
  discs (spine-generic's name; manual-correction's layout; its sidecar's ``GeneratedBy`` list); a README and
  a ``.bidsignore``, no ``dataset_description.json`` (see :func:`write_labels_dataset`). The axial
  images of a session use them through the projection in mm; a subject without a sagittal image has none.
- ``derivatives/groundtruth/<folder>/<source entities>_desc-<suffix>Levels_dseg.nii.gz`` (+ ``.json``,
  ``.tsv``): the true level of every voxel of the ground-truth cord mask (a BIDS discrete segmentation with
  its look-up table of level names); the sidecar gives each disc's height and each phantom lesion's true
  level (``PhantomLesionLevels``, in the order of ``PhantomLesions`` of the lesion sidecar).

Only new files: the images and the existing ground truth of a seed are unchanged.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from .. import __version__
from ..analysis.levels.names import disc_name, level_name
from .files import save_nifti, write_bytes, write_json
from .phantom import Anatomy
from .vertebrae import disc_heights, disc_label_image, lesion_levels, level_truth_image

LABELS = "labels"
#: spine-generic's name for disc labels (``<image stem><ending>.nii.gz``; see analysis.levels.sources)
DISC_ENDING = "_label-discs_dlabel"


def write_disc_labels(out: Path, rel_dir: Path, image_name: str, grid: nib.Nifti1Image, anatomy: Anatomy,
                      motion: np.ndarray) -> Path:
    """The disc labels of one image (``grid``: the phantom image before the session's ``motion``)."""
    labels = disc_label_image(grid, anatomy)
    path = out / "derivatives" / LABELS / rel_dir / f"{image_name}{DISC_ENDING}.nii.gz"
    save_nifti(moved(labels, motion), path)
    values = sorted(int(v) for v in np.unique(np.asanyarray(labels.dataobj)) if v)
    heights = disc_heights(anatomy)
    write_json(path.with_name(f"{image_name}{DISC_ENDING}.json"), {
        "SpatialReference": "orig",
        "GeneratedBy": [{"Name": "cordlesion-phantom", "Version": __version__,
                         "Description": "disc labels placed by the phantom generator (bidsapp.demo)"}],
        "Description": "One voxel per intervertebral disc at its posterior tip, SCT's values (3 = C2/C3, "
                       "4 = C3/C4, ..., 8 = C7/T1).",
        "PhantomDiscs": [{"Value": v, "Name": disc_name(v), "HeightMm": round(heights[v], 3)}
                         for v in values],
    })
    return path


def write_level_truth(truth_dir: Path, stem: str, suffix: str, source: str, cord: nib.Nifti1Image,
                      anatomy: Anatomy, motion: np.ndarray) -> Path:
    """The true level map of one image's ground-truth cord (``cord``: before the session's ``motion``;
    ``source``: the image's ``bids:raw:`` URI)."""
    levels = level_truth_image(cord, anatomy)
    name = f"{stem}_desc-{suffix}Levels_dseg"
    path = truth_dir / f"{name}.nii.gz"
    save_nifti(moved(levels, motion), path)
    present = sorted(int(v) for v in np.unique(np.asanyarray(levels.dataobj)) if v)
    rows = ["index\tname"] + [f"{v}\t{level_name(v)}" for v in present]
    write_bytes(truth_dir / f"{name}.tsv", ("\n".join(rows) + "\n").encode())
    write_json(truth_dir / f"{name}.json", {
        "Description": "True vertebral level of every voxel of the ground-truth spinal cord mask (SCT "
                       "values, names in the .tsv; 0 outside the cord): the value of the nearest phantom "
                       "disc at or above the voxel's centre (level k runs from disc k down to disc k + 1).",
        "Sources": [source],
        "SpatialReference": source,
        "PhantomDiscHeightsMm": {disc_name(v): round(z, 3) for v, z in sorted(disc_heights(anatomy).items())
                                 if present and present[0] <= v <= present[-1] + 1},
        "PhantomLesionLevels": [lesion_levels(anatomy, lesion) for lesion in anatomy.lesions],
    })
    return path


def write_labels_dataset(out: Path, n_subjects: int, seed: int) -> None:
    """``derivatives/labels``'s README and ``.bidsignore``. No ``dataset_description.json``, as
    manual-correction leaves the folder: with one, ``bids-validator-deno -r`` (the pinned version)
    validates the folder as a derivative dataset without reading its ``.bidsignore`` (fixed upstream,
    bids-validator PR #331) and refuses spine-generic's names, which are not BIDS
    (``..._T2w_label-discs_dlabel``)."""
    labels = out / "derivatives" / LABELS
    write_bytes(labels / ".bidsignore", f"*{DISC_ENDING}.nii.gz\n*{DISC_ENDING}.json\n".encode())
    write_bytes(labels / "README.md", (
        "# Disc labels of the cordlesion phantoms\n\nOne voxel per intervertebral disc at its posterior tip "
        f"(`{DISC_ENDING}`, spine-generic's name), SCT's values (3 = C2/C3, ..., 8 = C7/T1), on the grid of "
        "each sagittal image. Axial images of the same session have none: their levels come from these "
        "labels through the projection in millimetres. Written by `python -m bidsapp.demo OUT --subjects "
        f"{n_subjects} --seed {seed}`.\n").encode())


def moved(img: nib.Nifti1Image, motion: np.ndarray) -> nib.Nifti1Image:
    """``img`` with its grid moved by ``motion`` (the session's rigid motion; identity: unchanged)."""
    if np.allclose(motion, np.eye(4)):
        return img
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), motion @ img.affine, img.header)
    out.set_qform(out.affine, 1)
    out.set_sform(out.affine, 1)
    return out
