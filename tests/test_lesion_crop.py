"""lesion_ms around the cord: the box path against the whole image on a phantom with the demo models
(identical inside the box), exact input grid, provenance; the crop switch in both CLIs and the up-to-date
parameters."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from bidsapp import cli, pipelines, tasks
from bidsapp import segment as segment_cli
from bidsapp.pipelines import RunOptions
from bidsapp.settings import Settings

LESION_MS = tasks.get("lesion_ms")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_crop_path_agrees_with_whole_image_on_the_input_grid():
    import torch

    from bidsapp.demo.phantom import Grid, make_phantom

    torch.set_num_threads(2)
    # a field of view wider than the box, so the crop really removes tissue (the default 30 mm margin
    # would keep all of this small phantom): 10 mm in-plane, 5 mm along S-I
    box_rule = dataclasses.replace(LESION_MS.crop.box, margin_mm=10.0, margin_si_mm=5.0)
    spec = dataclasses.replace(LESION_MS, crop=dataclasses.replace(LESION_MS.crop, box=box_rule))
    grid = Grid(orientation=("R", "A", "S"), voxel_size=(0.8, 0.8, 0.8), fov_mm=(56.0, 56.0, 40.0))
    ph = make_phantom("T2w", rng=np.random.default_rng(8), grid=grid)
    truth = np.asarray(ph.lesion.dataobj) > 0
    full = pipelines.segment(ph.image, task=spec, options=RunOptions(demo=True, device="cpu", crop=False))
    crop = pipelines.segment(ph.image, task=spec, options=RunOptions(demo=True, device="cpu", crop=True))
    assert full.provenance.crop is None and full.cord is None
    assert list(full.provenance.models) == ["lesion_ms"]
    prov = crop.provenance.crop
    assert prov is not None and list(crop.provenance.models) == ["spinalcord", "lesion_ms"]
    box = tuple(slice(a, b) for a, b in prov.box_voxels)
    # the ROI box by hand: the returned cord's extent + 10 mm / 0.8 mm = 12.5 -> 13 voxels in-plane and
    # 5 mm / 0.8 mm = 6.25 -> 7 slices along axis 2 (S-I: the grid tilts by at most 8 degrees), clipped
    hit, shape = np.argwhere(np.asarray(crop.cord.dataobj) > 0), ph.image.shape
    expect = tuple(slice(max(int(hit[:, a].min()) - m, 0), min(int(hit[:, a].max()) + 1 + m, shape[a]))
                   for a, m in enumerate((13, 13, 7)))
    assert box == expect
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
    assert LESION_MS.models_run(crop=False) == ("lesion_ms",)
    assert LESION_MS.models_run(crop=True) == ("spinalcord", "lesion_ms")
    assert tasks.get("lesion_ms_mp2rage").models_run(crop=False) == ("spinalcord", "lesion_ms_mp2rage")
    assert tasks.get("spinalcord").models_run(crop=True) == ("spinalcord",)


def test_crop_switch_in_both_parsers_and_parameters(tmp_path: Path):
    app = cli.build_parser()
    base = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant"]
    assert app.parse_args(base).crop is None  # not given: the CLI resolves it to the table's default
    assert app.parse_args([*base, "--crop"]).crop is True
    assert app.parse_args([*base, "--no-crop"]).crop is False
    seg = segment_cli.build_parser()
    assert seg.parse_args(["-i", "x.nii.gz", "-t", "lesion_ms"]).crop is None
    assert seg.parse_args(["-i", "x.nii.gz", "-t", "lesion_ms", "--crop"]).crop is True
    assert seg.parse_args(["-i", "x.nii.gz", "-t", "lesion_ms", "--no-crop"]).crop is False
    default = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o")
    off = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o", crop=False)
    on = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o", crop=True)
    assert default.crop is tasks.CROP_DEFAULT is LESION_MS.crop.default
    # off: no key, so sidecars written without the box stay up to date; on: what the box depends on
    assert "crop" not in off.parameters("lesion_ms")
    # the box comes from SCT's cord (the cord task's own step): no cord_tile_step of its own (issue 15)
    assert on.parameters("lesion_ms")["crop"] == {"margin_mm": 10.0, "margin_si_mm": 15.0, "windows": "image"}
    assert on.parameters("lesion_ms")["rules"] == {"ensemble": "sct", "postprocess": "argmax",
                                                   "tile_step": 0.5}
    # the crop switch means nothing to a task that never crops, and a task that always crops keeps its box
    assert on.parameters("spinalcord") == off.parameters("spinalcord")
    assert off.parameters("lesion_ms_mp2rage")["crop"] == {"margin_mm": 30.0, "margin_si_mm": 5.0,
                                                           "windows": "crop"}
    assert on.to_dict()["crop"] is True and off.to_dict()["crop"] is False


def _cli_settings(tmp_path: Path, *flags: str) -> Settings:
    args = cli.build_parser().parse_args([str(tmp_path), str(tmp_path / "o"), "participant", *flags])
    return cli._settings(args, tmp_path, tmp_path / "o")


@pytest.mark.parametrize("flags, crop", [((), tasks.CROP_DEFAULT), (("--crop",), True),
                                         (("--no-crop",), False)])
def test_the_cli_resolves_crop_once(tmp_path, flags, crop):
    assert _cli_settings(tmp_path, *flags).crop is crop


def test_segment_cli_refuses_no_crop_for_a_task_trained_on_crops(tmp_path, capsys):
    image = tmp_path / "x.nii.gz"
    image.write_bytes(b"")
    code = segment_cli.main(["-i", str(image), "-t", "lesion_ms_mp2rage", "--no-crop", "-o",
                             str(tmp_path / "m.nii.gz")])
    assert code == 64 and "lesion_ms_mp2rage needs the crop around the cord" in capsys.readouterr().err


@pytest.mark.parametrize("crop", [False, True])
def test_runner_locates_the_cord_model_only_when_cropping(crop, tmp_path, monkeypatch):
    from bidsapp import runner

    # --no-cord: the lesion tables' cord (issue 17) would locate spinalcord whatever --crop says
    settings = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o", crop=crop, cord=False)
    monkeypatch.setattr("bidsapp.models.locate", lambda name, **kw: name)
    assert list(runner.locate_models(["lesion_ms"], settings)) == (["spinalcord", "lesion_ms"] if crop
                                                                   else ["lesion_ms"])
    # a task that always crops needs the cord model whatever --crop says
    assert list(runner.locate_models(["lesion_ms_mp2rage"], settings)) == ["spinalcord", "lesion_ms_mp2rage"]
