"""Vertebral levels from disc labels (bidsapp.analysis.levels), without SCT: expectations worked out by hand
on straight cords, where SCT's rule reduces to "a cord slice takes the value of the first disc at or above
it". tests/test_levels_sct.py compares the same code with the real SCT 7.3 on curved, oblique phantoms."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bidsapp.analysis.levels import (
    DiscLabelError,
    LesionLevels,
    VoxelLevels,
    check_on_grid,
    checked_rule,
    disc_name,
    disc_points,
    disc_source,
    drawn_on,
    lesion_levels,
    level_map,
    level_name,
    level_rule,
    level_value,
)
from bidsapp.orientation import to_orientation

SHAPE = (21, 24, 60)
#: discs at these axial slices (1 mm voxels) on a straight cord spanning slices 3-55
DISCS = {6: 14, 5: 26, 4: 38, 3: 50}


def _affine(voxel=(1.0, 1.0, 1.0), origin=(-10.0, -12.0, -30.0)) -> np.ndarray:
    affine = np.diag([*voxel, 1.0])
    affine[:3, 3] = origin
    return affine


def _cord(shape=SHAPE, z=(3, 55), centre=(10.3, 12.6), radius=3.2, affine=None) -> nib.Nifti1Image:
    x, y, k = np.indices(shape)
    data = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2) & (k >= z[0]) & (k <= z[1])
    return nib.Nifti1Image(data.astype(np.uint8), _affine() if affine is None else affine)


def _discs(slices: dict[int, int], shape=SHAPE, at=(10, 20), affine=None, dtype=np.uint8) -> nib.Nifti1Image:
    data = np.zeros(shape, dtype)
    for value, k in slices.items():
        data[at[0], at[1], k] = value
    return nib.Nifti1Image(data, _affine() if affine is None else affine)


def _expected_by_slice(discs: dict[int, int], z=(3, 55)) -> dict[int, int]:
    """By hand: slice k takes the value of the lowest disc at or above it; above the top disc, its value-1."""
    by_height = sorted((k, v) for v, k in discs.items())
    out = {}
    for k in range(z[0], z[1] + 1):
        above = [v for dk, v in by_height if dk >= k]
        out[k] = above[0] if above else by_height[-1][1] - 1
    return out


def _slice_levels(levels: np.ndarray, cord: np.ndarray) -> dict[int, set[int]]:
    return {k: set(np.unique(levels[:, :, k][cord[:, :, k] > 0]).tolist())
            for k in range(cord.shape[2]) if cord[:, :, k].any()}


# ------------------------------------------------------------------------------------------------ names
def test_level_and_disc_names_follow_scts_numbering():
    assert [level_name(v) for v in (1, 7, 8, 19, 20, 24, 25, 30)] == ["C1", "C7", "T1", "T12", "L1", "L5",
                                                                        "S1", "Co"]
    assert [disc_name(v) for v in (1, 2, 3, 8, 20, 25)] == ["C1 top", "C1/C2", "C2/C3", "C7/T1", "T12/L1",
                                                            "L5/S1"]
    assert level_value("T1") == 8
    with pytest.raises(KeyError):
        disc_name(26)
    with pytest.raises(KeyError):
        level_name(0)


# ------------------------------------------------------------------------------------ the level map
def test_straight_cord_levels_by_hand():
    cord = _cord()
    levels = np.asanyarray(level_map(cord, disc_points(_discs(DISCS))).dataobj)
    mask = np.asanyarray(cord.dataobj)
    assert levels.dtype == np.uint8 and levels.shape == SHAPE
    assert not levels[mask == 0].any()  # only the cord is labelled
    expected = _expected_by_slice(DISCS)
    assert _slice_levels(levels, mask) == {k: {v} for k, v in expected.items()}
    assert expected[14] == 6 and expected[15] == 5 and expected[55] == 2  # level k: disc k down to disc k+1


def test_level_map_keeps_the_cord_grid():
    cord = _cord()
    out = level_map(cord, disc_points(_discs(DISCS)))
    assert out.shape == cord.shape and np.allclose(out.affine, cord.affine)
    assert out.header.get_sform(coded=True)[1] == cord.header.get_sform(coded=True)[1]


@pytest.mark.parametrize("axcodes", [("L", "P", "S"), ("P", "S", "R"), ("S", "R", "A")])
def test_the_same_cord_in_another_orientation_gets_the_same_levels(axcodes):
    cord, discs = _cord(), _discs(DISCS)
    reference = np.asanyarray(level_map(cord, disc_points(discs)).dataobj)
    data, reo = to_orientation(np.asanyarray(cord.dataobj), cord.affine, axcodes)
    turned = nib.Nifti1Image(np.ascontiguousarray(data), reo.affine)
    levels = np.asanyarray(level_map(turned, disc_points(discs)).dataobj)  # discs stay on their own grid
    np.testing.assert_array_equal(reo.undo(levels), reference)


def test_discs_on_another_grid_project_in_millimetres():
    # the discs of a "sagittal" grid (0.5 mm, PSR axes, shifted origin) at the same scanner positions
    cord = _cord()
    sagittal = np.zeros((100, 120, 42), np.uint8)  # axes: P (A-P reversed), S, R
    affine = np.array([[0, 0, 0.5, -10.0], [-0.5, 0, 0, 40.0], [0, 0.5, 0, -30.0], [0, 0, 0, 1]])
    to_voxel = np.linalg.inv(affine)
    for value, k in DISCS.items():
        xyz = _affine() @ np.array([10, 20, k, 1.0])  # the voxel centre of the 1 mm disc label
        ijk = np.rint(to_voxel @ xyz)[:3].astype(int)
        sagittal[tuple(ijk)] = value
    levels = np.asanyarray(level_map(cord, disc_points(nib.Nifti1Image(sagittal, affine))).dataobj)
    expected = _expected_by_slice(DISCS)
    assert _slice_levels(levels, np.asanyarray(cord.dataobj)) == {k: {v} for k, v in expected.items()}


def test_voxel_levels_label_voxels_outside_the_cord_by_the_same_rule():
    cord = _cord()
    rule = level_rule(cord, disc_points(_discs(DISCS)))
    outside = np.zeros(SHAPE, bool)
    outside[2, 2, 20] = outside[2, 2, 45] = True  # beside the cord, slices 20 and 45
    levels = rule.voxel_levels(outside).level
    assert levels[2, 2, 20] == 5 and levels[2, 2, 45] == 3 and levels.sum() == 8


def test_beyond_counts_disc_spacings_past_the_outermost_disc():
    # discs 12 slices (12 mm) apart: one spacing = 12 mm; the lowest disc at slice 14, the cord from slice 3
    rule = level_rule(_cord(), disc_points(_discs(DISCS)))
    assert rule.spacing_mm == pytest.approx(12.0)
    where = np.zeros(SHAPE, bool)
    where[10, 12, [3, 8, 30, 55]] = True
    beyond = rule.voxel_levels(where).beyond[10, 12, [3, 8, 30, 55]]
    np.testing.assert_allclose(beyond, [11 / 12, 6 / 12, 0.0, 5 / 12], atol=0.02)


def test_one_disc_gives_no_spacing_and_everything_past_it_is_extrapolated():
    rule = level_rule(_cord(), disc_points(_discs({5: 30})))
    assert rule.spacing_mm is None
    where = np.zeros(SHAPE, bool)
    where[10, 12, [20, 30, 40]] = True
    out = rule.voxel_levels(where)
    assert out.level[10, 12, 20] == 5 and out.level[10, 12, 40] == 4
    assert out.beyond[10, 12, 30] == 0
    assert np.isinf(out.beyond[10, 12, 20]) and np.isinf(out.beyond[10, 12, 40])


# ---------------------------------------------------------------------------------- refused labels
def _refused(img: nib.Nifti1Image, name: str = "sub-01_T2w_label-discs_dlabel.nii.gz") -> str:
    with pytest.raises(DiscLabelError) as exc:
        disc_points(img, name)
    message = str(exc.value)
    assert message.startswith(name + ": ") and "\n" not in message
    return message


def test_raw_totalspineseg_labels_are_refused_with_the_way_out():
    message = _refused(_discs({63: 20, 64: 30}))
    assert "[63, 64] are TotalSpineSeg's raw disc labels" in message and "step1_levels" in message


@pytest.mark.parametrize("values,shown", [({31: 20}, "[31]"), ({3: 20, 40: 30}, "[40]")])
def test_values_that_are_not_scts_disc_values_are_refused(values, shown):
    assert f"values {shown} are not SCT disc values" in _refused(_discs(values))


def test_empty_non_integer_blob_and_4d_label_images_are_refused():
    assert "no disc label (every voxel is 0)" in _refused(_discs({}))
    soft = _discs({3: 20}, dtype=np.float32)
    soft.dataobj[10, 20, 21] = 3.5
    assert "not whole numbers ([3.5])" in _refused(soft)
    blob = np.zeros(SHAPE, np.uint8)
    blob[5:9, 5:9, 10:14] = 4
    assert "value 4 marks 64 voxels: a segmentation" in _refused(nib.Nifti1Image(blob, _affine()))
    four = nib.Nifti1Image(np.zeros((*SHAPE, 2), np.uint8), _affine())
    assert "expected a 3D label image" in _refused(four)


def test_brainstem_landmarks_are_left_out_and_reported():
    points = disc_points(_discs({50: 57, 49: 56, 3: 50, 4: 38}))
    assert sorted(points.values.tolist()) == [3, 4] and points.ignored == (49, 50)
    assert "only SCT's brainstem landmarks (49, 50)" in _refused(_discs({50: 57, 49: 56}))


def test_labels_off_their_images_grid_are_refused():
    labels = _discs(DISCS)
    check_on_grid(labels, "d.nii.gz", _cord(), "img.nii.gz")  # same grid: nothing to say
    moved = _cord(affine=_affine(origin=(-10, -12, -29.5)))
    wrong = {"shape 21x24x60, the image's is 21x24x61": _cord(shape=(21, 24, 61)),
             "its affine differs from the image's by up to 0.5 mm (resampled, or saved in another "
             "space?)": moved}
    for reason, other in wrong.items():
        with pytest.raises(DiscLabelError) as exc:
            check_on_grid(labels, "d.nii.gz", other, "img.nii.gz")
        assert str(exc.value) == (f"d.nii.gz: not on the image's grid: {reason}; the image: img.nii.gz (disc "
                                  "labels are drawn on the image itself)")


def test_discs_far_from_the_cord_are_refused():
    near = _discs({5: 26, 4: 38}, at=(10, 0))  # 12.6 mm behind the centreline: allowed
    checked_rule(_cord(), disc_points(near), "img")
    data = np.zeros((80, 24, 60), np.uint8)
    data[[60, 60], 12, [26, 38]] = [5, 4]  # 50 mm to the side of the cord
    with pytest.raises(DiscLabelError) as exc:
        checked_rule(_cord(), disc_points(nib.Nifti1Image(data, _affine()), "d.nii.gz"), "img.nii.gz")
    x, y = np.nonzero(np.asanyarray(_cord().dataobj)[:, :, 26])  # the cord's centre on the disc's slice
    distance = float(np.hypot(60 - x.mean(), 12 - y.mean()))
    assert str(exc.value).startswith(f"d.nii.gz: disc C4/C5 (5) lies {distance:.1f} mm from the cord of "
                                     "img.nii.gz (at most 20 mm")


def test_discs_all_beyond_one_end_of_the_cord_are_refused():
    cord = _cord(z=(3, 30))
    with pytest.raises(DiscLabelError, match="every disc label lies above the cord of img: no level"):
        checked_rule(cord, disc_points(_discs({4: 45, 3: 55})), "img")
    with pytest.raises(DiscLabelError, match="every disc label lies below the cord of img"):
        checked_rule(_cord(z=(30, 55)), disc_points(_discs({6: 5, 7: 1})), "img")
    rule, place = checked_rule(_cord(z=(20, 30)), disc_points(_discs({5: 45, 6: 10})), "img")  # one each side
    assert place.where == ("below", "above") and rule.region_values.tolist() == [6, 5, 4]


def test_discs_out_of_order_along_the_cord_are_refused():
    with pytest.raises(DiscLabelError, match=r"out of order along the cord: C4/C5 \(5\) lies above C2/C3"):
        checked_rule(_cord(), disc_points(_discs({6: 14, 3: 26, 5: 38})), "img")


def test_bounding_discs_drop_what_scts_projection_collapses_onto_the_cords_ends():
    # cord slices 20-30; C2/C3 (3) and C3/C4 (4) above it, C4/C5 (5) along it, C5/C6 and C6/C7 below it
    cord, discs = _cord(z=(20, 30)), disc_points(_discs({3: 55, 4: 45, 5: 26, 6: 14, 7: 2}))
    mask = np.asanyarray(cord.dataobj)
    sct, place = checked_rule(cord, discs, "img")
    assert place.where == ("below", "below", "along", "above", "above")  # C order of the disc image: k rising
    # SCT: both discs above land on the top slice's voxel, the later (C2/C3) wins; below, C5/C6 wins
    assert _slice_levels(sct.voxel_levels(mask > 0).level, mask) == {
        20: {6}, **{k: {5} for k in range(21, 27)}, **{k: {3} for k in range(27, 31)}}
    bounded, _ = checked_rule(cord, discs, "img", bounding_only=True)
    expected = _expected_by_slice({3: 55, 4: 45, 5: 26, 6: 14, 7: 2}, z=(20, 30))  # by hand: the truth
    assert expected == {**{k: 5 for k in range(20, 27)}, **{k: 4 for k in range(27, 31)}}
    assert _slice_levels(bounded.voxel_levels(mask > 0).level, mask) == {k: {v} for k, v in expected.items()}


def test_a_cord_between_two_discs_takes_the_upper_ones_level():
    cord, discs = _cord(z=(20, 30)), disc_points(_discs({4: 45, 5: 10}))
    bounded, place = checked_rule(cord, discs, "img", bounding_only=True)
    assert place.where == ("below", "above")
    mask = np.asanyarray(cord.dataobj)
    assert _slice_levels(bounded.voxel_levels(mask > 0).level, mask) == {k: {4} for k in range(20, 31)}


# ---------------------------------------------------------------------------------- which file serves
def test_disc_file_names_of_the_conventions():
    assert drawn_on("sub-01/anat/sub-01_acq-sag_T2w_label-discs_dlabel.nii.gz") == \
        "sub-01/anat/sub-01_acq-sag_T2w"
    assert drawn_on("sub-01/anat/sub-01_T2w_labels-disc-manual.nii.gz") == "sub-01/anat/sub-01_T2w"
    assert drawn_on("sub-01/anat/sub-01_T2w_label-disc.nii") == "sub-01/anat/sub-01_T2w"
    assert drawn_on("sub-01/anat/sub-01_T2w_totalspineseg_discs.nii.gz") == "sub-01/anat/sub-01_T2w"
    for other in ("sub-01/anat/sub-01_T2w_lesion-manual.nii.gz",
                  "sub-01/anat/sub-01_T2w_label-discs_dlabel.json", "sub-01/anat/_label-disc.nii.gz"):
        assert drawn_on(other) is None


def test_an_image_uses_its_own_discs_else_those_of_its_session():
    labels = ["sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_T2w_label-discs_dlabel.nii.gz",
              "sub-01/ses-M12/anat/sub-01_ses-M12_acq-sag_T2w_label-discs_dlabel.nii.gz",
              "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_T2w_lesion-manual.nii.gz"]
    own = disc_source("sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_T2w.nii.gz", labels)
    assert (own.labels, own.shared) == (labels[0], False)
    partner = disc_source("sub-01/ses-M12/anat/sub-01_ses-M12_T2starw.nii.gz", labels)
    assert (partner.labels, partner.drawn_on, partner.shared) == (
        labels[1], "sub-01/ses-M12/anat/sub-01_ses-M12_acq-sag_T2w", True)
    assert disc_source("sub-02/anat/sub-02_T2starw.nii.gz", labels) is None  # another subject's: never
    assert disc_source("sub-01/ses-M6/anat/sub-01_ses-M6_T2w.nii.gz", labels) is None  # another session's


def test_two_disc_files_for_one_image_are_refused():
    labels = ["sub-01/anat/sub-01_T2w_label-discs_dlabel.nii.gz",
              "sub-01/anat/sub-01_T2w_labels-disc-manual.nii.gz"]
    with pytest.raises(DiscLabelError, match=r"^sub-01/anat/sub-01_T2w\.nii\.gz: two disc label files"):
        disc_source("sub-01/anat/sub-01_T2w.nii.gz", labels)
    # as a partner, an image with two files is skipped for the next one
    labels.append("sub-01/anat/sub-01_acq-sag_T1w_label-disc.nii.gz")
    assert disc_source("sub-01/anat/sub-01_T2starw.nii.gz", labels).labels == labels[2]


# ---------------------------------------------------------------------------------- per-lesion columns
def _levels(level: np.ndarray, beyond: np.ndarray | None = None) -> VoxelLevels:
    beyond = np.zeros(level.shape, np.float32) if beyond is None else beyond
    return VoxelLevels(level.astype(np.int16), beyond)


def test_lesion_level_is_the_majority_of_its_voxels():
    labels = np.zeros((6, 6, 6), np.int32)
    level = np.zeros((6, 6, 6), np.int16)
    labels[1, 1, 0:4] = 1
    level[1, 1, 0:4] = [5, 4, 4, 4]  # three voxels at C4, one at C5
    labels[4, 4, 0:4] = 2
    level[4, 4, 0:4] = [6, 6, 5, 5]  # a tie: the superior level
    labels[3, 0, 0] = 3  # no voxel with a level
    rows = lesion_levels(labels, _levels(level))
    assert rows[0] == LesionLevels(1, "C4", ("C4", "C5"), (0.75, 0.25), False)
    second = (rows[1].vert_level, rows[1].vert_levels, rows[1].vert_level_fractions)
    assert second == ("C5", ("C5", "C6"), (0.5, 0.5))
    assert rows[2] == LesionLevels(3, None, (), (), None)
    assert rows[0].row() == {"vert_level": "C4", "vert_levels": "C4,C5",
                             "vert_level_fractions": "0.750,0.250", "vert_level_extrapolated": "false"}
    assert rows[2].row() == dict.fromkeys(LesionLevels.columns(), "n/a")


def test_without_disc_labels_every_column_is_na():
    labels = np.zeros((4, 4, 4), np.int32)
    labels[0, 0, 0], labels[2, 2, 2] = 1, 2
    rows = lesion_levels(labels, None)
    assert [r.lesion_id for r in rows] == [1, 2] and all(r.vert_level is None for r in rows)
    assert LesionLevels.columns() == ["vert_level", "vert_levels", "vert_level_fractions",
                                      "vert_level_extrapolated"]


def test_a_lesion_more_than_one_spacing_past_the_outermost_disc_is_extrapolated():
    labels = np.zeros((4, 4, 4), np.int32)
    labels[1, 1, :] = 1
    labels[2, 2, :] = 2
    level = np.full((4, 4, 4), 7, np.int16)
    beyond = np.zeros((4, 4, 4), np.float32)
    beyond[1, 1, 0] = 1.4  # one voxel 1.4 spacings below the lowest disc
    beyond[2, 2, 0] = 0.9
    rows = lesion_levels(labels, _levels(level, beyond))
    assert [r.vert_level_extrapolated for r in rows] == [True, False]


def test_rows_follow_the_lesion_tables_ids_on_a_straight_cord():
    # two lesions on the cord of test_straight_cord_levels_by_hand: slices 20-23 (C5) and 47-53 (4 slices at
    # C3, 3 at C2)
    cord = _cord()
    mask = np.zeros(SHAPE, np.uint8)
    mask[9:12, 11:14, 20:24] = 1
    mask[9:12, 11:14, 47:54] = 1
    img = nib.Nifti1Image(mask, _affine())
    from bidsapp.analysis.levels import mask_lesion_levels

    rule = level_rule(cord, disc_points(_discs(DISCS)))
    rows = mask_lesion_levels(img, rule.voxel_levels(mask > 0))
    assert [(r.vert_level, r.vert_levels, r.vert_level_fractions) for r in rows] == [
        ("C5", ("C5",), (1.0,)), ("C3", ("C2", "C3"), (round(3 / 7, 3), round(4 / 7, 3)))]
