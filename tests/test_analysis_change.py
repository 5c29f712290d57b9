"""Change between sessions: rigid registration (SimpleITK) and new / enlarged / stable lesions."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from analysis_phantoms import two_sessions

from bidsapp.analysis import ChangeRules, SessionInputs, analyze_change, lesion_labels
from bidsapp.analysis.change import _Session, classify, compare_sessions
from bidsapp.analysis.registration import RegistrationSettings, register_rigid, resample_labels


def _inputs(s, cords=True) -> SessionInputs:
    return SessionInputs(s.followup_mask, s.followup_image, s.baseline_mask, s.baseline_image,
                         s.followup_cord if cords else None, s.baseline_cord if cords else None)


def _corner_error_mm(reg, s) -> float:
    """Largest distance, over the follow-up grid's corners, between the recovered and the true mapping."""
    shape = np.array(s.followup_image.shape)
    corners = np.array([[i, j, k, 1] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])]).T
    world = s.followup_image.affine @ corners
    truth = np.linalg.inv(s.motion) @ world
    return float(np.linalg.norm((reg.followup_to_baseline_ras() @ world - truth)[:3], axis=0).max())


@pytest.fixture(scope="module")
def same_grid():
    """Follow-up on the baseline's voxel size but another orientation (R-A-S vs P-S-R), moved."""
    s = two_sessions()
    return s, analyze_change(_inputs(s))


@pytest.fixture(scope="module")
def other_grid():
    """Follow-up on another orientation (L-A-S) and voxel size, moved the other way."""
    s = two_sessions(orientation=("L", "A", "S"), voxel=(1.0, 0.9, 1.2), rotation_deg=(-7.0, 3.0, 2.0),
                     shift_mm=(-4.0, 3.0, -2.5))
    return s, analyze_change(_inputs(s))


@pytest.mark.parametrize("which", ["same_grid", "other_grid"])
def test_one_new_one_enlarged_rest_stable(which, request):
    s, change = request.getfixturevalue(which)
    statuses = sorted(c.status for c in change.changes)
    assert statuses == ["enlarged", "new", "stable", "stable"]
    assert change.count("disappeared") == 0
    assert _corner_error_mm(change.registration, s) < 1.0
    assert change.registration.ncc > 0.9
    assert change.cord_dice > 0.9
    # the follow-up rows name the follow-up's own lesion ids, one each
    fu_ids = sorted(c.lesion_id for c in change.changes)
    assert fu_ids == list(range(1, int(lesion_labels(s.followup_mask).max()) + 1))
    enlarged = next(c for c in change.changes if c.status == "enlarged")
    growth = enlarged.group_volume_mm3 - enlarged.group_baseline_volume_mm3
    assert enlarged.volume_change_mm3 == pytest.approx(growth)
    assert enlarged.volume_change_percent > 50


def test_without_registration_the_motion_breaks_matching(same_grid):
    """The check has teeth: with the header alone (identity), the moved lesions do not all overlap."""
    s, _ = same_grid
    fu, bl = _Session.of(s.followup_mask), _Session.of(s.baseline_mask)
    bl_on_fu = resample_labels(bl.labels, s.baseline_mask, s.followup_mask, sitk.Euler3DTransform())
    rows = classify(fu, bl, bl_on_fu, np.eye(4), ChangeRules())
    assert sorted(r.status for r in rows) != ["enlarged", "new", "stable", "stable"]


def test_thresholds_are_options(same_grid):
    s, first = same_grid
    strict = compare_sessions(_inputs(s, cords=False), first.registration, ChangeRules(enlarge_relative=10.0))
    assert strict.count("enlarged") == 0 and strict.count("stable") == 3
    assert strict.cord_dice is None
    big_new = compare_sessions(_inputs(s, cords=False), first.registration,
                               ChangeRules(min_new_volume_mm3=1e6))
    assert big_new.count("new") == 0 and big_new.count("too_small") == 1


def test_disappeared_lesion_gets_its_own_row(same_grid):
    """Remove one stable follow-up lesion: its baseline lesion must show as disappeared."""
    s, first = same_grid
    data = np.asanyarray(s.followup_mask.dataobj).copy()
    stable = next(c for c in first.changes if c.status == "stable")
    data[lesion_labels(s.followup_mask) == stable.lesion_id] = 0
    mask = nib.Nifti1Image(data, s.followup_mask.affine)
    gone = compare_sessions(SessionInputs(mask, s.followup_image, s.baseline_mask, s.baseline_image),
                            first.registration)
    assert gone.count("disappeared") == 1 and gone.count("stable") == 1
    row = next(c for c in gone.changes if c.status == "disappeared")
    assert row.lesion_id is None and row.baseline_lesion_ids == stable.baseline_lesion_ids
    assert row.baseline_volume_mm3 == pytest.approx(stable.baseline_volume_mm3)
    # its centre, mapped into the follow-up's world, lies where the removed lesion was
    assert [row.centroid_x_mm, row.centroid_y_mm, row.centroid_z_mm] == pytest.approx(
        [stable.centroid_x_mm, stable.centroid_y_mm, stable.centroid_z_mm], abs=1.5)


@pytest.mark.parametrize("settings", [RegistrationSettings(metric="correlation", init="moments"),
                                      RegistrationSettings(init="geometry")])
def test_other_metric_and_initialisations_recover_the_motion(same_grid, settings):
    s, _ = same_grid
    reg = register_rigid(s.followup_image, s.baseline_image, settings)
    assert _corner_error_mm(reg, s) < 1.0
    assert reg.summary()["Settings"]["metric"] == settings.metric


def test_unknown_settings_are_refused(same_grid):
    s, _ = same_grid
    with pytest.raises(ValueError, match="metric"):
        register_rigid(s.followup_image, s.baseline_image, RegistrationSettings(metric="demons"))
    with pytest.raises(ValueError, match="init"):
        register_rigid(s.followup_image, s.baseline_image, RegistrationSettings(init="magic"))


_SAME_TRANSFORM = """
import sys
import SimpleITK as sitk
from tests.analysis_phantoms import two_sessions
from bidsapp.analysis.registration import register_rigid
s = two_sessions()
before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
reg = register_rigid(s.followup_image, s.baseline_image, followup_cord=s.followup_cord)
assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before  # restored after the pair
print(repr(reg.transform.GetParameters()), repr(reg.final_metric))
"""


def test_the_transform_is_the_same_whatever_the_machines_thread_count(tmp_path):
    """ITK's threaded filters add partial sums in a thread-count-dependent order (with 4 threads the
    parameters differed from 1 thread in the 8th digit, and run to run): the default settings register
    each pair on one thread, so the change tables are reproducible on any node."""
    root = Path(__file__).resolve().parents[1]
    out = {}
    for n in ("1", "4"):
        env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": n, "PYTHONPATH": str(root)}
        out[n] = subprocess.run([sys.executable, "-c", _SAME_TRANSFORM], env=env, cwd=root, check=True,
                                capture_output=True, text=True).stdout
    assert out["1"] == out["4"] and out["1"].startswith("(")
