"""Our vertebral level map against the REAL SCT 7.3 (``make test-sct``): ``sct_label_vertebrae -i IMG -s
CORD -c t2 -discfile DISCS`` on phantoms with known discs, in several orientations, with the discs on the
image itself or on a sagittal image of the same session (the projection works in millimetres). Voxel for
voxel, and every lesion's ``vert_level`` is the majority of its voxels in SCT's own map. The bounding-disc
variant (``bounding_only``) is SCT's rule given only the bounding discs: SCT run on that file."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp.analysis.lesions import lesion_labels
from bidsapp.analysis.levels import (
    checked_rule,
    disc_points,
    lesion_levels,
    level_map,
    level_name,
    level_rule,
)
from bidsapp.demo.phantom import Appearance, Grid, make_anatomy, make_phantom
from bidsapp.demo.vertebrae import disc_label_image
from tests.sct_real import save, sct  # noqa: F401 - session fixture

pytestmark = pytest.mark.sct_oracle

SAGITTAL = dict(voxel_size=(0.8, 0.8, 0.8), fov_mm=(40, 48, 100))
#: case -> (seed, grid of the segmented image, grid of the image the discs were drawn on or None: itself)
CASES = {
    "sagittal RAS": (11, Grid(orientation=("R", "A", "S"), tilt_deg=0.0, **SAGITTAL), None),
    "sagittal PSR": (12, Grid(orientation=("P", "S", "R"), tilt_deg=0.0, **SAGITTAL), None),
    "sagittal ASL oblique": (13, Grid(orientation=("A", "S", "L"), tilt_deg=7.5, **SAGITTAL), None),
    "axial LAS, discs of a sagittal PSR": (
        14, Grid(orientation=("L", "A", "S"), voxel_size=(0.5, 0.5, 3.0), fov_mm=(44, 44, 70), tilt_deg=0.0),
        Grid(orientation=("P", "S", "R"), tilt_deg=0.0, **SAGITTAL)),
    "axial RPI oblique, discs of an oblique sagittal LPS": (
        15, Grid(orientation=("R", "P", "I"), voxel_size=(0.5, 0.5, 5.0), fov_mm=(44, 44, 80), tilt_deg=-6.0),
        Grid(orientation=("L", "P", "S"), tilt_deg=4.0, **SAGITTAL)),
}


def _write_case(seed: int, grid: Grid, discs_grid: Grid | None, folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    anatomy = make_anatomy(rng, n_lesions=4, z_range=(-30, 30))
    look = Appearance(noise=0.02)
    image = make_phantom("T2w", rng=rng, anatomy=anatomy, grid=grid, look=look)
    drawn_on = image if discs_grid is None else make_phantom("T2w", rng=rng, anatomy=anatomy, grid=discs_grid,
                                                             look=look)
    files = {"image": image.image, "cord": image.cord, "lesion": image.lesion,
             "discs": disc_label_image(drawn_on.image, anatomy)}
    return {key: save(img, folder / f"{key}.nii.gz") for key, img in files.items()}


def _majority_in(sct_map: np.ndarray, labels: np.ndarray, lesion_id: int) -> str | None:
    values = sct_map[(labels == lesion_id) & (sct_map > 0)]
    if values.size == 0:
        return None
    found, counts = np.unique(values, return_counts=True)
    return level_name(int(found[np.argmax(counts)]))


@pytest.mark.parametrize("case", list(CASES))
def test_level_map_is_scts_voxel_for_voxel(sct, tmp_path, case):  # noqa: F811 - fixture
    seed, grid, discs_grid = CASES[case]
    files = _write_case(seed, grid, discs_grid, tmp_path)
    sct.run("sct_label_vertebrae", "-i", files["image"], "-s", files["cord"], "-c", "t2",
            "-discfile", files["discs"], "-ofolder", tmp_path / "sct")
    theirs = np.asanyarray(nib.load(tmp_path / "sct" / "cord_labeled.nii.gz").dataobj).astype(int)
    cord, discs = nib.load(files["cord"]), disc_points(nib.load(files["discs"]))
    ours = np.asanyarray(level_map(cord, discs).dataobj).astype(int)
    assert len(np.unique(theirs[theirs > 0])) >= 4, "the phantom must span several levels"
    assert ours.shape == theirs.shape and int((ours != theirs).sum()) == 0, \
        f"{int((ours != theirs).sum())} of {int((theirs > 0).sum())} cord voxels differ"

    labels = lesion_labels(nib.load(files["lesion"]))
    rule = level_rule(cord, discs)
    rows = lesion_levels(labels, rule.voxel_levels(np.asanyarray(cord.dataobj) > 0))
    assert rows, "the phantom has lesions"
    assert [r.vert_level for r in rows] == [_majority_in(theirs, labels, r.lesion_id) for r in rows]
    assert any(r.vert_level for r in rows)


def _sct_levels(sct, files: dict[str, Path], discs: Path, out: Path) -> np.ndarray:  # noqa: F811 - fixture
    sct.run("sct_label_vertebrae", "-i", files["image"], "-s", files["cord"], "-c", "t2", "-discfile", discs,
            "-ofolder", out)
    return np.asanyarray(nib.load(out / "cord_labeled.nii.gz").dataobj).astype(int)


def test_bounding_discs_are_scts_rule_on_the_bounding_discs(sct, tmp_path):  # noqa: F811 - fixture
    # a short axial image (40 mm) under a sagittal image's discs: several discs beyond an end of its cord
    axial = Grid(orientation=("L", "A", "S"), voxel_size=(0.5, 0.5, 4.0), fov_mm=(44, 44, 40), tilt_deg=3.0)
    files = _write_case(16, axial, Grid(orientation=("P", "S", "R"), tilt_deg=0.0, **SAGITTAL), tmp_path)
    cord, discs = nib.load(files["cord"]), disc_points(nib.load(files["discs"]))
    exact, place = checked_rule(cord, discs, "axial")
    bounded, _ = checked_rule(cord, discs, "axial", bounding_only=True)
    assert place.count("above") >= 2 or place.count("below") >= 2, place
    inside = np.asanyarray(cord.dataobj) > 0
    ours_exact, ours_bounded = (r.voxel_levels(inside).level.astype(int) for r in (exact, bounded))
    assert int((ours_exact != _sct_levels(sct, files, files["discs"], tmp_path / "all")).sum()) == 0

    kept = np.zeros(discs.shape, np.uint8)  # the bounding discs, on the disc image's own grid
    for value, voxel in zip(*_bounding(discs, place), strict=True):
        kept[tuple(voxel)] = value
    bounding_file = save(nib.Nifti1Image(kept, nib.load(files["discs"]).affine), tmp_path / "bounding.nii.gz")
    assert int((ours_bounded != _sct_levels(sct, files, bounding_file, tmp_path / "bounding")).sum()) == 0
    assert int((ours_bounded != ours_exact).sum()) > 0, "the case must show SCT's collapse at the ends"


def _bounding(discs, place) -> tuple[list[int], list[np.ndarray]]:
    """By hand: the discs whose nearest centreline point is inside the centreline."""
    keep = [i for i, where in enumerate(place.where) if where == "along"]
    return [int(discs.values[i]) for i in keep], [discs.voxels[i] for i in keep]


def _qform_only(img: nib.Nifti1Image) -> nib.Nifti1Image:
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), None, img.header.copy())
    out.set_qform(img.affine, 1)
    out.set_sform(None, 0)
    return out


def test_a_qform_only_oblique_image_too(sct, tmp_path):  # noqa: F811 - fixture
    # no sform: SCT reads the qform (with its permissive quaternion threshold)
    files = _write_case(17, Grid(orientation=("P", "I", "R"), tilt_deg=6.3, **SAGITTAL), None, tmp_path)
    for key in ("image", "cord", "discs"):
        save(_qform_only(nib.load(files[key])), files[key])
    cord = nib.load(files["cord"])
    assert int(cord.header["sform_code"]) == 0 and int(cord.header["qform_code"]) == 1
    theirs = _sct_levels(sct, files, files["discs"], tmp_path / "sct")
    ours = np.asanyarray(level_map(cord, disc_points(nib.load(files["discs"]))).dataobj).astype(int)
    assert len(np.unique(theirs[theirs > 0])) >= 4 and int((ours != theirs).sum()) == 0
