"""Vertebral identity of the phantoms: which disc is which, where its posterior tip is, each true level.

The phantom's vertebral column (:mod:`bidsapp.demo.phantom`) repeats every ``vertebra_period`` mm along S-I;
the disc of each period is the slab whose phase lies above ``DISC_PHASE``. Here the discs get SCT's values
(``bidsapp.analysis.levels.names``: 3 = C2/C3, ..., 8 = C7/T1): the disc nearest the anatomy's height 0 is
C4/C5 (:data:`CENTRE_DISC`), so the 88-110 mm field of view of a demo image holds about six discs, from
C1/C2 down to C7/T1, as a cervical scan does. Nothing here draws a random number: the phantom images and
masks of a seed stay byte-identical.

A disc's label is one voxel at its posterior tip (the convention of SCT, spine-generic and
manual-correction): the point of the vertebral body's posterior surface in the cord's mid-sagittal plane, at
the disc's mid-height.
The true level of a point is the value of the nearest disc at or above it (level k runs from disc k down to
disc k + 1; above C1's top, no level); the phantom's discs are horizontal slabs, so a point's level depends on
its height only.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np

from ..analysis.levels.names import DISC_VALUES, level_name
from .phantom import BODY_GAP_MM, DISC_PHASE, Anatomy, Lesion

#: SCT value of the disc nearest the anatomy's height 0 (C4/C5)
CENTRE_DISC = 5
#: phase of a disc's mid-height within its vertebral period (the disc spans DISC_PHASE to 1)
_DISC_MIDDLE = (DISC_PHASE + 1.0) / 2.0


def disc_heights(anatomy: Anatomy) -> dict[int, float]:
    """SCT disc value -> height (RAS z, mm) of the disc's middle, for every value 1-25 (superior discs
    higher, smaller values)."""
    period, phase = anatomy.vertebra_period, anatomy.vertebra_phase
    centre = round(phase - _DISC_MIDDLE)  # the period whose disc lies within half a period of z = 0
    return {CENTRE_DISC - k: (centre + k + _DISC_MIDDLE - phase) * period
            for k in range(CENTRE_DISC - max(DISC_VALUES), CENTRE_DISC - min(DISC_VALUES) + 1)}


def disc_tips(anatomy: Anatomy) -> dict[int, np.ndarray]:
    """SCT disc value -> RAS mm of the disc's posterior tip (mid-sagittal plane of the cord, mid-height)."""
    tips = {}
    for value, z in disc_heights(anatomy).items():
        cx, cy = anatomy.centreline(np.array([z]))
        _, ry = anatomy.radii(np.array([z]))
        y = cy[0] + ry[0] + anatomy.csf_margin[1] + BODY_GAP_MM  # the body's posterior surface
        tips[value] = np.array([cx[0], y, z])
    return tips


def true_levels(anatomy: Anatomy, z: np.ndarray) -> np.ndarray:
    """The true SCT level value at each height ``z`` (mm): the value of the nearest disc at or above it;
    0 above the top of C1."""
    heights = disc_heights(anatomy)
    values = np.array(sorted(heights, reverse=True))  # inferior disc first: heights increasing
    ordered = np.array([heights[v] for v in values])
    above = np.searchsorted(ordered, np.asarray(z, float), side="left")  # first disc at or above
    return np.where(above < len(values), values[np.minimum(above, len(values) - 1)], 0)


def disc_label_image(grid: nib.Nifti1Image, anatomy: Anatomy) -> nib.Nifti1Image:
    """One voxel per disc at its posterior tip on ``grid``'s voxels (uint8 SCT values, 0 elsewhere); discs
    whose tip falls outside the grid are left out. Header codes as the phantom's (qform and sform 1)."""
    data = np.zeros(grid.shape[:3], np.uint8)
    to_voxel = np.linalg.inv(grid.affine)
    for value, tip in sorted(disc_tips(anatomy).items()):
        ijk = np.rint(to_voxel[:3, :3] @ tip + to_voxel[:3, 3]).astype(int)
        if all(0 <= i < n for i, n in zip(ijk, data.shape, strict=True)):
            data[tuple(ijk)] = value
    return _on_grid(grid, data)


def level_truth_image(cord: nib.Nifti1Image, anatomy: Anatomy) -> nib.Nifti1Image:
    """The true level of every voxel of the ground-truth cord mask ``cord`` (by its centre's height),
    uint8 on its grid, 0 outside the cord."""
    mask = np.asanyarray(cord.dataobj) > 0
    voxels = np.argwhere(mask)
    z = cord.affine[2, :3] @ voxels.T + cord.affine[2, 3]
    data = np.zeros(mask.shape, np.uint8)
    data[tuple(voxels.T)] = true_levels(anatomy, z)
    return _on_grid(cord, data)


def lesion_levels(anatomy: Anatomy, lesion: Lesion) -> dict[str, object]:
    """A lesion's true level (that of its centre, where most of its volume lies) and every level its S-I
    extent touches (superior first), as names."""
    top, bottom = lesion.z + lesion.semi_axes[2], lesion.z - lesion.semi_axes[2]
    low, high = true_levels(anatomy, np.array([top, bottom]))
    centre = int(true_levels(anatomy, np.array([lesion.z]))[0])
    return {"VertLevel": level_name(centre) if centre else None,
            "VertLevels": [level_name(v) for v in range(max(int(low), 1), int(high) + 1)]}


def _on_grid(reference: nib.Nifti1Image, data: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, reference.affine)
    img.set_qform(reference.affine, code=1)
    img.set_sform(reference.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms(reference.header.get_zooms()[:3])
    return img
