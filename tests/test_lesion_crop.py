"""lesion_ms around the cord: the box path against the whole image on a phantom with the demo models
(identical inside the box), exact input grid, provenance; the crop switch in both CLIs and the up-to-date
parameters."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bidsapp import cli, pipelines
from bidsapp import segment as segment_cli
from bidsapp.settings import Settings


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_crop_path_agrees_with_whole_image_on_the_input_grid(monkeypatch):
    import torch

    from bidsapp.demo.phantom import make_phantom

    torch.set_num_threads(2)
    # a field of view wider than the box, so the crop really removes tissue (the default 30 mm margin
    # would keep all of this small phantom): 10 mm in-plane, 5 mm along S-I
    monkeypatch.setattr(pipelines, "LESION_CROP_MARGIN_MM", 10.0)
    monkeypatch.setattr(pipelines, "LESION_CROP_SI_MM", 5.0)
    ph = make_phantom("T2w", rng=np.random.default_rng(8), orientation=("R", "A", "S"),
                      voxel_size=(0.8, 0.8, 0.8), fov_mm=(56.0, 56.0, 40.0))
    truth = np.asarray(ph.lesion.dataobj) > 0
    full = pipelines.segment(ph.image, task="lesion_ms", demo=True, device="cpu", crop=False)
    crop = pipelines.segment(ph.image, task="lesion_ms", demo=True, device="cpu", crop=True)
    assert full.provenance["crop"]["enabled"] is False and full.cord is None
    assert set(full.provenance["models"]) == {"lesion_ms"}
    prov = crop.provenance["crop"]
    assert prov["enabled"] is True and set(crop.provenance["models"]) == {"spinalcord", "lesion_ms"}
    box = tuple(slice(a, b) for a, b in prov["box_voxels"])
    assert [b.stop - b.start for b in box[:2]] < list(ph.image.shape[:2])  # in-plane really cropped
    for res in (full, crop):  # exact input grid
        assert res.mask.shape == ph.image.shape and np.array_equal(res.mask.affine, ph.image.affine)
        assert res.mask.get_data_dtype() == np.uint8
    cmask, fmask = np.asarray(crop.mask.dataobj) > 0, np.asarray(full.mask.dataobj) > 0
    outside = np.ones(cmask.shape, bool)
    outside[box] = False
    assert not cmask[outside].any() and not np.asarray(crop.probseg.dataobj)[outside].any()
    # the box contains the true cord, and the cord mask returned is the one the box came from
    cord = np.asarray(crop.cord.dataobj) > 0
    assert cord[box].sum() == cord.sum() > 0 and _dice(cord, np.asarray(ph.cord.dataobj) > 0) > 0.8
    # inside the box the result IS the whole image's (whole-image normalisation, same windows), so
    # the masks agree wherever the whole-image mask has lesions near the cord
    np.testing.assert_allclose(np.asarray(crop.probseg.dataobj)[box], np.asarray(full.probseg.dataobj)[box],
                               atol=1e-5)
    assert np.array_equal(cmask[box], fmask[box])
    assert _dice(cmask, fmask) >= 0.99 and _dice(fmask, truth) >= 0.85


def test_task_models_need_the_cord_model_only_when_cropping():
    assert pipelines.task_models("lesion_ms", crop=False) == ("lesion_ms",)
    assert pipelines.task_models("lesion_ms", crop=True) == ("spinalcord", "lesion_ms")
    assert pipelines.task_models("lesion_ms_mp2rage", crop=False) == ("spinalcord", "lesion_ms_mp2rage")


def test_crop_switch_in_both_parsers_and_parameters(tmp_path: Path, monkeypatch):
    app = cli.build_parser()
    base = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant"]
    assert app.parse_args(base).crop is None  # the pipelines' default
    assert app.parse_args([*base, "--crop"]).crop is True
    assert app.parse_args([*base, "--no-crop"]).crop is False
    seg = segment_cli.build_parser()
    assert seg.parse_args(["-i", "x.nii.gz", "-t", "lesion_ms"]).crop is None
    assert seg.parse_args(["-i", "x.nii.gz", "-t", "lesion_ms", "--crop"]).crop is True
    assert seg.parse_args(["-i", "x.nii.gz", "-t", "lesion_ms", "--no-crop"]).crop is False
    default = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o")
    off = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o", crop=False)
    on = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o", crop=True)
    # off: no key, so sidecars written before the option stay up to date; on: what the box depends on
    assert "crop" not in off.parameters()
    assert on.parameters()["crop"] == {"margin_mm": pipelines.LESION_CROP_MARGIN_MM,
                                       "margin_si_mm": pipelines.LESION_CROP_SI_MM, "windows": "image",
                                       "cord_tile_step": pipelines.CORD_LOCATE_TILE_STEP}
    assert default.parameters() == (on if pipelines.LESION_MS_CROP_DEFAULT else off).parameters()
    assert on.to_dict()["crop"] is True and default.to_dict()["crop"] is None
    # the default follows the pipelines' constant
    monkeypatch.setattr(pipelines, "LESION_MS_CROP_DEFAULT", not pipelines.LESION_MS_CROP_DEFAULT)
    assert default.parameters() == (on if pipelines.LESION_MS_CROP_DEFAULT else off).parameters()
    expected = ("spinalcord", "lesion_ms") if pipelines.LESION_MS_CROP_DEFAULT else ("lesion_ms",)
    assert pipelines.task_models("lesion_ms") == expected


@pytest.mark.parametrize("crop", [False, True, None])
def test_runner_locates_the_cord_model_only_when_cropping(crop, tmp_path, monkeypatch):
    from bidsapp import runner

    settings = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o", crop=crop)
    monkeypatch.setattr("bidsapp.models.locate", lambda name, **kw: name)
    on = pipelines.lesion_ms_crops(crop)
    assert list(runner.locate_models(["lesion_ms"], settings)) == (["spinalcord", "lesion_ms"] if on
                                                                   else ["lesion_ms"])
