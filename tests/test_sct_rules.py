"""SCT's post-processing rules as bidsapp.postprocess applies them, against the oracle's copies of SCT."""
from __future__ import annotations

import numpy as np
import pytest
from nibabel import orientations as nio

from bidsapp.models.crop_metadata import CropPadding
from bidsapp.postprocess import bounding_box, keep_largest_object, padded_box
from tests import sct_oracle as sct


@pytest.mark.parametrize("seed", range(6))
def test_keep_largest_object_is_scts(seed):
    rng = np.random.default_rng(seed)
    mask = (rng.random((20, 17, 9)) > 0.7).astype(np.uint8)
    ours = keep_largest_object(mask)
    ref = sct.segment_non_ivadomed_postprocess(mask, threshold=None, keep_largest=True)
    assert ours.dtype == bool and np.array_equal(ours, ref.astype(bool))
    assert 0 < ours.sum() < mask.sum()


def test_keep_largest_is_6_connected_and_ties_go_to_the_first_object():
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # diagonal neighbours: two objects under 6-connectivity
    mask[4, 4, 3:5] = 1                # a 2-voxel object wins
    assert keep_largest_object(mask).sum() == 2 and keep_largest_object(mask)[4, 4, 3]
    tie = np.zeros((5, 5, 5), bool)
    tie[3, 3, 3] = tie[0, 0, 4] = True  # equal sizes: the one met first in C order (0, 0, 4)
    kept = keep_largest_object(tie)
    assert np.array_equal(kept, sct.keep_largest_object(tie.astype(np.uint8)).astype(bool))
    assert kept[0, 0, 4] and not kept[3, 3, 3]
    assert not keep_largest_object(np.zeros((3, 3, 3), bool)).any()


def _affine(codes, zooms):
    aff = np.zeros((4, 4))
    for i, (world, flip) in enumerate(nio.axcodes2ornt(codes)):
        aff[int(world), i] = flip * zooms[i]
    aff[3, 3] = 1
    return aff


def test_padded_box_pads_the_anatomical_faces():
    pads = CropPadding(superior=40, inferior=100, left=15, right=10, anterior=15, posterior=22)
    shape = (400, 400, 400)
    box = (slice(200, 210), slice(200, 210), slice(200, 210))
    # RAS, 1 mm: axis 0 points to R (high face: right), axis 1 to A, axis 2 to S
    ras = padded_box(box, _affine(("R", "A", "S"), (1.0, 1.0, 1.0)), shape, pads)
    assert ras == (slice(185, 220), slice(178, 225), slice(100, 250))
    # LPI, 0.5 mm in-plane, 2 mm slices: every face flips, mm become voxels (rounded up)
    lpi = padded_box(box, _affine(("L", "P", "I"), (0.5, 0.5, 2.0)), shape, pads)
    assert lpi == (slice(180, 240), slice(170, 254), slice(180, 260))
    # clipped to the image
    assert padded_box(box, _affine(("R", "A", "S"), (0.1, 0.1, 0.1)), shape, pads) == \
        (slice(50, 310), slice(0, 360), slice(0, 400))


def test_bounding_box():
    m = np.zeros((5, 6, 7), bool)
    m[1, 2, 3] = m[3, 4, 3] = True
    assert bounding_box(m) == (slice(1, 4), slice(2, 5), slice(3, 4))
    assert bounding_box(np.zeros((2, 2, 2), bool)) is None
