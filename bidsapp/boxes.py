"""The boxes around the spinal cord: their geometry, in voxels of the image's own array, in one place.

A box is a tuple of three half-open slices on the image's array axes. Two boxes, used two ways, two names:

- the **ROI box** (``lesion_ms --crop``; the row's :class:`~bidsapp.tasks.BoxRule` with
  ``windows="image"``): the whole image is preprocessed and only the sliding windows that overlap the box
  run, so inside it the result IS the whole image's (``NnUNetPredictor.predict(img, roi=box)``);
- the **crop box** of a model trained on crops: cut out (:func:`cut`) and segmented as an image of its own,
  the result put back on the full grid. ``lesion_ms_mp2rage``'s (``windows="crop"``): the cord's bounding
  box dilated 30 mm in-plane and 5 mm along S-I (the model's README; SCT's recipe is
  ``sct_crop_image -m SEG -dilate 30x30x5``, voxels of the array axes, which is the same box on axial 1 mm
  images); a release's ``crop_metadata.json``: :func:`padded_box` (mm per anatomical face), or the
  ``sc_crop`` detector's box (:func:`detector_box`).

Millimetres become voxels by :func:`margin_voxels`: rounded up, except that a ratio within float32 noise of
a whole number is that number (30 mm / 0.99999994 mm is 30 voxels, as on the 1 mm grid it stands for).
"""
from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from nibabel import orientations as nio
from nibabel.affines import voxel_sizes

from .models import crop_metadata
from .models.crop_metadata import CropPadding
from .tasks import BoxRule

__all__ = ["Box", "ROI_BOX", "CROP_BOX", "RATIO_TOLERANCE", "margin_voxels", "si_axis", "bounding_box",
           "dilated_box", "box_around_cord", "padded_box", "detector_box", "cut", "touches_box", "voxels"]

log = logging.getLogger(__name__)

Box = tuple[slice, ...]
#: what log lines, sidecars' readers and the docs call each box
ROI_BOX, CROP_BOX = "ROI box", "crop box"
#: relative distance to a whole number under which mm / voxel size counts as that number: float32 affines
#: carry ~1e-7 relative noise (an oblique 1 mm grid stores 0.99999994 mm); no real voxel size is that close
#: to another one
RATIO_TOLERANCE = 1e-4


def margin_voxels(mm: float, voxel_mm: float) -> int:
    """``mm`` in whole voxels of size ``voxel_mm``: rounded up, except that a ratio within
    :data:`RATIO_TOLERANCE` (relative) of a whole number is that number."""
    ratio = float(mm) / float(voxel_mm)
    nearest = round(ratio)
    if abs(ratio - nearest) <= RATIO_TOLERANCE * max(abs(ratio), 1.0):
        return int(nearest)
    return int(math.ceil(ratio))


def si_axis(affine: np.ndarray) -> int:
    """The array axis whose direction is closest to S-I."""
    rot = np.asarray(affine)[:3, :3]
    cos = np.abs(rot[2]) / np.linalg.norm(rot, axis=0)
    return int(np.argmax(cos))


def bounding_box(mask: np.ndarray) -> Box | None:
    """The half-open bounding box of ``mask``'s voxels, None when empty."""
    hit = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
           for axis in range(mask.ndim)]
    if any(h.size == 0 for h in hit):
        return None
    return tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hit)


def dilated_box(found: Box, affine: np.ndarray, shape: Sequence[int], *, margin_mm: float,
                margin_slices: int) -> Box:
    """``found`` grown on both faces by ``margin_mm`` (in voxels of each axis) on the axes across S-I and by
    ``margin_slices`` along the axis closest to S-I, clipped to ``shape``."""
    si = si_axis(affine)
    zooms = voxel_sizes(affine)
    out = []
    for axis, s in enumerate(found):
        margin = margin_slices if axis == si else margin_voxels(margin_mm, zooms[axis])
        out.append(slice(max(s.start - margin, 0), min(s.stop + margin, int(shape[axis]))))
    return tuple(out)


def box_around_cord(cord: np.ndarray, affine: np.ndarray, rule: BoxRule) -> Box | None:
    """The box a task's :class:`~bidsapp.tasks.BoxRule` puts around the cord mask ``cord`` (its ROI box or
    its crop box, as ``rule.windows`` says): the cord's bounding box dilated by ``rule.margin_mm`` in-plane
    and ``rule.margin_slices`` slices, or ``rule.margin_si_mm`` in voxels, along S-I; None: no cord."""
    found = bounding_box(cord)
    if found is None:
        return None
    slices = rule.margin_slices
    if slices is None:
        slices = margin_voxels(rule.margin_si_mm or 0.0, float(voxel_sizes(affine)[si_axis(affine)]))
    return dilated_box(found, affine, cord.shape, margin_mm=rule.margin_mm, margin_slices=slices)


def padded_box(found: Box, affine: np.ndarray, shape: Sequence[int], pads: CropPadding) -> Box:
    """``found`` grown by a release's ``crop_metadata.json`` paddings: on each array axis, the face toward
    the direction the axis points to (nibabel codes of ``affine``) gets that direction's padding, the other
    face the opposite one; mm in voxels of that axis (:func:`margin_voxels`); clipped to ``shape``."""
    codes = nio.aff2axcodes(affine)
    zooms = voxel_sizes(affine)
    by_dir = pads.by_direction()
    opposite = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
    out = []
    for axis, s in enumerate(found):
        to = codes[axis]
        lo = s.start - margin_voxels(by_dir[opposite[to]], zooms[axis])
        hi = s.stop + margin_voxels(by_dir[to], zooms[axis])
        out.append(slice(max(lo, 0), min(hi, int(shape[axis]))))
    return tuple(out)


def detector_box(img: nib.Nifti1Image, pads: CropPadding) -> Box | None:
    """The crop box of the ``sc_crop`` detector (SCT's development branch: ``sc_crop.detect(img, **pads)``,
    inclusive ``xmin..zmax`` voxel indices) when that package is installed; None otherwise or when it finds
    no cord."""
    if importlib.util.find_spec("sc_crop") is None:
        return None
    import sc_crop

    try:
        found = sc_crop.detect(img, **{k: getattr(pads, k.removeprefix("pad_"))
                                       for k in crop_metadata.PAD_KEYS})
    except RuntimeError as exc:  # no cord detected
        log.warning("sc_crop found no cord (%s); using the spinalcord mask's box", exc)
        return None
    return tuple(slice(int(found[f"{a}min"]), int(found[f"{a}max"]) + 1) for a in "xyz")


def cut(img: nib.Nifti1Image, box: Box) -> nib.Nifti1Image:
    """The sub-image ``img[box]`` with its affine shifted so every voxel keeps its position."""
    return img.slicer[box]


def touches_box(mask: np.ndarray, box: Box, shape: Sequence[int]) -> bool:
    """Whether ``mask`` (the box's array) reaches a face of ``box`` that is not the image border, i.e. a
    lesion may continue outside the box."""
    for axis, s in enumerate(box):
        lo = np.take(mask, 0, axis=axis).any() and s.start > 0
        hi = np.take(mask, -1, axis=axis).any() and s.stop < shape[axis]
        if lo or hi:
            return True
    return False


def voxels(box: Box) -> list[list[int]]:
    """``[[start, stop]] * 3``: the box as sidecars and log lines write it."""
    return [[s.start, s.stop] for s in box]
