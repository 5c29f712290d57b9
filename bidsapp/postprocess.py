"""SCT's post-processing of a mask, on arrays of the input grid (the boxes around the cord: ``boxes``).

- ``keep_largest_object``: SCT 7.3 ``deepseg/inference.py`` ``segment_non_ivadomed`` (``keep_largest``:
  values below 0.001 set to 0) then ``deepseg_/postprocessing.py`` ``keep_largest_object`` (x_cOm None):
  ``scipy.ndimage.label`` with its default structure (6-connectivity in 3D), the object with the most
  voxels kept, ties going to the lowest label (the object met first in C order of the image's own
  array, which is the array SCT labels: it reorients the prediction back first).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["keep_largest_object", "SCT_LOW_VALUE"]

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
