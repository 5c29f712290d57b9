"""bidsapp.boxes: the ROI box and the crop box around the cord, with expected boxes written out by hand;
millimetres to voxels stable under the float32 noise of a NIfTI affine (issue 22)."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio
from nibabel.affines import voxel_sizes

from bidsapp import boxes, tasks
from bidsapp.models.crop_metadata import CropPadding
from bidsapp.tasks import BoxRule

MP2RAGE = tasks.get("lesion_ms_mp2rage").crop.box


def _affine(codes, zooms, rotation=None) -> np.ndarray:
    aff = np.zeros((4, 4))
    for i, (world, flip) in enumerate(nio.axcodes2ornt(codes)):
        aff[int(world), i] = flip * zooms[i]
    aff[3, 3] = 1
    if rotation is not None:
        aff[:3, :3] = rotation @ aff[:3, :3]
    aff[:3, 3] = (-41.3, 27.9, -12.6)
    return aff


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation by up to ``max_deg`` degrees about a random axis (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(3.0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _as_stored(aff: np.ndarray, shape) -> np.ndarray:
    """The affine a reader gets back from a NIfTI file: written and read through the header (float32)."""
    img = nib.Nifti1Image(np.zeros(shape, np.uint8), aff)
    return nib.Nifti1Image.from_bytes(img.to_bytes()).affine


def test_margin_voxels_rounds_up_but_not_float32_noise():
    assert boxes.margin_voxels(30.0, 1.0) == 30
    assert boxes.margin_voxels(30.0, float(np.float32(0.99999994))) == 30  # ceil alone: 31
    assert boxes.margin_voxels(30.0, 1.0000001) == 30
    assert boxes.margin_voxels(30.0, 0.8) == 38    # 37.5 voxels: rounded up
    assert boxes.margin_voxels(10.0, 0.8) == 13    # 12.5
    assert boxes.margin_voxels(5.0, 3.0) == 2      # 1.67
    assert boxes.margin_voxels(30.0, 0.999) == 31  # 30.03: a real 0.999 mm voxel, not noise
    assert boxes.margin_voxels(0.0, 0.7) == 0


@pytest.mark.parametrize("base", [("R", "A", "S"), ("L", "A", "S"), ("L", "P", "I"), ("R", "P", "I")])
def test_mp2rage_crop_box_on_oblique_1mm_float32_affines_is_30_voxels_never_31(base):
    """Many oblique 1 mm axial grids as a NIfTI file stores them (float32): the cord's bounding box grows
    by exactly 30 voxels on both in-plane axes and 5 along S-I (axis 2: tilts up to 20 degrees), as SCT's
    ``-dilate 30x30x5`` does on such images."""
    rng = np.random.default_rng(22)
    shape = (110, 100, 60)
    cord = np.zeros(shape, bool)
    cord[50:58, 44:51, 12:40] = True
    expect = (slice(50 - 30, 58 + 30), slice(44 - 30, 51 + 30), slice(12 - 5, 40 + 5))
    plain_ceil_31 = 0
    for _ in range(60):
        aff = _as_stored(_affine(base, (1.0, 1.0, 1.0), _rotation(rng, 20.0)), shape)
        zooms = voxel_sizes(aff)
        plain_ceil_31 += any(math.ceil(30.0 / z) == 31 for z in zooms[:2])
        assert boxes.si_axis(aff) == 2
        assert boxes.box_around_cord(cord, aff, MP2RAGE) == expect
    assert plain_ceil_31 >= 10, "the affines must carry the noise that made ceil() give 31"


def test_padded_box_on_oblique_1mm_float32_affines_is_the_paddings_in_voxels():
    rng = np.random.default_rng(26)
    shape = (80, 80, 80)
    found = (slice(30, 40), slice(32, 41), slice(20, 60))
    pads = CropPadding(superior=6, inferior=9, left=4, right=3, anterior=5, posterior=2)
    # RAS: axis 0 points to R (high face right, low face left), axis 1 to A, axis 2 to S
    expect = (slice(30 - 4, 40 + 3), slice(32 - 2, 41 + 5), slice(20 - 9, 60 + 6))
    for _ in range(60):
        aff = _as_stored(_affine(("R", "A", "S"), (1.0, 1.0, 1.0), _rotation(rng, 20.0)), shape)
        assert boxes.padded_box(found, aff, shape, pads) == expect


def test_padded_box_pads_the_anatomical_faces():
    pads = CropPadding(superior=40, inferior=100, left=15, right=10, anterior=15, posterior=22)
    shape = (400, 400, 400)
    box = (slice(200, 210), slice(200, 210), slice(200, 210))
    # RAS, 1 mm: axis 0 points to R (high face: right), axis 1 to A, axis 2 to S
    ras = boxes.padded_box(box, _affine(("R", "A", "S"), (1.0, 1.0, 1.0)), shape, pads)
    assert ras == (slice(185, 220), slice(178, 225), slice(100, 250))
    # LPI, 0.5 mm in-plane, 2 mm slices: every face flips, mm become voxels (rounded up)
    lpi = boxes.padded_box(box, _affine(("L", "P", "I"), (0.5, 0.5, 2.0)), shape, pads)
    assert lpi == (slice(180, 240), slice(170, 254), slice(180, 260))
    # clipped to the image
    assert boxes.padded_box(box, _affine(("R", "A", "S"), (0.1, 0.1, 0.1)), shape, pads) == \
        (slice(50, 310), slice(0, 360), slice(0, 400))


def test_box_around_cord_margins_in_mm_and_slices():
    # PSR image: array axis 1 runs along S-I; 0.8 mm in-plane -> ceil(30 / 0.8) = 38 voxels; 3 mm slices
    aff = _affine(("P", "S", "R"), (0.8, 3.0, 0.8))
    cord = np.zeros((120, 20, 110), bool)
    cord[50:55, 8:12, 60:64] = True
    in_slices = BoxRule(margin_mm=30.0, margin_slices=5, windows="crop")
    assert boxes.box_around_cord(cord, aff, in_slices) == (slice(12, 93), slice(3, 17), slice(22, 102))
    # 5 mm along S-I on 3 mm slices: 2 slices each side (1.67 rounded up)
    assert boxes.box_around_cord(cord, aff, MP2RAGE) == (slice(12, 93), slice(6, 14), slice(22, 102))
    # the ROI box of lesion_ms --crop: 10 mm in-plane (13 voxels), 15 mm along S-I (5 slices)
    roi = tasks.get("lesion_ms").crop.box
    assert boxes.box_around_cord(cord, aff, roi) == (slice(37, 68), slice(3, 17), slice(47, 77))
    assert boxes.box_around_cord(np.zeros_like(cord), aff, MP2RAGE) is None


def test_bounding_box_and_cut():
    m = np.zeros((5, 6, 7), bool)
    m[1, 2, 3] = m[3, 4, 3] = True
    assert boxes.bounding_box(m) == (slice(1, 4), slice(2, 5), slice(3, 4))
    assert boxes.bounding_box(np.zeros((2, 2, 2), bool)) is None
    img = nib.Nifti1Image(np.arange(210, dtype=np.float32).reshape(5, 6, 7), _affine(("L", "P", "S"),
                                                                                         (0.5, 0.7, 2.0)))
    sub = boxes.cut(img, (slice(1, 4), slice(2, 5), slice(3, 4)))
    assert sub.shape == (3, 3, 1) and np.asarray(sub.dataobj)[0, 0, 0] == 1 * 42 + 2 * 7 + 3
    # every voxel keeps its position: voxel (0, 0, 0) of the cut is voxel (1, 2, 3) of the image
    np.testing.assert_allclose(sub.affine[:3, 3], (img.affine @ [1, 2, 3, 1])[:3])


def test_touches_box_only_at_faces_inside_the_image():
    shape = (20, 20, 20)
    box = (slice(0, 10), slice(5, 15), slice(5, 20))
    inside = np.zeros((10, 10, 15), bool)
    inside[4:6, 4:6, 4:6] = True
    assert not boxes.touches_box(inside, box, shape)
    at_border = inside.copy()
    at_border[0, 5, 5] = at_border[5, 5, 14] = True  # the image's own faces (start 0, stop 20)
    assert not boxes.touches_box(at_border, box, shape)
    inner_face = inside.copy()
    inner_face[9, 5, 5] = True  # axis 0 stops at 10 < 20: the lesion may go on outside the box
    assert boxes.touches_box(inner_face, box, shape)
    assert boxes.voxels(box) == [[0, 10], [5, 15], [5, 20]]
