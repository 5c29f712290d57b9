"""The OpenVINO backend wired in (issue 23): the predictor's masks and probabilities against the torch
backend on release-shaped random-weight checkpoints (random weights amplify every rounding difference),
one fold compiled at a time, the cache reused by the next image and a read-only cache, the ``--backend``
resolution rules, the flag on both command lines, the sidecar and the up-to-date parameters; and (marked
``sct_oracle``) the default backend's lesion_ms mask against the real SCT 7.3."""
from __future__ import annotations

import gc
import importlib.util
import json
import shutil
import weakref
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp import cli, derivatives, pipelines, runner, segment
from bidsapp.engine import NnUNetModel, NnUNetPredictor
from bidsapp.engine import backends as bk
from bidsapp.engine import openvino_runtime as ovr
from bidsapp.settings import Settings
from tests import sct_oracle as so
from tests.components import missing
from tests.engine_models import build_folder, dice, make_image, one_torch_thread  # noqa: F401 - fixture
from tests.sct_real import model_zip, save, sct  # noqa: F401 - session fixture


@pytest.fixture(scope="module", autouse=True)
def _openvino():
    if importlib.util.find_spec("openvino") is None:
        missing("openvino", f"not installed: pip install {ovr.REQUIREMENT} (requirements.lock pins it)")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """lesion_ms in the release's shape (ResEnc, 5 folds) and a 2-fold PlainConvUNet, each with an empty
    cache folder of its own."""
    tmp = tmp_path_factory.mktemp("ov_release")
    lesion, _ = so.build_lesion_ms_release(tmp / "ms", "")
    plain = build_folder(tmp / "plain", "PlainConvUNet", folds=(0, 1))
    return {"lesion_ms": lesion, "plain": plain}


def _predictor(folder: Path, cache_dir: Path, backend: str, monkeypatch, **kw) -> NnUNetPredictor:
    monkeypatch.setenv(bk.CACHE_ENV, str(cache_dir))
    return NnUNetPredictor(NnUNetModel.load(folder), device="cpu", precision="fp32", backend=backend, **kw)


@pytest.mark.parametrize(("name", "case", "ensemble"), [
    ("lesion_ms", "las", "sct"), ("lesion_ms", "psr", "sct"), ("plain", "resample", "logits")])
def test_openvino_gives_torchs_masks_and_probabilities(release, tmp_path, monkeypatch, name, case, ensemble):
    img = so.sct_image(case, seed=3) if name == "lesion_ms" else make_image(case)
    ref = _predictor(release[name], tmp_path, "torch", monkeypatch, ensemble=ensemble).predict_maps(img)
    pred = _predictor(release[name], tmp_path, "openvino", monkeypatch, ensemble=ensemble)
    assert pred.backend == "openvino" and pred.batch_size == 1 and not pred.channels_last
    got = pred.predict_maps(img)
    a, b = got.mask(1), ref.mask(1)
    assert 0.01 < b.mean() < 0.9, "the phantom must give a real mask"
    assert dice(a, b) >= 0.999, f"{int((a != b).sum())} of {a.size} voxels differ"
    same = np.ones(a.shape, bool)
    if ensemble == "sct":  # SCT's soft map jumps by p / folds where a fold's vote flips: compare the rest
        flips = (got.votes != ref.votes).any(0)
        assert flips.mean() <= 1e-3, int(flips.sum())
        same = ~flips
    diff = np.abs(got.soft - ref.soft)[:, same]
    assert diff.max() <= 2e-3, diff.max()


def test_one_fold_compiled_at_a_time_and_the_next_image_reads_the_cache(release, tmp_path, monkeypatch):
    img = make_image("resample")
    first = _predictor(release["plain"], tmp_path / "cache", "openvino", monkeypatch)
    compiled = weakref.ref(first.network)  # fold 0, compiled by the constructor
    p1 = first.predict(img)
    gc.collect()
    assert compiled() is None, "fold 0's compiled network outlived the switch to fold 1"
    assert first._openvino.origins == ["converted", "converted"] and first._openvino.fold == 1
    assert len(list((tmp_path / "cache").glob("*/model.xml"))) == 2
    # stored folds need no checkpoint tensors: let go, and read again from the file if the entry goes
    assert not any(first.model.state_dicts.values())
    shutil.rmtree(tmp_path / "cache")
    assert np.array_equal(first.predict(img), p1)
    assert first._openvino.origins[2:] == ["converted", "converted"]

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again: the cache was not used")

    monkeypatch.setattr(ovr, "convert", no_conversion)
    second = _predictor(release["plain"], tmp_path / "cache", "openvino", monkeypatch)  # a new worker
    assert np.array_equal(second.predict(img), p1)  # the stored model is the one that was compiled
    second.predict(make_image("resample", seed=1))
    assert second._openvino.origins == ["cache"] * 4  # folds 0 (constructor, image 1), 1, 0, 1 (image 2)
    # a read-only cache: the model folder's own (an installer's), nothing writable anywhere else
    shipped = tmp_path / "model"
    shutil.copytree(release["plain"], shipped)
    shutil.copytree(tmp_path / "cache", shipped / bk.MODEL_CACHE)
    (tmp_path / "file").write_text("")
    third = _predictor(shipped, tmp_path / "file" / "cache", "openvino", monkeypatch)
    assert np.array_equal(third.predict(img), p1)
    assert set(third._openvino.origins) == {"cache"}


def test_an_unwritable_cache_still_segments(release, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    pred = _predictor(release["plain"], tmp_path / "file" / "cache", "openvino", monkeypatch)
    ref = _predictor(release["plain"], tmp_path / "c", "torch", monkeypatch).predict(make_image("ras"))
    assert dice(pred.predict(make_image("ras")).argmax(0) == 1, ref.argmax(0) == 1) >= 0.999
    assert set(pred._openvino.origins) == {"converted in memory"}


# ---- the rule ------------------------------------------------------------------------------------------
def test_auto_is_openvino_only_on_a_cpu_in_fp32_where_it_is_installed(monkeypatch):
    assert bk.resolve_backend("auto", "cpu", "fp32") == "openvino"
    assert bk.resolve_backend("openvino", "cpu", "fp32") == "openvino"
    for device, precision in (("cpu", "bf16"), ("cpu", "fp16"), ("cuda", "fp16"), ("cuda:0", "fp32")):
        assert bk.resolve_backend("auto", device, precision) == "torch"
        with pytest.raises(ValueError, match="float32 on a CPU only"):
            bk.resolve_backend("openvino", device, precision)
    assert bk.resolve_backend("torch", "cpu", "fp32") == "torch"
    monkeypatch.setattr(bk, "openvino_installed", lambda: False)
    assert bk.resolve_backend("auto", "cpu", "fp32") == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        bk.resolve_backend("onnx", "cpu", "fp32")


def test_the_cli_resolves_the_backend_once_into_settings(tmp_path):
    def settings(*extra):
        args = cli.build_parser().parse_args([str(tmp_path), str(tmp_path / "out"), "participant",
                                              "--device", "cpu", "--skip_bids_validator", *extra])
        return cli._settings(args, tmp_path, tmp_path / "out")

    assert settings().backend == "openvino"
    assert runner.run_options(settings()).backend == "openvino"
    assert settings("--backend", "torch").backend == "torch"
    assert settings("--precision", "bf16").backend == "torch"
    with pytest.raises(cli._Exit, match="float32 on a CPU only"):
        settings("--backend", "openvino", "--precision", "bf16")
    assert json.loads(settings().dumps())["backend"] == "openvino"
    assert json.loads(settings("--backend", "torch").dumps())["backend"] == "torch"


def test_segment_refuses_openvino_in_a_reduced_precision(tmp_path, capsys):
    img = tmp_path / "t2.nii.gz"
    nib.save(make_image("ras"), img)
    code = segment.main(["lesion_ms", "-i", str(img), "--demo", "--device", "cpu", "--backend", "openvino",
                         "--precision", "bf16"])
    assert code == 64 and "float32 on a CPU only" in capsys.readouterr().err
    assert not (tmp_path / "t2_lesion_seg.nii.gz").exists()


def test_parameters_carry_the_backend_and_old_sidecars_count_as_torch(tmp_path):
    base = Settings(bids_dir=tmp_path, output_dir=tmp_path)
    assert base.backend == "torch" and base.parameters("lesion_ms")["backend"] == "torch"
    ov = Settings(bids_dir=tmp_path, output_dir=tmp_path, backend="openvino")
    state = {"InputSha256": "0" * 64, "Task": "lesion_ms", "Models": {},
             "Parameters": ov.parameters("lesion_ms")}
    torch_state = {**state, "Parameters": base.parameters("lesion_ms")}
    # a sidecar written before the backend was recorded: torch's parameters without "backend"
    old = {**state, "Parameters": {k: v for k, v in torch_state["Parameters"].items() if k != "backend"}}
    (tmp_path / "mask.nii.gz").write_bytes(b"x")
    (tmp_path / "mask.json").write_text(json.dumps({derivatives.PROVENANCE_KEY: {
        "State": old, "Outputs": ["mask.nii.gz"]}}))
    assert derivatives.is_up_to_date(tmp_path, "mask.json", torch_state)
    assert not derivatives.is_up_to_date(tmp_path, "mask.json", state)  # another float32 rounding: rerun
    # OpenVINO outputs of the MVN graph (before engine/axisnorm.py) re-run too
    assert state["Parameters"]["openvino_graph"] == "axis-mean-1"
    mvn = {**state, "Parameters": {k: v for k, v in state["Parameters"].items() if k != "openvino_graph"}}
    (tmp_path / "mask.json").write_text(json.dumps({derivatives.PROVENANCE_KEY: {
        "State": mvn, "Outputs": ["mask.nii.gz"]}}))
    assert not derivatives.is_up_to_date(tmp_path, "mask.json", state)
    (tmp_path / "mask.json").write_text(json.dumps({derivatives.PROVENANCE_KEY: {
        "State": state, "Outputs": ["mask.nii.gz"]}}))
    assert derivatives.is_up_to_date(tmp_path, "mask.json", state)


def test_a_demo_run_records_the_backend(tmp_path, capsys):
    # run.py is one process per run; in this test process an earlier test's predictor (and the cache it
    # was built with) would otherwise serve this run
    pipelines._cached_predictor.cache_clear()
    bids = tmp_path / "bids"
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "ov", "BIDSVersion": "1.9.0"}))
    nib.save(make_image("ras"), anat / "sub-01_T2w.nii.gz")
    out, work = tmp_path / "out", tmp_path / "work"
    common = [str(bids), str(out), "participant", "--demo", "--skip_bids_validator", "--device", "cpu",
              "-w", str(work)]
    assert cli.main(common) == 0  # the default: OpenVINO
    sidecar = out / derivatives.image_names("sub-01/anat/sub-01_T2w.nii.gz", "lesion_ms").mask_json
    prov = json.loads(sidecar.read_text())[derivatives.PROVENANCE_KEY]
    assert prov["State"]["Parameters"]["backend"] == "openvino"
    assert prov["Pipeline"]["engine"] == "bidsapp.engine.nnunet (openvino)"
    assert list((work / "openvino").glob("*/model.xml")), "the study's cache is the work dir's"
    for backend, status in (("openvino", "[up to date]"), ("torch", "[will run]")):
        capsys.readouterr()
        assert cli.main([*common, "--backend", backend, "--dry-run"]) == 0
        assert status in capsys.readouterr().out, backend


# ---- the real SCT 7.3 ----------------------------------------------------------------------------------
@pytest.mark.sct_oracle
@pytest.mark.parametrize("case", ["las", "psr"])
def test_the_default_backends_lesion_ms_is_real_scts_mask(sct, release, tmp_path, monkeypatch,  # noqa: F811
                                                           case):
    monkeypatch.setenv(bk.CACHE_ENV, str(tmp_path / "cache"))
    img = so.sct_image(case, seed=3)
    zip_path = model_zip(release["lesion_ms"], tmp_path / "lesion_ms.zip")
    ref = sct.deepseg("lesion_ms", zip_path, save(img, tmp_path / "in.nii.gz"), tmp_path / "sct.nii.gz")
    options = pipelines.RunOptions(device="cpu", precision="auto", backend="auto")
    ours = pipelines.segment(img, task="lesion_ms", models={"lesion_ms": release["lesion_ms"]},
                             options=options)
    assert ours.provenance.engine == "bidsapp.engine.nnunet (openvino)"
    a, b = np.asarray(ours.mask.dataobj).astype(bool), np.asarray(ref.dataobj).astype(bool)
    assert 0.01 < b.mean() < 0.9, "the phantom must give a real mask"
    assert dice(a, b) >= 0.999, f"{int((a != b).sum())} voxels differ"


# ---- the memory guard --------------------------------------------------------------------------------------
def test_the_memory_estimate_counts_the_compiled_fold_and_covers_the_measured_peak(tmp_path):
    from bidsapp import guards, memory

    # bench/engine_vs_nnunet.py --whole-process, ResEnc-L (387 MB checkpoint), 240x240x40 at 0.7x0.7x3 mm:
    # measured peak RSS of our whole process, OpenVINO from the cache 1866 MB, converting 1590 MB; torch's
    # default path 2102 MB for nnU-Net's predictor (bench/RESULTS.md, issue 23 rows)
    plan = memory.ModelPlan("lesion_ms", spacing=(3.0, 0.7, 0.7), patch_size=(16, 192, 160), base_features=32,
                            weights_bytes=387 * 2 ** 20)
    aff = np.diag([0.7, 0.7, 3.0, 1.0])
    ov = memory.estimate_memory((240, 240, 40), (0.7, 0.7, 3.0), aff,
                                [replace(plan, backend="openvino", batch_size=1)])
    assert ov.parts["compiled folds (OpenVINO)"] == int(2.5 * 387 * 2 ** 20)
    assert ov.total_bytes >= 1866 * 2 ** 20 * 1.1
    torch_only = memory.estimate_memory((240, 240, 40), (0.7, 0.7, 3.0), aff, [plan])
    assert "compiled folds (OpenVINO)" not in torch_only.parts
    # the guard's plans follow the run's backend (auto counts as OpenVINO: the CLIs resolve it first)
    folder = build_folder(tmp_path / "m", folds=(0, 1))
    torch_plans = guards.task_plans({"m": folder}, backend="torch")
    ov_plans = guards.task_plans({"m": folder}, backend="openvino")
    assert [(p.backend, p.batch_size) for p in torch_plans] == [("torch", 2)]
    assert [(p.backend, p.batch_size) for p in ov_plans] == [("openvino", 1)]
    assert guards.task_plans({"m": folder}, backend="auto") == ov_plans
