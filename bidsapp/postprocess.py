"""SCT's post-processing of a mask and the box a crop release asks for, on arrays of the input grid.

- ``keep_largest_object``: SCT 7.3 ``deepseg/inference.py`` ``segment_non_ivadomed`` (``keep_largest``:
  values below 0.001 set to 0) then ``deepseg_/postprocessing.py`` ``keep_largest_object`` (x_cOm None):
  ``scipy.ndimage.label`` with its default structure (6-connectivity in 3D), the object with the most
  voxels kept, ties going to the lowest label (the object met first in C order of the image's own
  array, which is the array SCT labels: it reorients the prediction back first).
- ``padded_box``: the cord box grown by ``crop_metadata.json``'s paddings (mm per anatomical face,
  rounded up to voxels, clipped to the image), as SCT's development branch crops for a release
  trained on crops.
"""
from __future__ import annotations

import math

import numpy as np
from nibabel import orientations as nio
from nibabel.affines import voxel_sizes
from scipy import ndimage

from .models.crop_metadata import CropPadding

__all__ = ["keep_largest_object", "bounding_box", "padded_box", "SCT_LOW_VALUE"]

SCT_LOW_VALUE = 0.001  # ivadomed's binarize_with_low_threshold, as SCT replicates it


def keep_largest_object(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected object of ``mask`` (bool or 0/1), as SCT's ``spinalcord`` keeps it."""
    data = np.asarray(mask)
    data = np.where(data < SCT_LOW_VALUE, 0, data) if data.dtype != bool else data
    labeled, n = ndimage.label(data)
    if n <= 1:
        return data != 0
    largest = int(np.bincount(labeled.ravel())[1:].argmax()) + 1
    return labeled == largest


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The half-open bounding box of ``mask``'s voxels, None when empty."""
    hit = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
           for axis in range(mask.ndim)]
    if any(h.size == 0 for h in hit):
        return None
    return tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hit)


def padded_box(box: tuple[slice, ...], affine: np.ndarray, shape: tuple[int, ...],
               pads: CropPadding) -> tuple[slice, ...]:
    """``box`` grown by ``pads``: on each array axis, the face toward the direction the axis points to
    (nibabel codes of ``affine``) gets that direction's padding, the other face the opposite one; mm
    rounded up to whole voxels of that axis; clipped to ``shape``."""
    codes = nio.aff2axcodes(affine)
    zooms = voxel_sizes(affine)
    by_dir = pads.by_direction()
    opposite = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
    out = []
    for axis, s in enumerate(box):
        to = codes[axis]
        lo = s.start - math.ceil(by_dir[opposite[to]] / float(zooms[axis]))
        hi = s.stop + math.ceil(by_dir[to] / float(zooms[axis]))
        out.append(slice(max(lo, 0), min(hi, int(shape[axis]))))
    return tuple(out)
