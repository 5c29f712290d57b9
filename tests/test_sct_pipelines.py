"""Our default outputs are SCT 7.3's (issue 15): pipelines.segment against SCT 7.3 driven through nnunetv2
(tests/sct_oracle.py) on release-shaped random checkpoints and non-RAS phantoms: lesion_ms (5 folds, SCT's
vote and soft map), spinalcord (noisy: SCT keeps the largest object), lesion_ms_mp2rage (one fold, on our
documented physical-space crop), the opt-in box, --ensemble logits, a crop release's crop_metadata.json."""
from __future__ import annotations

import json
import math
import shutil
import sys
import types

import numpy as np
import pytest
from scipy import ndimage

from bidsapp import pipelines
from bidsapp.pipelines import RunOptions
from tests import sct_oracle as sct
from tests.engine_models import dice, one_torch_thread  # noqa: F401 - autouse fixture

CPU = RunOptions(device="cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sct")
    lesion, _ = sct.build_lesion_ms_release(tmp / "ms", "raise SystemExit('ran')\n")
    return {"lesion_ms": lesion, "spinalcord": sct.build_spinalcord(tmp / "sc"),
            "lesion_ms_mp2rage": sct.build_mp2rage(tmp / "mp")}


@pytest.fixture(scope="module")
def oracles(folders):
    return {name: sct.sct_predictor(folder) for name, folder in folders.items()}


def _arr(img) -> np.ndarray:
    return np.asanyarray(img.dataobj)


def _agree(mask, soft, ref_mask, ref_soft) -> None:
    assert 0.01 < ref_mask.mean() < 0.9, "the phantom must give a real mask"
    assert dice(_arr(mask), ref_mask) >= 0.999
    if soft is not None:
        assert float(np.abs(_arr(soft) - ref_soft).mean()) <= 0.005


@pytest.mark.parametrize("case", ["las", "psr"])
def test_lesion_ms_default_is_scts_mask_and_soft_map(case, folders, oracles):
    img = sct.sct_image(case, seed=3)
    res = pipelines.segment(img, task="lesion_ms", models=folders, options=CPU)
    _agree(res.mask, res.probseg, sct.sct_deepseg("lesion_ms", oracles["lesion_ms"], img),
           sct.sct_deepseg("lesion_ms", oracles["lesion_ms"], img, soft=True))
    prov = res.provenance
    assert prov.ensemble == "sct" and prov.crop is None and res.cord is None  # the whole image, as SCT 7.3
    assert list(prov.models) == ["lesion_ms"] and prov.folds == {"lesion_ms": [0, 1, 2, 3, 4]}


def test_ensemble_logits_is_nnunets_not_scts(folders, oracles):
    img = sct.sct_image("las", seed=3)
    res = pipelines.segment(img, task="lesion_ms", models=folders,
                            options=RunOptions(device="cpu", ensemble="logits"))
    mean = sct.logit_mean(oracles["lesion_ms"], img)
    assert dice(_arr(res.mask), mean.argmax(0) == 1) >= 0.995
    assert float(np.abs(_arr(res.probseg) - mean[1]).mean()) <= 0.005
    assert dice(_arr(res.mask), sct.sct_deepseg("lesion_ms", oracles["lesion_ms"], img)) < 0.97  # teeth
    assert res.provenance.ensemble == "logits"


def test_spinalcord_keeps_scts_largest_object(folders, oracles):
    img = sct.sct_image("psr", seed=5)
    res = pipelines.segment(img, task="spinalcord", models=folders, options=CPU)
    raw = sct.segment_nnunet(oracles["spinalcord"], img, ensemble=False, soft=False)
    assert ndimage.label(raw)[1] >= 10  # the noisy model's islands
    ref = sct.sct_deepseg("spinalcord", oracles["spinalcord"], img)
    assert dice(_arr(res.mask), ref) >= 0.999 and ndimage.label(_arr(res.mask))[1] == 1
    assert "largest 6-connected object" in res.provenance.threshold


def _si_axis(affine) -> int:
    rot = np.asarray(affine)[:3, :3]
    return int(np.argmax(np.abs(rot[2]) / np.linalg.norm(rot, axis=0)))


def _our_mp2rage_box(cord: np.ndarray, affine) -> tuple[slice, ...]:
    """Our documented crop, written out: the cord's box + 30 mm in-plane and 5 mm along the axis closest to
    S-I, in voxels rounded up, clipped to the image."""
    zooms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    si = _si_axis(affine)
    hit = np.argwhere(cord)
    box = []
    for axis in range(3):
        margin = math.ceil((5.0 if axis == si else 30.0) / zooms[axis])
        box.append(slice(max(int(hit[:, axis].min()) - margin, 0),
                         min(int(hit[:, axis].max()) + 1 + margin, cord.shape[axis])))
    return tuple(box)


def test_mp2rage_is_sct_on_our_physical_space_crop(folders, oracles):
    img = sct.sct_image("psr_large", seed=5)
    res = pipelines.segment(img, task="lesion_ms_mp2rage", models=folders, options=CPU)
    cord = sct.sct_deepseg("spinalcord", oracles["spinalcord"], img).astype(bool)
    assert dice(_arr(res.cord), cord) >= 0.999
    box = _our_mp2rage_box(cord, img.affine)
    assert res.provenance.crop.box_voxels == [[s.start, s.stop] for s in box]
    assert any(b.stop - b.start < n for b, n in zip(box, img.shape, strict=True))  # a real crop
    ref = np.zeros(img.shape, np.uint8)
    ref[box] = sct.sct_deepseg("lesion_ms_mp2rage", oracles["lesion_ms_mp2rage"], img.slicer[box])
    _agree(res.mask, None, ref, None)


def test_crop_is_opt_in_and_uses_scts_cord(folders, oracles):
    img = sct.sct_image("las", seed=3)
    boxed = pipelines.segment(img, task="lesion_ms", models=folders,
                              options=RunOptions(device="cpu", crop=True))
    cord = sct.sct_deepseg("spinalcord", oracles["spinalcord"], img).astype(bool)
    assert dice(_arr(boxed.cord), cord) >= 0.999
    whole = sct.sct_deepseg("lesion_ms", oracles["lesion_ms"], img)
    box = tuple(slice(a, b) for a, b in boxed.provenance.crop.box_voxels)
    assert dice(_arr(boxed.mask)[box], whole[box]) >= 0.999  # inside the box: SCT's whole-image mask
    outside = np.ones(img.shape, bool)
    outside[box] = False
    assert outside.any() and not _arr(boxed.mask)[outside].any()


PADS = {"pad_superior": 6.0, "pad_inferior": 9.0, "pad_left": 4.0, "pad_right": 3.0, "pad_anterior": 5.0,
        "pad_posterior": 2.0}


@pytest.fixture(scope="module")
def crop_release(folders, tmp_path_factory):
    """The lesion_ms folder as a release trained on crops would be installed: with crop_metadata.json."""
    dest = tmp_path_factory.mktemp("crop") / folders["lesion_ms"].name
    shutil.copytree(folders["lesion_ms"], dest)
    (dest / "crop_metadata.json").write_text(json.dumps(PADS))
    return {**folders, "lesion_ms": dest}


def test_crop_release_runs_on_its_padded_box_around_scts_cord(crop_release, oracles):
    img = sct.sct_image("las", seed=3)
    res = pipelines.segment(img, task="lesion_ms", models=crop_release, options=CPU)
    cord = sct.sct_deepseg("spinalcord", oracles["spinalcord"], img).astype(bool)
    # the padded box by hand: LAS 0.8 x 0.8 x 3 mm; axis 0 points to L (low face right 3 mm -> 4 voxels,
    # high face left 4 mm -> 5), axis 1 to A (posterior 2 mm -> 3, anterior 5 mm -> 7), axis 2 to S
    # (inferior 9 mm -> 3 slices, superior 6 mm -> 2)
    hit = np.argwhere(cord)
    box = tuple(slice(max(int(hit[:, a].min()) - lo, 0), min(int(hit[:, a].max()) + 1 + hi, img.shape[a]))
                for a, (lo, hi) in enumerate(((4, 5), (3, 7), (3, 2))))
    assert res.provenance.crop.box_voxels == [[s.start, s.stop] for s in box]
    assert any(b.stop - b.start < n for b, n in zip(box, img.shape, strict=True))  # a real crop
    ref = np.zeros(img.shape, np.uint8)
    ref[box] = sct.sct_deepseg("lesion_ms", oracles["lesion_ms"], img.slicer[box])
    _agree(res.mask, None, ref, None)
    assert dice(_arr(res.cord), cord) >= 0.999 and "spinalcord" in res.provenance.models


def test_crop_release_uses_the_sc_crop_detector_when_installed(crop_release, monkeypatch):
    img = sct.sct_image("las", seed=3)
    calls = []

    def detect(image, **pads):
        calls.append(pads)
        return {"xmin": 10, "xmax": 49, "ymin": 8, "ymax": 45, "zmin": 2, "zmax": 15}

    fake = types.ModuleType("sc_crop")
    fake.detect = detect
    fake.__spec__ = types.SimpleNamespace(name="sc_crop")
    monkeypatch.setitem(sys.modules, "sc_crop", fake)
    monkeypatch.setattr(pipelines, "_cord", lambda *a, **k: pytest.fail("the detector places the box"))
    res = pipelines.segment(img, task="lesion_ms", models=crop_release, options=CPU)
    assert calls == [PADS]
    assert res.provenance.crop.box_voxels == [[10, 50], [8, 46], [2, 16]] and res.cord is None
