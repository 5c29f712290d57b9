"""Routing to the legacy models in a BIDS run, beside lesion_ms: distinct valid names, honest sidecars."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bidsapp.cli import main
from bidsapp.demo.dataset import write_dataset
from bidsapp.validation import validate

CONFIG = {"use_default_rules": False, "rules": [
    {"match": {"suffix": "T2w", "acq": "ax", "run": 1}, "tasks": ["lesion_ms", "t2_ax"]},
    {"match": {"suffix": "T2w"}, "tasks": []},
    {"match": {"suffix": "T2starw"}, "tasks": []},
]}


@pytest.fixture(scope="module")
def legacy_run(tmp_path_factory):
    bids = tmp_path_factory.mktemp("legacy_bids")
    images = write_dataset(bids, n_subjects=2, seed=990_005)
    config = tmp_path_factory.mktemp("cfg") / "routing.json"
    config.write_text(json.dumps(CONFIG))
    out = tmp_path_factory.mktemp("legacy_out") / "cordlesion"
    code = main([str(bids), str(out), "participant", "--participant-label", "02", "--demo",
                 "--config", str(config), "--nprocs", "1", "--omp-nthreads", "1", "--device", "cpu",
                 "--skip-bids-validator"])
    assert code == 0
    return bids, out, images


def test_two_models_on_one_image_have_distinct_valid_names(bids_validator, legacy_run):
    _, out, _ = legacy_run
    anat = out / "sub-02" / "anat"
    masks = sorted(p.name for p in anat.glob("*_mask.nii.gz"))
    assert masks == ["sub-02_acq-ax_run-1_label-SC_desc-T2w_mask.nii.gz",  # lesion_ms's cord (issue 17)
                     "sub-02_acq-ax_run-1_label-lesion_desc-T2wLegacyAx_mask.nii.gz",
                     "sub-02_acq-ax_run-1_label-lesion_desc-T2w_mask.nii.gz"]
    report = validate(out)
    assert report.errors == {}, report.errors


def test_sidecars_say_which_model_made_which(legacy_run):
    _, out, _ = legacy_run
    anat = out / "sub-02" / "anat"
    lesion_ms = json.loads((anat / "sub-02_acq-ax_run-1_label-lesion_desc-T2w_mask.json").read_text())
    legacy = json.loads((anat / "sub-02_acq-ax_run-1_label-lesion_desc-T2wLegacyAx_mask.json").read_text())
    source = "bids:raw:sub-02/anat/sub-02_acq-ax_run-1_T2w.nii.gz"
    assert lesion_ms["Sources"] == legacy["Sources"] == [source]
    state = lesion_ms["Provenance"]["State"]
    assert state["Task"] == "lesion_ms" and "t2_ax" not in state["Models"]
    prov = legacy["Provenance"]
    assert prov["State"]["Task"] == "t2_ax" and set(prov["State"]["Models"]) == {"spinalcord", "t2_ax"}
    assert prov["State"]["Models"]["t2_ax"]["demo"] is True
    assert prov["Pipeline"]["engine"] == "onnxruntime"
    assert prov["Pipeline"]["model_file"] == "t2_ax_lesion.onnx"
    assert prov["Pipeline"]["model_paths"]["t2_ax"].endswith("legacy/t2_ax_lesion.onnx")
    assert prov["Pipeline"]["threshold"] == 0.1
    assert "legacy" in legacy["Description"] and "t2_ax" in legacy["Description"]


def test_legacy_output_is_on_the_input_grid_and_finds_lesions(legacy_run):
    bids, out, images = legacy_run
    source = "sub-02_acq-ax_run-1_T2w"
    img = nib.load(bids / "sub-02" / "anat" / f"{source}.nii.gz")
    mask = nib.load(out / "sub-02" / "anat" / "sub-02_acq-ax_run-1_label-lesion_desc-T2wLegacyAx_mask.nii.gz")
    assert mask.shape == img.shape and np.array_equal(mask.affine, img.affine)
    assert mask.get_data_dtype() == np.uint8
    assert int(mask.header["qform_code"]) == int(img.header["qform_code"])
    assert int(mask.header["sform_code"]) == int(img.header["sform_code"])
    truth = next(i for i in images if i.path.name == f"{source}.nii.gz")
    lesion = np.asanyarray(nib.load(truth.lesion_mask).dataobj).astype(bool)
    found = np.asanyarray(mask.dataobj).astype(bool)
    assert lesion.sum() >= 100  # this seed has lesions worth scoring
    assert 2 * (found & lesion).sum() / (found.sum() + lesion.sum()) >= 0.5
