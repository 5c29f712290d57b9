"""Per-lesion measures on analytic phantoms (tests/analysis_phantoms.py) against their truth."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from analysis_phantoms import TubeLesion, tube_phantom

from bidsapp.analysis import analyze_lesions, drop_outside_cord, lesion_labels
from bidsapp.analysis.lesions import label_lesions
from bidsapp.errors import InputImageError
from tests.components import missing

INSIDE = TubeLesion(u=0.0, v=1.0, s=0.0, a=2.0, b=1.5, c=5.0)
OUTSIDE = TubeLesion(u=9.0, v=9.0, s=-15.0, a=1.5, b=1.5, c=2.0)
PARA = TubeLesion(u=3.0, v=0.0, s=15.0, a=1.0, b=1.0, c=3.0)  # off the midsagittal slice


def _by_centroid(analysis, tube):
    """Rows matched to the phantom's lesions by world centroid (lesion ids follow SCT's scan order)."""
    from analysis_phantoms import _frame
    eu, ev, ew = _frame(tube.tilt_deg)
    out = []
    for les in tube.lesions:
        centre = les.u * eu + les.v * ev + les.s * ew
        out.append(min(analysis.lesions, key=lambda r: np.linalg.norm(
            np.array([r.centroid_x_mm, r.centroid_y_mm, r.centroid_z_mm]) - centre)))
    return out


@pytest.mark.parametrize("orientation,voxel,tilt", [
    (("R", "A", "S"), (0.5, 0.5, 1.0), 0.0),
    (("L", "A", "S"), (0.5, 0.5, 1.0), 15.0),
    (("P", "S", "R"), (0.6, 0.8, 0.6), 10.0),   # sagittal grid: S-I is array axis 1
    (("R", "P", "I"), (0.5, 0.6, 0.9), -12.0),
])
def test_measures_match_the_analytic_truth(orientation, voxel, tilt):
    tube = tube_phantom((INSIDE, OUTSIDE), tilt_deg=tilt, orientation=orientation, voxel=voxel)
    analysis = analyze_lesions(tube.mask, tube.cord)
    assert analysis.count == 2
    inside, outside = _by_centroid(analysis, tube)
    data = np.asanyarray(tube.mask.dataobj)
    labels = lesion_labels(tube.mask)
    voxel_mm3 = float(np.prod(voxel))
    for row in analysis.lesions:  # volume = voxel count x voxel volume, exactly
        count = np.count_nonzero(labels == row.lesion_id)
        assert row.volume_mm3 == pytest.approx(count * voxel_mm3, rel=1e-6)  # float32 zooms
    assert sum(r.volume_mm3 for r in analysis.lesions) == pytest.approx(data.sum() * voxel_mm3, rel=1e-6)
    assert inside.volume_mm3 == pytest.approx(INSIDE.volume_mm3, rel=0.12)
    # along the cord: 2c within 1.5 slices (SCT sums whole slices); bridges within 1 A-P voxel
    slice_mm = voxel[orientation.index("S") if "S" in orientation else orientation.index("I")]
    assert inside.length_mm == pytest.approx(2 * INSIDE.c, abs=1.5 * slice_mm)
    assert inside.width_mm == pytest.approx(2 * INSIDE.b, abs=1.2)
    assert inside.max_equivalent_diameter_mm == pytest.approx(2 * math.sqrt(INSIDE.a * INSIDE.b), rel=0.15)
    assert inside.max_axial_damage_ratio == pytest.approx(INSIDE.a * INSIDE.b / tube.radius ** 2, rel=0.15)
    assert inside.inside_cord_fraction == 1.0
    ap = max(voxel)
    assert inside.dorsal_bridge_width_mm == pytest.approx(tube.radius + INSIDE.v - INSIDE.b, abs=ap)
    assert inside.ventral_bridge_width_mm == pytest.approx(tube.radius - INSIDE.v - INSIDE.b, abs=ap)
    assert inside.total_bridge_width_mm == pytest.approx(
        inside.dorsal_bridge_width_mm + inside.ventral_bridge_width_mm)
    assert outside.inside_cord_fraction == 0.0
    assert outside.max_axial_damage_ratio == 0.0
    assert outside.dorsal_bridge_width_mm is None


def test_slices_and_centroid_on_the_images_own_grid():
    tube = tube_phantom((INSIDE,), orientation=("P", "S", "R"), voxel=(0.6, 0.8, 0.6))
    row = analyze_lesions(tube.mask, tube.cord).lesions[0]
    data = np.asanyarray(tube.mask.dataobj)
    span = np.flatnonzero(data.any(axis=(0, 2)))  # axis 1 points S
    assert (row.slice_axis, row.first_slice, row.last_slice) == (1, span[0], span[-1])
    ijk = np.argwhere(data).mean(axis=0)
    world = tube.mask.affine[:3, :3] @ ijk + tube.mask.affine[:3, 3]
    centroid = [row.centroid_x_mm, row.centroid_y_mm, row.centroid_z_mm]
    assert centroid == pytest.approx(world.tolist(), abs=1e-6)


def test_without_cord_mask_cord_columns_are_none_and_lengths_uncorrected():
    tube = tube_phantom((INSIDE,), tilt_deg=0.0)
    row = analyze_lesions(tube.mask).lesions[0]
    assert row.max_axial_damage_ratio is None and row.inside_cord_fraction is None
    assert row.dorsal_bridge_width_mm is None and row.midsagittal_slice is None
    with_cord = analyze_lesions(tube.mask, tube.cord).lesions[0]
    assert row.length_mm == pytest.approx(with_cord.length_mm, rel=1e-3)  # a straight cord: angle 0


def test_angle_correction_follows_the_tilt():
    """A 30 degree cord: the lesion spans ~2c cos(30) of S-I, corrected back to ~2c along the cord."""
    tube = tube_phantom((replace_c(INSIDE, 8.0),), tilt_deg=30.0, fov=(30.0, 40.0, 60.0))
    corrected = analyze_lesions(tube.mask, tube.cord).lesions[0]
    raw = analyze_lesions(tube.mask).lesions[0]
    assert corrected.length_mm == pytest.approx(16.0, abs=1.5)
    assert raw.length_mm == pytest.approx(corrected.length_mm * math.cos(math.radians(30)), rel=0.05)


def replace_c(lesion: TubeLesion, c: float) -> TubeLesion:
    from dataclasses import replace
    return replace(lesion, c=c)


def test_parasagittal_lesion_gets_half_the_cord_diameter():
    """SCT 7.3 (issue #5123): a lesion off the midsagittal slice -> bridges = cord A-P diameter / 2."""
    tube = tube_phantom((INSIDE, PARA))
    rows = _by_centroid(analyze_lesions(tube.mask, tube.cord), tube)
    para = rows[1]
    assert para.dorsal_bridge_width_mm == para.ventral_bridge_width_mm
    assert para.total_bridge_width_mm == pytest.approx(2 * tube.radius, abs=1.0)


def test_drop_outside_cord_keeps_ids():
    tube = tube_phantom((INSIDE, OUTSIDE))
    analysis = analyze_lesions(tube.mask, tube.cord)
    kept = drop_outside_cord(analysis)
    assert kept.count == 1 and kept.lesions[0].inside_cord_fraction == 1.0
    assert kept.lesions[0].lesion_id in {r.lesion_id for r in analysis.lesions}
    with pytest.raises(ValueError):
        drop_outside_cord(analyze_lesions(tube.mask))


def test_connectivity_is_scts_18():
    """SCT labels with skimage label(connectivity=2): 18 in 3D. Edge-touching voxels join, corners do not."""
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 1] = 1      # share an edge: one lesion
    mask[4, 4, 4] = mask[5, 5, 5] = 1      # share a corner only: two lesions
    _, n = label_lesions(mask)
    assert n == 3
    try:
        import skimage.measure
    except ImportError:
        missing("scikit-image", "not installed (requirements-test.lock, through nnunetv2)")
    rng = np.random.default_rng(0)
    noise = rng.random((20, 20, 20)) > 0.8
    ours, n_ours = label_lesions(noise)
    theirs = skimage.measure.label(noise, connectivity=2)
    assert n_ours == theirs.max()
    assert (ours == theirs).all()  # same ids in the same scan order


def test_empty_mask_gives_no_rows():
    tube = tube_phantom(())
    assert analyze_lesions(tube.mask, tube.cord).count == 0


def test_bad_masks_are_refused_with_the_file_name(tmp_path):
    tube = tube_phantom((INSIDE,))
    soft = nib.Nifti1Image(np.asanyarray(tube.mask.dataobj) * 0.5, tube.mask.affine)
    path = tmp_path / "soft.nii.gz"
    nib.save(soft, path)
    with pytest.raises(InputImageError, match="soft.nii.gz: lesion mask is not binary"):
        analyze_lesions(nib.load(path))
    small = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(InputImageError, match="not on the lesion mask's grid"):
        analyze_lesions(tube.mask, small)


def test_participant_outputs_drop_lesions_outside_the_cord_from_the_mask():
    from bidsapp.analysis.participant import lesion_outputs

    tube = tube_phantom((INSIDE, OUTSIDE))
    kept = lesion_outputs(tube.mask, tube.cord, drop_outside_cord=True)
    data = np.asanyarray(kept.mask.dataobj).astype(bool)
    assert kept.analysis.count == 1 and kept.provenance["LesionTable"]["DroppedLesions"] == 1
    inside_row = _by_centroid(analyze_lesions(tube.mask, tube.cord), tube)[0]
    assert data.sum() == np.count_nonzero(lesion_labels(tube.mask) == inside_row.lesion_id)  # kept whole
    assert not (data & ~np.asanyarray(tube.cord.dataobj).astype(bool)).any()
    np.testing.assert_array_equal(kept.mask.affine, tube.mask.affine)
    assert kept.table.splitlines()[1].split("\t")[0] == "1"   # ids of the mask as written
    same = lesion_outputs(tube.mask, tube.cord)
    assert same.analysis.count == 2 and same.mask is tube.mask
    assert same.provenance["LesionTable"]["DropOutsideCord"] is False
    with pytest.raises(ValueError):
        lesion_outputs(tube.mask, None, drop_outside_cord=True)
