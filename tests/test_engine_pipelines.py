"""pipelines.segment: outputs on the input grid, task classes, the MP2RAGE cord crop, provenance."""
from __future__ import annotations

import numpy as np
import pytest
from engine_models import build_folder, make_image, one_torch_thread  # noqa: F401 (autouse)

from bidsapp import pipelines
from bidsapp.errors import ConfigError
from bidsapp.pipelines import RunOptions

CPU = RunOptions(device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_folder(tmp_path_factory.mktemp("pl"), "PlainConvUNet", folds=(0, 1))


def test_lesion_ms_outputs_and_provenance(folder):
    img = make_image("las", seed=3)
    res = pipelines.segment(img, task="lesion_ms", models={"lesion_ms": folder},
                            options=RunOptions(device="cpu", crop=False))
    # lesion_ms: SCT 7.3's fold vote (issue 15); tests/test_sct_pipelines.py checks it against SCT itself
    maps = pipelines.get_predictor(folder, device="cpu", ensemble="sct").predict_maps(img)
    for out in (res.mask, res.probseg):
        assert out.shape == img.shape
        np.testing.assert_array_equal(out.affine, img.affine)
        assert int(out.header["sform_code"]) == 2 and int(out.header["qform_code"]) == 1
    mask = np.asanyarray(res.mask.dataobj)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, maps.mask(1).astype(np.uint8))
    np.testing.assert_allclose(np.asanyarray(res.probseg.dataobj), maps.soft[1], atol=1e-6)
    assert res.cord is None
    prov = res.provenance
    assert prov.task == "lesion_ms" and prov.folds == {"lesion_ms": [0, 1]} and prov.tta is False
    assert prov.ensemble == "sct" and prov.device == "cpu" and prov.crop is None
    assert prov.models["lesion_ms"].path == str(folder)
    # the sidecar's Pipeline block: only what the run's State does not hold (no task, TTA, identities)
    assert prov.to_dict() == {"engine": "bidsapp.engine.nnunet (torch)", "device": "cpu",
                              "folds": {"lesion_ms": [0, 1]}, "threshold": prov.threshold,
                              "model_paths": {"lesion_ms": str(folder)}}


def test_predictors_are_cached(folder):
    a = pipelines.get_predictor(folder, device="cpu", folds=[0])
    assert pipelines.get_predictor(str(folder), device="cpu", folds=(0,)) is a
    assert pipelines.get_predictor(folder, device="cpu", folds=[0], tta=True) is not a


def test_mp2rage_crops_around_the_cord_and_puts_back(folder, monkeypatch):
    img = make_image("ras", seed=5)
    cord = np.zeros(img.shape, bool)
    cord[18:22, 16:20, 5:7] = True  # short along S-I: the crop (5 mm = 2 slices of 3 mm) leaves 6 slices out
    real = pipelines._run_model
    calls = []

    def fake(image, spec, model, run, **kw):
        calls.append((spec.name, image.shape))
        if spec.name == "spinalcord":
            assert kw.get("tile_step") is None  # the MP2RAGE model's input is the crop: the cord task's own
            return pipelines._Pass(cord, cord.astype(np.float32), [0])
        return real(image, spec, model, run, **kw)

    monkeypatch.setattr(pipelines, "_run_model", fake)
    res = pipelines.segment(img, task="lesion_ms_mp2rage", options=RunOptions(device="cpu", crop=False),
                            models={"spinalcord": folder, "lesion_ms_mp2rage": folder})
    # the crop box by hand: 30 mm / 0.8 mm = 37.5 -> 38 voxels in-plane (clipped to the 40 x 36 image);
    # 5 mm along S-I on 3 mm slices: 2 slices each side of 5:7
    box = (slice(0, 40), slice(0, 36), slice(3, 9))
    assert calls[0][0] == "spinalcord"
    assert calls[1] == ("lesion_ms_mp2rage", tuple(s.stop - s.start for s in box))
    sub = img.slicer[box]
    expect = pipelines.get_predictor(folder, device="cpu").predict(sub)
    mask, prob = np.asanyarray(res.mask.dataobj), np.asanyarray(res.probseg.dataobj)
    np.testing.assert_array_equal(mask[box], (expect.argmax(0) == 1).astype(np.uint8))
    np.testing.assert_allclose(prob[box], expect[1], atol=1e-6)
    outside = np.ones(img.shape, bool)
    outside[box] = False
    assert outside.any() and not mask[outside].any() and not prob[outside].any()
    np.testing.assert_array_equal(np.asanyarray(res.cord.dataobj), cord.astype(np.uint8))
    np.testing.assert_array_equal(res.cord.affine, img.affine)
    # the row's box rule is the model's recipe; --no-crop cannot switch off a crop the model was trained on
    assert res.provenance.crop.box_voxels == [[s.start, s.stop] for s in box]
    assert list(res.provenance.models) == ["spinalcord", "lesion_ms_mp2rage"]
    assert res.provenance.folds == {"spinalcord": [0], "lesion_ms_mp2rage": [0, 1]}


def test_bad_requests():
    img = make_image("ras")
    with pytest.raises(ConfigError, match="unknown task 'lesion'"):
        pipelines.segment(img, task="lesion", models={}, options=CPU)


def test_class_index():
    assert pipelines.class_index({"background": 0, "lesion": 1}, "lesion_ms") == 1
    assert pipelines.class_index({"background": 0, "sc": 1, "lesion": 2}, "spinalcord") == 1
    assert pipelines.class_index({"background": 0, "sc": 1, "lesion": 2}, "lesion_ms") == 2
    with pytest.raises(ConfigError):
        pipelines.class_index({"background": 0, "a": 1, "b": 2}, "lesion_ms")
