"""Lesion counts and volumes from a binary lesion mask.

A lesion is one 18-connected component of non-zero voxels (faces and edges touch, corners alone do not),
SCT 7.3's convention (``sct_analyze_lesion``: ``skimage.measure.label(connectivity=2)`` on a 3D array); the
per-lesion table (``bidsapp.analysis``) uses the same structure, so both always count the same lesions.
Volumes use the voxel size from the header zooms, so they are in mm^3 whatever the grid orientation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage

from .errors import InputImageError

log = logging.getLogger(__name__)

#: 18-connectivity (scipy's default structure would be 6-connectivity, a 3x3x3 block of ones 26)
STRUCTURE_18 = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class LesionStats:
    """Lesion count, total volume and each lesion's volume (mm^3, largest first)."""

    count: int
    total_mm3: float
    volumes_mm3: list[float] = field(default_factory=list)

    @property
    def largest_mm3(self) -> float:
        """Volume of the largest lesion, 0.0 when there is none."""
        return self.volumes_mm3[0] if self.volumes_mm3 else 0.0


def voxel_volume_mm3(img: nib.Nifti1Image) -> float:
    """Volume of one voxel in mm^3, from the first three header zooms."""
    zooms = img.header.get_zooms()[:3]
    return float(np.prod(np.asarray(zooms, dtype=np.float64)))


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 18-connected components of ``mask != 0``; returns ``(labels int32, n)``."""
    labels, n = ndimage.label(np.asarray(mask) != 0, structure=STRUCTURE_18)
    return labels, int(n)


def lesion_stats(mask: nib.Nifti1Image) -> LesionStats:
    """Count the lesions of a binary mask and measure their volumes.

    Non-zero voxels are lesion. Each volume is ``voxel count x voxel volume``; volumes are sorted
    largest first and rounded to 0.001 mm^3 (float32 zooms carry ~1e-7 relative noise), so the JSON
    and TSV outputs are stable across platforms.

    Raises :class:`InputImageError` if the mask is not 3D.
    """
    data = np.asanyarray(mask.dataobj)
    if data.ndim != 3:
        name = mask.get_filename() or "lesion mask"
        raise InputImageError(f"{name}: expected a 3D mask, got shape {data.shape}")
    labels, n = label_lesions(data)
    if n == 0:
        return LesionStats(count=0, total_mm3=0.0, volumes_mm3=[])
    voxel_mm3 = voxel_volume_mm3(mask)
    # bincount over labels counts every component's voxels in one pass; index 0 is background.
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    volumes = sorted((round(float(s) * voxel_mm3, 3) for s in sizes), reverse=True)
    total = round(float(sizes.sum()) * voxel_mm3, 3)
    return LesionStats(count=n, total_mm3=total, volumes_mm3=volumes)
