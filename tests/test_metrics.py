"""metrics.lesion_stats against an independent flood fill and hand-built cases."""
from __future__ import annotations

from collections import deque
from itertools import product

import nibabel as nib
import numpy as np
import pytest

from bidsapp.errors import InputImageError
from bidsapp.metrics import lesion_stats

ZOOMS = (0.5, 0.7, 3.0)


def _img(data: np.ndarray, zooms=ZOOMS) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data.astype(np.uint8), np.diag([*zooms, 1.0]))
    img.header.set_zooms(zooms)
    return img


def _flood_fill_sizes(mask: np.ndarray) -> list[int]:
    """Component sizes by breadth-first search over the 18 face and edge neighbours (no scipy)."""
    seen = np.zeros(mask.shape, bool)
    steps = [d for d in product((-1, 0, 1), repeat=3) if 0 < sum(map(abs, d)) <= 2]
    sizes = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, size = deque([start]), 0
        while queue:
            p = queue.popleft()
            size += 1
            for d in steps:
                q = tuple(int(p[i] + d[i]) for i in range(3))
                if all(0 <= q[i] < mask.shape[i] for i in range(3)) and mask[q] and not seen[q]:
                    seen[q] = True
                    queue.append(q)
        sizes.append(size)
    return sorted(sizes, reverse=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_flood_fill_on_random_masks(seed):
    mask = np.random.default_rng(seed).random((14, 12, 9)) < 0.12
    expected = _flood_fill_sizes(mask)
    voxel = 0.5 * 0.7 * 3.0
    stats = lesion_stats(_img(mask))
    assert stats.count == len(expected) > 5
    assert stats.volumes_mm3 == pytest.approx([s * voxel for s in expected])
    assert stats.total_mm3 == pytest.approx(mask.sum() * voxel)
    assert stats.largest_mm3 == pytest.approx(expected[0] * voxel)


def test_edge_contact_is_one_lesion_corner_contact_two():
    mask = np.zeros((7, 7, 7), bool)
    mask[1, 1, 1] = mask[2, 2, 1] = True          # touch along an edge: one lesion (18-connectivity, SCT 7.3)
    mask[4, 4, 4] = mask[5, 5, 5] = True          # touch at a corner only: two lesions
    stats = lesion_stats(_img(mask, (1.0, 1.0, 2.0)))
    assert stats.count == 3
    assert stats.volumes_mm3 == [4.0, 2.0, 2.0]   # largest first
    assert stats.total_mm3 == 8.0


def test_empty_mask_and_nonbinary_values():
    empty = lesion_stats(_img(np.zeros((4, 4, 4))))
    assert (empty.count, empty.total_mm3, empty.volumes_mm3, empty.largest_mm3) == (0, 0.0, [], 0.0)
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[0, 0, 0], labels[4, 4, 4] = 1, 2       # any non-zero value is lesion
    assert lesion_stats(_img(labels, (1.0, 1.0, 1.0))).volumes_mm3 == [1.0, 1.0]


def test_refuses_4d_mask():
    with pytest.raises(InputImageError, match="3D"):
        lesion_stats(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.uint8), np.eye(4)))
