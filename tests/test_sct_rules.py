"""SCT's post-processing rules as bidsapp.postprocess applies them, against the oracle's copies of SCT."""
from __future__ import annotations

import numpy as np
import pytest

from bidsapp.postprocess import keep_largest_object
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
