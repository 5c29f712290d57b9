"""The MP2RAGE crop box against the REAL SCT 7.3 (``make test-sct``): the model's recipe
``sct_crop_image -i IMG -m SEG -dilate 30x30x5 -o OUT`` on 1 mm images, given the same cord mask, cuts the
very box ``lesion_ms_mp2rage`` runs on (README "The MP2RAGE crop box"). SCT counts voxels of the array
axes; we count 30 mm across S-I and 5 mm along it: on axial 1 mm grids, oblique float32 ones included,
the two are the same box; on a sagittal 1 mm image ours is SCT's recipe after ``sct_image -setorient RPI``."""
from __future__ import annotations

import itertools
import math

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio
from nibabel.affines import voxel_sizes

from bidsapp import boxes, tasks
from tests.sct_real import save, sct  # noqa: F401 - session fixture

pytestmark = pytest.mark.sct_oracle

MP2RAGE = tasks.get("lesion_ms_mp2rage").crop.box
AXIAL_SHAPE = (96, 90, 50)


def _tilt(deg: float) -> np.ndarray:
    """A rotation by ``deg`` about R-L, then by ``deg / 2`` about S-I: both in-plane axes oblique."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    c2, s2 = math.cos(math.radians(deg / 2)), math.sin(math.radians(deg / 2))
    return np.array([[c2, -s2, 0], [s2, c2, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _grid(codes, rotation=None) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = 0
    for i, (world, flip) in enumerate(nio.axcodes2ornt(codes)):
        aff[int(world), i] = flip
    if rotation is not None:
        aff[:3, :3] = rotation @ aff[:3, :3]
    aff[:3, 3] = (-45.5, -38.0, -20.25)
    return aff


def _oblique_with_noise() -> np.ndarray:
    """An oblique 1 mm axial grid whose float32 affine gives an in-plane voxel size below 1 mm, where a
    plain ``ceil(30 / size)`` is 31 (the first such tilt from 9 degrees on, in 0.25 degree steps)."""
    for deg in np.arange(9.0, 20.0, 0.25):
        aff = _grid(("R", "A", "S"), _tilt(deg))
        stored = aff.astype(np.float32).astype(np.float64)  # what a NIfTI file keeps
        if any(math.ceil(30.0 / z) == 31 for z in voxel_sizes(stored)[:2]):
            return aff
    raise AssertionError("no tilt gives float32 noise below 1 mm")


def _image(codes, shape, aff, si: int):
    """A 1 mm image of random texture and a cord mask: a tube along array axis ``si``."""
    rng = np.random.default_rng(7)
    img = nib.Nifti1Image(rng.normal(100, 20, shape).astype(np.float32), aff)
    img.set_qform(aff, 1)
    img.set_sform(aff, 2)
    cord = np.zeros(shape, np.uint8)
    across = [a for a in range(3) if a != si]
    grid = np.indices(shape)
    centre = [shape[a] / 2 for a in across]
    inside = ((grid[across[0]] - centre[0]) / 4.5) ** 2 + ((grid[across[1]] - centre[1]) / 3.5) ** 2 <= 1
    along = (grid[si] >= 9) & (grid[si] < shape[si] - 8)
    cord[inside & along] = 1
    return img, nib.Nifti1Image(cord, aff, img.header)


def _box_in(out: nib.Nifti1Image, affine: np.ndarray) -> boxes.Box:
    """The voxel box of ``out`` (an SCT crop, maybe of a reoriented image) on the grid of ``affine``."""
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in out.shape[:3]])), float)
    world = out.affine @ np.c_[corners, np.ones(len(corners))].T
    idx = (np.linalg.inv(affine) @ world)[:3].T
    assert np.allclose(idx, np.round(idx), atol=1e-3), "SCT's crop is not on the input grid"
    idx = np.round(idx).astype(int)
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(idx.min(0), idx.max(0), strict=True))


def _sct_crop(sct, img_path, seg_path, out_path) -> nib.Nifti1Image:  # noqa: F811 - fixture
    sct.run("sct_crop_image", "-i", img_path, "-m", seg_path, "-dilate", "30x30x5", "-o", out_path)
    return nib.load(str(out_path))


CASES = {  # nibabel axis codes, shape, affine
    "RAS": (("R", "A", "S"), AXIAL_SHAPE, _grid(("R", "A", "S"))),
    "LAS": (("L", "A", "S"), AXIAL_SHAPE, _grid(("L", "A", "S"))),
    "RPI": (("R", "P", "I"), AXIAL_SHAPE, _grid(("R", "P", "I"))),
    "oblique": (("R", "A", "S"), AXIAL_SHAPE, _oblique_with_noise()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mp2rage_crop_box_is_scts_sct_crop_image_on_axial_1mm(case, sct, tmp_path):  # noqa: F811
    codes, shape, aff = CASES[case]
    img, seg = _image(codes, shape, aff, si=2)
    img_path, seg_path = save(img, tmp_path / "unit1.nii.gz"), save(seg, tmp_path / "unit1_seg.nii.gz")
    stored = nib.load(str(img_path))  # the grid as a reader gets it back (float32 affine)
    ours = boxes.box_around_cord(np.asarray(nib.load(str(seg_path)).dataobj) > 0, stored.affine, MP2RAGE)
    theirs = _box_in(_sct_crop(sct, img_path, seg_path, tmp_path / "crop.nii.gz"), stored.affine)
    assert ours == theirs
    assert all(b.stop - b.start < n for b, n in zip(ours, shape, strict=True))  # nothing clipped away
    if case == "oblique":  # the float32 noise is there: without the tolerance we would cut 31 voxels
        assert any(math.ceil(30.0 / z) == 31 for z in voxel_sizes(stored.affine)[:2])


def test_sagittal_1mm_is_scts_recipe_on_the_axial_image_not_its_literal_voxels(sct, tmp_path):  # noqa: F811
    shape = (90, 50, 96)  # P-A, S-I, R-L
    img, seg = _image(("P", "S", "R"), shape, _grid(("P", "S", "R")), si=1)
    img_path, seg_path = save(img, tmp_path / "unit1.nii.gz"), save(seg, tmp_path / "unit1_seg.nii.gz")
    stored = nib.load(str(img_path))
    ours = boxes.box_around_cord(np.asarray(seg.dataobj) > 0, stored.affine, MP2RAGE)
    # the recipe on the image reoriented to axial (SCT's own reorientation), mapped back to our grid
    axial = {}
    for name, path in (("img", img_path), ("seg", seg_path)):
        axial[name] = tmp_path / f"{name}_rpi.nii.gz"
        sct.run("sct_image", "-i", path, "-setorient", "RPI", "-o", axial[name])
    recipe = _sct_crop(sct, axial["img"], axial["seg"], tmp_path / "crop_rpi.nii.gz")
    assert _box_in(recipe, stored.affine) == ours
    # typed as documented on the sagittal image itself, SCT grows S-I (axis 1) by 30 and R-L (axis 2) by 5
    literal = _box_in(_sct_crop(sct, img_path, seg_path, tmp_path / "crop.nii.gz"), stored.affine)
    found = boxes.bounding_box(np.asarray(seg.dataobj) > 0)
    assert literal == tuple(slice(max(s.start - m, 0), min(s.stop + m, n))
                            for s, m, n in zip(found, (30, 30, 5), shape, strict=True))
    assert ours == tuple(slice(max(s.start - m, 0), min(s.stop + m, n))
                         for s, m, n in zip(found, (30, 5, 30), shape, strict=True))
