"""The committed demo models: official nnU-Net v2 layout, small, and accurate on unseen phantoms.

Phantoms here come from seeds the training never used (``demo_training.json`` lists those), with the
acquisitions of the phantom datasets (sagittal 0.8 mm iso, axial 0.5x0.5x3-5 mm, MP2RAGE 1 mm iso).
Segmentation goes through ``bidsapp.pipelines.segment(..., demo=True)``, as the app runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_phantoms import TEST_SEED, held_out_phantom

from bidsapp import models
from bidsapp.demo.phantom import Grid, make_phantom
from bidsapp.demo.train import DEMO_ROOT, TASKS
from bidsapp.pipelines import RunOptions, segment

DEMO_CPU = RunOptions(demo=True, device="cpu")

DEMO_TASKS = ("spinalcord", "lesion_ms", "lesion_ms_mp2rage")


def _folder(task: str) -> Path:
    return models.locate(task, demo=True).path


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (pred & truth).sum() / max(pred.sum() + truth.sum(), 1))


@pytest.fixture(scope="module")
def lesion_results():
    """(contrast, phantom, SegmentationResult) for lesion phantoms of each contrast, segmented once."""
    torch.set_num_threads(2)
    out = []
    for k, (contrast, task) in enumerate((("T2w", "lesion_ms"), ("T2starw", "lesion_ms"),
                                          ("UNIT1", "lesion_ms_mp2rage"))):
        for i in range(4):
            ph = held_out_phantom(contrast, 100 * k + i)
            out.append((contrast, ph, segment(ph.image, task=task, options=DEMO_CPU)))
    return out


def test_training_record_and_seeds_disjoint_from_tests():
    for task in DEMO_TASKS:
        record = json.loads((_folder(task) / "demo_training.json").read_text())
        assert "NOT for research" in record["purpose"]
        assert record["training_seeds"]["seed"] == TASKS[task].seed != TEST_SEED
        assert record["validation_seeds"]["seed"] not in (TEST_SEED, record["training_seeds"]["seed"])
        assert record["command"].startswith("python -m bidsapp.demo.train")


@pytest.mark.parametrize("task", DEMO_TASKS)
def test_official_folder_layout(task):
    folder = _folder(task)
    assert folder.parent == DEMO_ROOT / task
    trainer, plans_name, configuration = folder.name.split("__")
    assert configuration == "3d_fullres"
    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    assert plans["plans_name"] == plans_name
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"].endswith(TASKS[task].network)
    assert dataset["labels"]["background"] == 0 and len(dataset["labels"]) == 2
    ckpts = list(folder.glob("fold_*/checkpoint_final.pth"))
    assert [p.parent.name for p in ckpts] == [f"fold_{TASKS[task].fold}"]
    ckpt = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == trainer and ckpt["init_args"]["configuration"] == "3d_fullres"


def test_total_size_is_small():
    size = sum(p.stat().st_size for t in DEMO_TASKS for p in (DEMO_ROOT / t).rglob("*") if p.is_file())
    assert size < 15 * 2**20, size


def test_nnunetv2_loads_and_agrees():
    """nnunetv2's own predictor (the oracle) loads the demo folder and finds the same cord."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    small = Grid(fov_mm=(32, 32, 40))  # small: quick
    ph = make_phantom("T2w", rng=np.random.default_rng([TEST_SEED, 7]), grid=small)
    folder = _folder("spinalcord")
    oracle = nnUNetPredictor(
        tile_step_size=0.5,
        use_mirroring=False,
        device=torch.device("cpu"),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    oracle.initialize_from_trained_model_folder(
        str(folder), use_folds=(TASKS["spinalcord"].fold,), checkpoint_name="checkpoint_final.pth"
    )
    ours = segment(ph.image, task="spinalcord", options=DEMO_CPU)
    # the engine's own parity with nnunetv2 is tested by the engine; here: our folder works in nnunetv2
    from bidsapp import orientation as ori

    data, reo = ori.to_sct_orientation(ph.image.get_fdata(dtype=np.float32), ph.image.affine, "RPI")
    spacing = ori.reverse_spacing(reo.zooms(ph.image.header.get_zooms()[:3]))
    seg = oracle.predict_single_npy_array(ori.xyz_to_zyx(data)[None], {"spacing": list(spacing)})
    theirs = reo.undo(ori.xyz_to_zyx(seg)) == 1
    assert _dice(theirs, np.asarray(ours.mask.dataobj) > 0) > 0.98


def test_lesion_ms_dice_t2w_and_t2starw(lesion_results):
    for contrast in ("T2w", "T2starw"):
        dices = [
            _dice(np.asarray(r.mask.dataobj) > 0, np.asarray(ph.lesion.dataobj) > 0)
            for c, ph, r in lesion_results
            if c == contrast
        ]
        assert np.mean(dices) >= 0.7, (contrast, np.round(dices, 3))


def test_lesion_ms_mp2rage_dice_unit1(lesion_results):
    dices = [
        _dice(np.asarray(r.mask.dataobj) > 0, np.asarray(ph.lesion.dataobj) > 0)
        for c, ph, r in lesion_results
        if c == "UNIT1"
    ]
    assert np.mean(dices) >= 0.6, np.round(dices, 3)
    for _, _, r in lesion_results:
        assert r.provenance.models[r.provenance.task].demo is True


def test_spinalcord_dice(lesion_results):
    dices = [
        _dice(np.asarray(r.cord.dataobj) > 0, np.asarray(ph.cord.dataobj) > 0)
        for c, ph, r in lesion_results
        if c == "UNIT1"
    ]
    for i, contrast in enumerate(("T2w", "T2starw")):
        ph = held_out_phantom(contrast, 50 + i)
        result = segment(ph.image, task="spinalcord", options=DEMO_CPU)
        dices.append(_dice(np.asarray(result.mask.dataobj) > 0, np.asarray(ph.cord.dataobj) > 0))
    assert np.mean(dices) >= 0.85, np.round(dices, 3)


@pytest.mark.parametrize(
    "contrast,task", [("T2w", "lesion_ms"), ("T2starw", "lesion_ms"), ("UNIT1", "lesion_ms_mp2rage")]
)
def test_lesion_free_images_have_almost_no_false_positives(contrast, task):
    ph = held_out_phantom(contrast, 900, n_lesions=0)
    assert not np.asarray(ph.lesion.dataobj).any()
    mask = np.asarray(segment(ph.image, task=task, options=DEMO_CPU).mask.dataobj) > 0
    fp_mm3 = mask.sum() * float(np.prod(ph.image.header.get_zooms()[:3]))
    assert fp_mm3 <= 10.0, fp_mm3
