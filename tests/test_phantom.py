"""Phantom generator: determinism, geometry, contrasts, BIDS validity of the written dataset."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bidsapp.demo.__main__ import main as demo_main
from bidsapp.demo.dataset import write_dataset
from bidsapp.demo.phantom import (
    AXIAL_ORIENTATIONS,
    SAGITTAL_ORIENTATIONS,
    Appearance,
    Grid,
    make_anatomy,
    make_phantom,
)


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_dataset(tmp_path):
    write_dataset(tmp_path / "a", n_subjects=2, seed=7)
    write_dataset(tmp_path / "b", n_subjects=2, seed=7)
    write_dataset(tmp_path / "c", n_subjects=2, seed=8)
    a, b, c = (_digests(tmp_path / x) for x in "abc")
    assert len(a) > 20 and a == b
    images = [k for k in a if k.endswith(".nii.gz")]
    assert all(a[k] != c[k] for k in images if k in c)  # another seed, other voxels


def test_make_phantom_is_a_pure_function_of_the_rng():
    grid = Grid(orientation=("L", "A", "S"), voxel_size=(0.5, 0.5, 4.0), fov_mm=(40, 40, 60))
    p1 = make_phantom("T2w", rng=np.random.default_rng(3), grid=grid)
    p2 = make_phantom("T2w", rng=np.random.default_rng(3), grid=grid)
    np.testing.assert_array_equal(np.asarray(p1.image.dataobj), np.asarray(p2.image.dataobj))
    np.testing.assert_array_equal(np.asarray(p1.lesion.dataobj), np.asarray(p2.lesion.dataobj))
    np.testing.assert_array_equal(p1.image.affine, p2.image.affine)


@pytest.mark.parametrize(
    "orientation,voxel_size",
    [
        *[(o, (0.8, 0.8, 0.8)) for o in SAGITTAL_ORIENTATIONS[:3]],
        *[(o, (0.5, 0.5, s)) for o, s in zip(AXIAL_ORIENTATIONS, (3.0, 4.0, 5.0, 3.5), strict=True)],
    ],
)
def test_grid_orientation_voxel_size_and_header_codes(orientation, voxel_size):
    fov = (44.0, 48.0, 80.0)
    ph = make_phantom(
        "T2starw",
        rng=np.random.default_rng(1),
        grid=Grid(orientation=orientation, voxel_size=voxel_size, fov_mm=fov, tilt_deg=6.0),
    )
    img = ph.image
    assert nib.aff2axcodes(img.affine) == tuple(orientation)
    np.testing.assert_allclose(img.header.get_zooms()[:3], voxel_size, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), voxel_size, rtol=1e-6)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.header.get_qform(), img.header.get_sform(), atol=1e-4)
    extent = {c: n * v for c, n, v in zip(orientation, img.shape, voxel_size, strict=True)}
    for letters, size in zip(("RL", "AP", "SI"), fov, strict=True):
        axis_extent = next(e for c, e in extent.items() if c in letters)
        assert abs(axis_extent - size) <= max(voxel_size) / 2 + 1e-6
    for mask in (ph.lesion, ph.cord):
        assert mask.shape == img.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(mask.affine, img.affine)
    assert img.get_data_dtype() == np.int16


#: an axial, straight, centred grid of small voxels: the geometry tests measure on it
AXIAL_GRID = Grid(
    orientation=("R", "A", "S"), voxel_size=(0.4, 0.4, 1.0), fov_mm=(40, 40, 60), centre=(0, 0, 0), tilt_deg=0
)


def _axial(contrast: str, seed: int, **kwargs):
    return make_phantom(contrast, rng=np.random.default_rng(seed), grid=AXIAL_GRID, **kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cord_diameter_7_to_10_mm_and_lesions_inside_cord(seed):
    ph = _axial("T2w", seed)
    cord = np.asarray(ph.cord.dataobj).astype(bool)
    lesion = np.asarray(ph.lesion.dataobj).astype(bool)
    area_mm2 = cord.sum(axis=(0, 1)) * 0.4 * 0.4
    diameter = 2 * np.sqrt(area_mm2 / math.pi)  # equivalent circular diameter per axial slice
    assert np.all((diameter > 7.0 - 0.4) & (diameter < 10.0 + 0.4)), diameter.round(2)
    assert not np.any(lesion & ~cord)
    width = max(np.ptp(np.nonzero(cord[:, :, k].any(axis=1))[0]) + 1 for k in range(cord.shape[2])) * 0.4
    assert 7.0 <= width <= 13.0  # R-L width of an elliptical cord (R-L/A-P ratio 1.2-1.5)


def test_lesion_sizes_and_counts():
    rng = np.random.default_rng(11)
    anatomies = [make_anatomy(rng) for _ in range(40)]
    counts = [len(a.lesions) for a in anatomies]
    assert min(counts) == 0 and max(counts) == 4
    for lesion in (les for a in anatomies for les in a.lesions):
        d = lesion.diameters_mm
        assert 2.0 <= max(d) <= 15.0 and min(d) >= 2.0
        assert lesion.u**2 + lesion.v**2 < 1
    anatomy = make_anatomy(np.random.default_rng(5), n_lesions=3, z_range=(-20, 20))
    for lesion in anatomy.lesions:  # one at a time: lesions may touch and merge, as confluent ones do
        single = dataclasses.replace(anatomy, lesions=(lesion,))
        mask = np.asarray(_axial("T2w", 5, anatomy=single).lesion.dataobj).astype(bool)
        extent = [np.ptp(np.nonzero(mask.any(axis=tuple({0, 1, 2} - {a})))[0]) + 1 for a in range(3)]
        length = extent[2] * 1.0
        assert abs(length - lesion.diameters_mm[2]) <= 2.0, (length, lesion)
        assert extent[0] * 0.4 <= lesion.diameters_mm[0] + 2.5  # in-plane, curved along the cord


@pytest.mark.parametrize("contrast", ["T2w", "T2starw", "UNIT1"])
def test_tissue_contrast(contrast):
    ph = _axial(
        contrast, 21, anatomy=make_anatomy(np.random.default_rng(21), n_lesions=4, lesion_size_range=(6, 12))
    )
    data = ph.image.get_fdata()
    cord = np.asarray(ph.cord.dataobj).astype(bool)
    lesion = np.asarray(ph.lesion.dataobj).astype(bool)
    assert lesion.sum() > 50
    core = ndimage.binary_erosion(cord & ~lesion, iterations=2)
    csf = ndimage.binary_dilation(cord, iterations=6) & ~ndimage.binary_dilation(cord, iterations=2)
    csf &= np.abs(np.arange(data.shape[1]) - data.shape[1] / 2)[None, :, None] < 12  # beside the cord
    lesion_core = ndimage.binary_erosion(lesion, iterations=1)
    ratio_lesion = np.median(data[lesion_core]) / np.median(data[core])
    if contrast == "UNIT1":  # cord bright, CSF dark, lesions darker than the cord
        assert np.median(data[csf]) < 0.6 * np.median(data[core])
        assert ratio_lesion < 0.85
    else:
        assert np.median(data[csf]) > 1.5 * np.median(data[core])
        assert ratio_lesion > 1.3


def test_noise_and_bias_are_present():
    anatomy = make_anatomy(np.random.default_rng(4), n_lesions=0)
    ph = _axial("T2w", 4, anatomy=anatomy, look=Appearance(bias=0.25))
    flat = make_phantom(
        "T2w",
        rng=np.random.default_rng(4),
        anatomy=ph.anatomy,
        grid=AXIAL_GRID,
        look=Appearance(noise=0.0, bias=0.0, dtype=np.float32),
    )
    diff = ph.image.get_fdata() - flat.image.get_fdata()
    assert np.std(diff) > 5.0  # noise and bias change the clean image
    assert np.unique(np.asarray(ph.lesion.dataobj)).tolist() == [0]


def test_dataset_layout(phantom_bids):
    names = {p.name for p in phantom_bids.rglob("*.nii.gz") if "derivatives" not in p.parts}
    for expected in (
        "sub-01_ses-M0_acq-sag_T2w.nii.gz",
        "sub-01_ses-M12_T2starw.nii.gz",
        "sub-01_ses-M0_UNIT1.nii.gz",
        "sub-01_ses-M0_inv-1_MP2RAGE.nii.gz",
        "sub-01_ses-M0_inv-2_MP2RAGE.nii.gz",
        "sub-02_acq-ax_run-2_T2w.nii.gz",
        "sub-04_ses-M0_T2star.nii.gz",
    ):
        assert expected in names
    rows = list(csv.DictReader((phantom_bids / "participants.tsv").open(), delimiter="\t"))
    assert [r["participant_id"] for r in rows] == [f"sub-0{i}" for i in range(1, 6)]
    gt = phantom_bids / "derivatives" / "groundtruth"
    assert json.loads((gt / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    for image in (p for p in phantom_bids.glob("sub-*/**/*.nii.gz") if "MP2RAGE" not in p.name):
        stem, suffix = image.name[:-7].rsplit("_", 1)
        lesion = (
            gt / image.parent.relative_to(phantom_bids) / f"{stem}_label-lesion_desc-{suffix}_mask.nii.gz"
        )
        cord = lesion.with_name(lesion.name.replace("label-lesion", "label-SC"))
        img, les, sc = nib.load(image), nib.load(lesion), nib.load(cord)
        assert les.shape == img.shape and np.allclose(les.affine, img.affine)
        assert np.asarray(sc.dataobj).sum() > 1000
        meta = json.loads(lesion.with_suffix("").with_suffix(".json").read_text())
        assert meta["LesionCount"] == ndimage.label(np.asarray(les.dataobj), np.ones((3, 3, 3)))[1]
        assert meta["Sources"] == [f"bids:raw:{image.relative_to(phantom_bids).as_posix()}"]
    # the healthy control (sub-03) has no lesion anywhere; patients have some
    counts = {p.name: json.loads(p.read_text())["LesionCount"] for p in gt.rglob("*label-lesion*_mask.json")}
    assert all(n == 0 for k, n in counts.items() if k.startswith("sub-03"))
    assert sum(n > 0 for n in counts.values()) >= 8


def test_bids_validator_zero_errors(bids_validator, phantom_bids):
    out = subprocess.run(
        [str(bids_validator), "-r", "--format", "json", str(phantom_bids)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(out.stdout)
    errors = [i for i in report["issues"]["issues"] if i.get("severity") == "error"]
    assert errors == [], errors[:3]
    assert out.returncode == 0


def test_cli(tmp_path, capsys):
    assert demo_main([str(tmp_path / "d"), "--subjects", "1", "--seed", "3"]) == 0
    assert (tmp_path / "d" / "sub-01" / "ses-M0" / "anat" / "sub-01_ses-M0_acq-sag_T2w.nii.gz").is_file()
    assert "of 1 subjects" in capsys.readouterr().out
    for bad in (["--subjects", "0"], ["--seed", "-1"], ["--subjects", "x"]):
        with pytest.raises(SystemExit) as exc:
            demo_main([str(tmp_path / "e"), *bad])
        assert exc.value.code == 2
