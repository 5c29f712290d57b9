"""Phantoms with known discs (bidsapp.demo.vertebrae, levelfiles): disc identities, disc label files in the
manual-correction / spine-generic layout, true level maps; the existing demo files unchanged by them."""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp.analysis.lesions import lesion_labels
from bidsapp.analysis.levels import (
    VoxelLevels,
    checked_rule,
    disc_name,
    disc_points,
    disc_source,
    lesion_levels,
    level_name,
)
from bidsapp.demo.dataset import write_dataset
from bidsapp.demo.phantom import CSF, DISC, MUSCLE, make_anatomy
from bidsapp.demo.phantom import _labels as tissue_at
from bidsapp.demo.vertebrae import CENTRE_DISC, disc_heights, disc_tips, true_levels
from bidsapp.imaging import same_grid

LABELS = Path("derivatives") / "labels"
TRUTH = Path("derivatives") / "groundtruth"


def _images(bids: Path) -> list[Path]:
    return sorted(p for p in bids.glob("sub-*/**/anat/*.nii.gz") if "MP2RAGE" not in p.name)


def _disc_file(bids: Path, image: Path) -> Path:
    rel = image.parent.relative_to(bids)
    return bids / LABELS / rel / image.name.replace(".nii.gz", "_label-discs_dlabel.nii.gz")


def _truth(bids: Path, image: Path, what: str) -> Path:
    stem, suffix = image.name[:-7].rsplit("_", 1)
    names = {"cord": f"{stem}_label-SC_desc-{suffix}_mask.nii.gz",
             "lesion": f"{stem}_label-lesion_desc-{suffix}_mask.nii.gz",
             "levels": f"{stem}_desc-{suffix}Levels_dseg.nii.gz"}
    return bids / TRUTH / image.parent.relative_to(bids) / names[what]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_discs_have_scts_values_one_period_apart(seed):
    anatomy = make_anatomy(np.random.default_rng(seed))
    heights = disc_heights(anatomy)
    assert sorted(heights) == list(range(1, 26))
    z = np.array([heights[v] for v in range(1, 26)])
    np.testing.assert_allclose(-np.diff(z), anatomy.vertebra_period)  # C1 top highest, L5/S1 lowest
    assert abs(heights[CENTRE_DISC]) <= anatomy.vertebra_period / 2  # C4/C5 nearest the middle
    # level k from disc k down to disc k + 1; above C1's top, none
    probe = np.array([heights[3] + 0.01, heights[3], heights[4] + 0.01, heights[25] - 50, heights[1] + 0.01])
    assert true_levels(anatomy, probe).tolist() == [2, 3, 3, 25, 0]


@pytest.mark.parametrize("seed", [0, 3])
def test_a_disc_tip_is_the_posterior_edge_of_the_disc(seed):
    # judged by the phantom's own tissue model: disc just in front of the tip, the 1.5 mm gap (muscle) just
    # behind it, then the CSF of the thecal sac
    anatomy = make_anatomy(np.random.default_rng(seed))
    for value, tip in disc_tips(anatomy).items():
        if abs(tip[2]) > 60:
            continue
        probes = np.stack([tip + [0, 0.3, 0], tip - [0, 0.3, 0], tip - [0, 1.7, 0]], axis=1)
        assert tissue_at(anatomy, probes).tolist() == [DISC, MUSCLE, CSF], value


def test_disc_labels_in_the_demo_dataset(phantom_bids):
    labels = phantom_bids / LABELS
    assert "_label-discs_dlabel.nii.gz" in (labels / ".bidsignore").read_text()
    assert not (labels / "dataset_description.json").exists()  # see levelfiles.write_labels_dataset
    sagittal = 0
    for image in _images(phantom_bids):
        path = _disc_file(phantom_bids, image)
        if "acq-ax" in image.name or image.name.endswith(("_T2starw.nii.gz", "_T2star.nii.gz")):
            assert not path.exists(), path  # axial images: no labels of their own
            continue
        sagittal += 1
        img, discs = nib.load(image), nib.load(path)
        assert same_grid(discs, img) and discs.get_data_dtype() == np.uint8
        data = np.asanyarray(discs.dataobj)
        voxels = np.argwhere(data)
        values = data[tuple(voxels.T)].astype(int)
        assert len(values) >= 4 and len(set(values.tolist())) == len(values)
        assert set(values.tolist()) <= set(range(1, 26))
        heights = (discs.affine[:3, :3] @ voxels.T + discs.affine[:3, 3:4])[2]
        assert np.all(np.diff(values[np.argsort(heights)]) < 0)  # higher disc, smaller value
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["SpatialReference"] == "orig"
        assert sidecar["GeneratedBy"][0]["Name"] == "cordlesion-phantom"
        assert [d["Value"] for d in sidecar["PhantomDiscs"]] == sorted(values.tolist())
    assert sagittal >= 5


def test_true_level_maps_and_lesion_levels_in_the_ground_truth(phantom_bids):
    for image in _images(phantom_bids):
        levels_path = _truth(phantom_bids, image, "levels")
        levels, cord = nib.load(levels_path), nib.load(_truth(phantom_bids, image, "cord"))
        assert same_grid(levels, nib.load(image))
        data, inside = np.asanyarray(levels.dataobj), np.asanyarray(cord.dataobj) > 0
        assert not data[~inside].any() and data[inside].all()
        rows = (levels_path.parent / levels_path.name.replace(".nii.gz", ".tsv")).read_text().splitlines()
        assert rows[0] == "index\tname"
        assert rows[1:] == [f"{v}\t{level_name(v)}" for v in sorted(set(data[inside].tolist()))]
        sidecar = json.loads(levels_path.with_name(levels_path.name.replace(".nii.gz", ".json")).read_text())
        lesions = json.loads(_truth(phantom_bids, image, "lesion").with_suffix("").with_suffix(".json")
                             .read_text())["PhantomLesions"]
        assert len(sidecar["PhantomLesionLevels"]) == len(lesions)
        for truth, lesion in zip(sidecar["PhantomLesionLevels"], lesions, strict=True):
            assert truth["VertLevel"] in truth["VertLevels"]
            top = lesion["HeightMm"] + lesion["DiametersMm"][2] / 2
            assert truth["VertLevels"][0] == level_name(_level_at(sidecar["PhantomDiscHeightsMm"], top))


def _level_at(disc_heights_mm: dict[str, float], z: float) -> int:
    """From the sidecar's disc heights: the value of the lowest disc at or above z."""
    value_of = {disc_name(v): v for v in range(1, 26)}
    return min((h, value_of[name]) for name, h in disc_heights_mm.items() if h >= z)[1]


def _true_level_range(image: Path, bids: Path, cord: nib.Nifti1Image, voxels: np.ndarray,
                      margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """By hand from the ground-truth sidecars: the true levels at the top and the bottom of each voxel's S-I
    extent widened by ``margin_mm`` (anatomy heights: the session's motion undone)."""
    lesion_json = _truth(bids, image, "lesion").with_suffix("").with_suffix(".json")
    motion = np.array(json.loads(lesion_json.read_text())["PhantomSubjectMotionRAS"])
    levels_json = _truth(bids, image, "levels").with_name(_truth(bids, image, "levels").name[:-7] + ".json")
    value_of = {disc_name(v): v for v in range(1, 26)}
    heights = sorted((h, value_of[n]) for n, h in json.loads(levels_json.read_text())["PhantomDiscHeightsMm"]
                     .items())
    world = cord.affine @ np.c_[voxels, np.ones(len(voxels))].T
    z = (np.linalg.inv(motion) @ world)[2]
    half = 0.5 * np.abs(cord.affine[2, :3]).sum() + margin_mm

    def level(height: float) -> int:
        above = [v for h, v in heights if h >= height]
        return above[0] if above else heights[-1][1] - 1
    return np.array([level(a + half) for a in z]), np.array([level(a - half) for a in z])


def test_scts_rule_on_the_demo_discs_gives_the_true_levels(phantom_bids):
    # a voxel's level is right to within its own S-I extent and 3 mm: SCT cuts the cord perpendicular to it
    # at each disc's projection, the phantom's discs are horizontal slabs, a thick axial slice straddles a
    # disc.
    # Shared (sagittal) discs: only the discs bounding the image's cord (discs.bounding_discs)
    labels_dir = phantom_bids / LABELS
    labels = [p.relative_to(labels_dir).as_posix() for p in labels_dir.rglob("*.nii.gz")]
    checked, lesions, same = 0, 0, 0
    for image in _images(phantom_bids):
        source = disc_source(image.relative_to(phantom_bids).as_posix(), labels)
        if source is None:
            assert image.name.startswith("sub-02_")  # the subject without a sagittal image
            continue
        cord = nib.load(_truth(phantom_bids, image, "cord"))
        rule, _ = checked_rule(cord, disc_points(nib.load(labels_dir / source.labels)), image.name,
                               bounding_only=source.shared)
        inside = np.asanyarray(cord.dataobj) > 0
        voxels = np.argwhere(inside)
        ours = rule.voxel_levels(inside).level[tuple(voxels.T)]
        top, bottom = _true_level_range(image, phantom_bids, cord, voxels, 3.0)
        assert float(((ours >= top) & (ours <= bottom)).mean()) >= 0.99, image.name
        truth = np.asanyarray(nib.load(_truth(phantom_bids, image, "levels")).dataobj)
        labelled = lesion_labels(nib.load(_truth(phantom_bids, image, "lesion")))
        union = inside | (labelled > 0)
        for a, b in zip(lesion_levels(labelled, rule.voxel_levels(union)),
                        lesion_levels(labelled, VoxelLevels(truth.astype(np.int16), np.zeros(truth.shape))),
                        strict=True):
            lesions += b.vert_level is not None
            same += b.vert_level is not None and a.vert_level == b.vert_level
        checked += 1
    assert checked >= 10 and lesions >= 10 and same / lesions >= 0.8, (checked, lesions, same)


#: sha256 of the decompressed content of demo files written before the discs had identities (seed 7)
PINNED = {
    "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_T2w.nii.gz": "5a5c40df8ccb9800",
    "sub-01/ses-M0/anat/sub-01_ses-M0_UNIT1.nii.gz": "f4d690cd50e9232d",
    "sub-01/ses-M0/anat/sub-01_ses-M0_T2starw.nii.gz": "ccb1d62ebcb1f735",
    "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_T2w.json": "7b235abfad767052",
    "derivatives/groundtruth/sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_label-lesion_desc-T2w_mask.nii.gz":
        "1c088c151b79d452",
    "derivatives/groundtruth/sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_label-lesion_desc-T2w_mask.json":
        "2761bdc6777a0fc5",
    "derivatives/groundtruth/sub-01/ses-M0/anat/sub-01_ses-M0_label-SC_desc-UNIT1_mask.nii.gz":
        "f4a2152e581d290c",
}


def test_the_demo_files_of_a_seed_are_unchanged_by_the_discs(tmp_path):
    write_dataset(tmp_path, n_subjects=1, seed=7)
    for rel, digest in PINNED.items():
        raw = (tmp_path / rel).read_bytes()
        content = gzip.decompress(raw) if rel.endswith(".gz") else raw
        assert hashlib.sha256(content).hexdigest()[:16] == digest, rel
