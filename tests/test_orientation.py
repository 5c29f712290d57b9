"""Round trips and conventions of bidsapp.orientation on np.arange volumes."""
from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio

from bidsapp import orientation as ori


def _all_axcodes():
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((1, -1), repeat=3):
            ornt = np.array([[p, f] for p, f in zip(perm, flips, strict=True)], float)
            yield nio.ornt2axcodes(ornt)


ALL_CODES = list(_all_axcodes())


def _affine(axcodes, zooms=(0.7, 0.8, 3.0)):
    """An affine whose voxel axes point along ``axcodes`` with the given zooms and an offset."""
    ornt = nio.axcodes2ornt(axcodes)
    aff = np.zeros((4, 4))
    for i, (world, flip) in enumerate(ornt):
        aff[int(world), i] = flip * zooms[i]
    aff[:3, 3] = (-10.0, 20.0, 5.0)
    aff[3, 3] = 1
    return aff


def test_sct_letters_are_the_opposite_of_nibabel():
    assert ori.sct_to_axcodes("LPI") == ("R", "A", "S")
    assert ori.sct_to_axcodes("RPI") == ("L", "A", "S")
    assert ori.sct_to_axcodes("ail") == ("P", "S", "R")
    assert ori.axcodes_to_sct(("R", "A", "S")) == "LPI"
    assert ori.sct_orientation(np.diag([-1.0, 1, 1, 1])) == "RPI"
    for bad in ("LPX", "LLI", "LP", "LRI"):
        with pytest.raises(ValueError):
            ori.sct_to_axcodes(bad)


@pytest.mark.parametrize("source", ALL_CODES)
def test_round_trip_and_world_coordinates(source):
    data = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    affine = _affine(source)
    out, r = ori.to_orientation(data, affine, ("R", "A", "S"))
    assert nio.aff2axcodes(r.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(r.undo(out), data)
    # every voxel keeps its world position: same value at the same mm coordinate
    ijk = np.array([[0, 0, 0], [2, 3, 4], [1, 2, 3]])
    for i, j, k in ijk:
        world = affine @ [i, j, k, 1]
        i2, j2, k2, _ = np.rint(np.linalg.solve(r.affine, world)).astype(int)
        assert out[i2, j2, k2] == data[i, j, k]
    # agrees with nibabel's own as_reoriented
    img = nib.Nifti1Image(data.astype(np.int16), affine)
    ref = img.as_reoriented(r.forward)
    np.testing.assert_array_equal(np.asarray(ref.dataobj), out)
    np.testing.assert_allclose(ref.affine, r.affine)
    assert r.zooms((0.7, 0.8, 3.0)) == pytest.approx(nib.affines.voxel_sizes(r.affine))


def test_leading_axes_are_kept():
    data = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    out, r = ori.to_sct_orientation(data, _affine(("P", "I", "L")), "RPI")
    assert out.shape[0] == 2
    for c in range(2):
        np.testing.assert_array_equal(out[c], r.apply(data[c]))
    np.testing.assert_array_equal(r.undo(out), data)
    with pytest.raises(ValueError):
        r.undo(data)  # source-shaped, not target-shaped


def test_identity_and_anisotropic_spacing():
    data = np.arange(60).reshape(3, 4, 5)
    out, r = ori.to_orientation(data, _affine(("R", "A", "S")), ("R", "A", "S"))
    assert r.is_identity and out is not None
    np.testing.assert_array_equal(out, data)
    _, r = ori.to_orientation(data, _affine(("S", "L", "A"), zooms=(3.0, 0.7, 0.8)), ("R", "A", "S"))
    assert r.zooms((3.0, 0.7, 0.8)) == (0.7, 0.8, 3.0)


def test_xyz_to_zyx_and_spacing():
    data = np.arange(60).reshape(3, 4, 5)
    zyx = ori.xyz_to_zyx(data)
    assert zyx.shape == (5, 4, 3) and zyx[4, 3, 2] == data[2, 3, 4]
    np.testing.assert_array_equal(ori.xyz_to_zyx(zyx), data)
    assert ori.reverse_spacing((0.7, 0.8, 3.0)) == (3.0, 0.8, 0.7)
