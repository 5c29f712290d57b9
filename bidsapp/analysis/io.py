"""Reading masks (the edge: paths in, images out). Images go through ``imaging.load_image``; masks
may be all zero (no lesion), which ``load_image`` refuses for an image, so they are read here."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib

from ..errors import InputImageError


def load_mask(path: str | Path) -> nib.Nifti1Image:
    """A mask file, voxels read now; ``InputImageError`` naming the file when it cannot be read.
    Its content (3D, binary) is checked by the analysis that uses it."""
    path = Path(path)
    if not str(path).endswith((".nii", ".nii.gz")):
        raise InputImageError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        img.get_fdata()  # read now: a corrupt file fails here, with its name
    except Exception as exc:  # nibabel raises many types for broken files
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise InputImageError(f"{path}: cannot read the NIfTI file ({reason})") from exc
    return img
