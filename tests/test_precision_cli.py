"""``--precision`` from the command lines to the engine and the sidecar (issue 16, item 1): parsed and
checked at the door, resolved once by the engine's rule, carried by Settings into the up-to-date
parameters and the sidecar, handed to every predictor; brainlife and Boutiques pass it on. fp32 on this
machine (no bfloat16 dot products) is byte for byte the default run."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp import brainlife, cli, derivatives, pipelines, runner, segment
from bidsapp.demo.phantom import Grid, make_phantom
from bidsapp.engine import precision
from bidsapp.engine.precision import PRECISIONS, CpuFeatures
from bidsapp.errors import ConfigError
from bidsapp.settings import Settings, resolve_run_precision

ROOT = Path(__file__).resolve().parent.parent
AVX2 = CpuFeatures(torch_bf16=False, torch_fp16=False, capability="AVX2",
                   flags=frozenset({"avx", "avx2", "fma"}))
AVX512_BF16 = CpuFeatures(torch_bf16=True, torch_fp16=True, capability="AVX512",
                          flags=frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}))


def _no_detection():
    raise AssertionError("an explicit precision must not read the CPU")


# ---- parsed and refused -----------------------------------------------------------------------------------
@pytest.mark.parametrize("parser", [cli.build_parser(), segment.build_parser()], ids=["run.py", "segment"])
def test_the_flag_takes_the_engine_precisions_default_auto(parser):
    action = next(a for a in parser._actions if "--precision" in a.option_strings)
    assert tuple(action.choices) == PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    assert action.default == "auto" and "fp32 on every CPU" in action.help
    assert "not SCT's masks" in action.help


def test_a_bad_value_exits_64_naming_the_choices(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    argv = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--precision", "int8"]
    assert cli.main(argv) == 64
    assert "invalid choice: 'int8'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is created
    image = tmp_path / "t2.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), image)
    with pytest.raises(SystemExit) as exc:
        segment.main(["lesion_ms", "-i", str(image), "--demo", "--precision", "half"])
    assert exc.value.code == 64 and "invalid choice: 'half'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bids", "t2.nii.gz"]


# ---- resolved once, by the engine's rule ------------------------------------------------------------------
def test_auto_resolves_by_the_engines_rule(monkeypatch):
    for cpu in (AVX512_BF16, AVX2):  # SCT's float32 on every CPU, whatever it has
        monkeypatch.setattr(precision, "cpu_features", lambda cpu=cpu: cpu)
        assert resolve_run_precision("auto", "cpu") == "fp32"
    monkeypatch.undo()
    assert resolve_run_precision("auto", "cpu") == "fp32"  # this machine, for real
    # an explicit precision is kept and reads nothing (no CPU flags, no torch device)
    monkeypatch.setattr(precision, "cpu_features", _no_detection)
    for name in ("fp32", "bf16", "fp16"):
        assert resolve_run_precision(name, "auto") == name


def test_auto_on_cuda_is_fp16_autocast(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision, "cpu_features", _no_detection)
    assert resolve_run_precision("auto", "auto") == "fp16"  # --device auto sees the GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_features", lambda: AVX2)
    assert resolve_run_precision("auto", "auto") == "fp32"


@pytest.mark.parametrize(("features", "asked", "expected"),
                         [(AVX512_BF16, [], "fp32"), (AVX2, [], "fp32"),
                          (AVX2, ["--precision", "bf16"], "bf16")],
                         ids=["bf16_cpu", "avx2_cpu", "asked_bf16"])
def test_the_cli_resolves_once_into_settings(tmp_path, monkeypatch, features, asked, expected):
    monkeypatch.setattr(precision, "cpu_features", lambda: features)
    args = cli.build_parser().parse_args([str(tmp_path), str(tmp_path / "out"), "participant",
                                          "--device", "cpu", "--skip_bids_validator", *asked])
    got = cli._settings(args, tmp_path, tmp_path / "out")
    assert got.precision == expected
    assert runner.run_options(got).precision == expected  # every worker runs the resolved one
    assert json.loads(got.dumps())["precision"] == expected


# ---- up-to-date parameters ------------------------------------------------------------------------------
def test_parameters_carry_the_precision_and_old_fp32_outputs_stay_up_to_date(tmp_path):
    base = Settings(bids_dir=tmp_path, output_dir=tmp_path)
    assert base.precision == "fp32"
    for task in ("lesion_ms", "spinalcord", "t2"):
        assert Settings(bids_dir=tmp_path, output_dir=tmp_path, precision="bf16").parameters(task)[
            "precision"] == "bf16"
        assert base.parameters(task)["precision"] == "fp32"
    state = {"InputSha256": "0" * 64, "Task": "lesion_ms", "Models": {},
             "Parameters": base.parameters("lesion_ms")}
    (tmp_path / "mask.nii.gz").write_bytes(b"x")
    # a sidecar written before --precision existed (no "precision"): those runs were float32
    old = {**state, "Parameters": {k: v for k, v in state["Parameters"].items() if k != "precision"}}
    (tmp_path / "mask.json").write_text(json.dumps({derivatives.PROVENANCE_KEY: {
        "State": old, "Outputs": ["mask.nii.gz"]}}))
    assert derivatives.is_up_to_date(tmp_path, "mask.json", state)
    bf16 = {**state, "Parameters": {**state["Parameters"], "precision": "bf16"}}
    assert not derivatives.is_up_to_date(tmp_path, "mask.json", bf16)
    # a recorded precision is compared as is
    (tmp_path / "mask.json").write_text(json.dumps({derivatives.PROVENANCE_KEY: {
        "State": bf16, "Outputs": ["mask.nii.gz"]}}))
    assert derivatives.is_up_to_date(tmp_path, "mask.json", bf16)
    assert not derivatives.is_up_to_date(tmp_path, "mask.json", state)


def test_outputs_of_an_older_engine_arithmetic_are_computed_again(tmp_path):
    """Masks written before the engine took SCT 7.3's float16 window sums (no "arithmetic") differ by a
    few voxels from today's: they are not up to date; the legacy ONNX tasks do not carry the key."""
    params = Settings(bids_dir=tmp_path, output_dir=tmp_path).parameters("lesion_ms")
    assert params["arithmetic"] == "sct7.3"
    assert "arithmetic" not in Settings(bids_dir=tmp_path, output_dir=tmp_path).parameters("t2")
    state = {"InputSha256": "0" * 64, "Task": "lesion_ms", "Models": {}, "Parameters": params}
    (tmp_path / "mask.nii.gz").write_bytes(b"x")
    for recorded, up_to_date in ((state, True), ({**state, "Parameters": {
            k: v for k, v in params.items() if k != "arithmetic"}}, False)):
        (tmp_path / "mask.json").write_text(json.dumps({derivatives.PROVENANCE_KEY: {
            "State": recorded, "Outputs": ["mask.nii.gz"]}}))
        assert derivatives.is_up_to_date(tmp_path, "mask.json", state) is up_to_date


# ---- the pipeline runs what it is given -------------------------------------------------------------------
def test_predictors_are_cached_per_precision():
    from bidsapp import models

    folder = models.locate("spinalcord", demo=True).path
    fp32 = pipelines.get_predictor(folder, device="cpu", precision="fp32")
    assert pipelines.get_predictor(folder, device="cpu", precision="fp32") is fp32
    bf16 = pipelines.get_predictor(folder, device="cpu", precision="bf16")
    assert bf16 is not fp32 and bf16.model is not fp32.model  # a model object serves one precision
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    # auto is resolved before the cache: the same predictor as the precision it stands for
    assert pipelines.get_predictor(folder, device="cpu", precision="auto").precision == \
        precision.resolve_precision("auto", "cpu")


# ---- end to end on the demo models ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    """A one-image BIDS dataset (a T2w phantom) and the image's path."""
    root = tmp_path_factory.mktemp("precision_bids")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "precision", "BIDSVersion": "1.9.0"}))
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    phantom = make_phantom("T2w", rng=np.random.default_rng(1616), grid=Grid(fov_mm=(36.0, 40.0, 60.0)))
    nib.save(phantom.image, anat / "sub-01_T2w.nii.gz")
    return root, anat / "sub-01_T2w.nii.gz"


def test_every_network_of_a_task_runs_in_the_options_precision(one_image, monkeypatch):
    """lesion_ms around the cord: the cord pass and the lesion pass both get the precision asked for."""
    _, image = one_image
    asked = []
    real = pipelines.get_predictor

    def spy(folder, **kwargs):
        predictor = real(folder, **kwargs)
        asked.append((Path(folder).name, predictor.precision))
        return predictor

    monkeypatch.setattr(pipelines, "get_predictor", spy)
    options = pipelines.RunOptions(device="cpu", demo=True, crop=True, precision="bf16")
    result = pipelines.segment(nib.load(image), task="lesion_ms", options=options)
    assert result.provenance.precision == "bf16"
    assert {p for _, p in asked} == {"bf16"} and len({f for f, _ in asked}) == 2, asked


def _segment(image: Path, out: Path, *extra: str) -> tuple[bytes, bytes]:
    mask, soft = out / "mask.nii", out / "soft.nii"  # uncompressed: the file bytes are the voxels and header
    assert segment.main(["lesion_ms", "-i", str(image), "-o", str(mask), "--soft", str(soft), "--demo",
                         "--device", "cpu", *extra]) == 0
    return mask.read_bytes(), soft.read_bytes()


def test_fp32_is_byte_identical_to_the_default_run_here(one_image, tmp_path, caplog):
    _, image = one_image
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with caplog.at_level("INFO", logger="bidsapp.segment"):
        default = _segment(image, tmp_path / "a", "-v")
    assert "(lesion_ms, fp32," in caplog.text  # the precision used, in the command's report
    explicit = _segment(image, tmp_path / "b", "--precision", "fp32")
    assert default[0] == explicit[0] and default[1] == explicit[1]
    mask = np.asanyarray(nib.load(tmp_path / "a" / "mask.nii").dataobj)
    assert mask.any(), "the demo model found no lesion: the comparison would be empty"


def test_a_demo_run_records_the_precision_once_in_the_sidecar(one_image, tmp_path, capsys):
    bids, _ = one_image
    out = tmp_path / "out"
    common = [str(bids), str(out), "participant", "--demo", "--skip_bids_validator", "--device", "cpu",
              "-w", str(tmp_path / "work")]
    assert cli.main([*common, "--precision", "fp32"]) == 0
    sidecar = out / derivatives.image_names("sub-01/anat/sub-01_T2w.nii.gz", "lesion_ms").mask_json
    prov = json.loads(sidecar.read_text())[derivatives.PROVENANCE_KEY]
    assert prov["State"]["Parameters"]["precision"] == "fp32"
    assert "fp32" not in json.dumps(prov["Pipeline"])  # once: the State holds it
    # a sidecar from before the option (no "precision") stays up to date for fp32, not for bf16
    prov["State"]["Parameters"].pop("precision")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), derivatives.PROVENANCE_KEY: prov}))
    for name, status in (("fp32", "[up to date]"), ("bf16", "[will run]")):
        capsys.readouterr()
        assert cli.main([*common, "--precision", name, "--dry-run"]) == 0
        plan = capsys.readouterr().out
        assert "sub-01_T2w.nii.gz" in plan and status in plan, (name, plan)


# ---- brainlife and Boutiques ------------------------------------------------------------------------------
def test_brainlife_passes_a_schema_checked_precision(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "t2.nii.gz")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"t2w": "t2.nii.gz", "precision": "bf16"}))
    options = brainlife.read_config(config).app_options
    assert options[options.index("--precision") + 1] == "bf16"
    assert cli.build_parser().parse_args(["b", "o", "participant", *options]).precision == "bf16"
    config.write_text(json.dumps({"t2w": "t2.nii.gz", "precision": "int8"}))
    with pytest.raises(ConfigError, match=r"precision: 'int8' is not one of"):
        brainlife.read_config(config)
    config.write_text(json.dumps({"t2w": "t2.nii.gz", "precision": None}))
    assert "--precision" not in brainlife.read_config(config).app_options
    example = json.loads((ROOT / "brainlife" / "config.json").read_text())
    schema = json.loads((ROOT / "bidsapp" / "schemas" / "brainlife_config.schema.json").read_text())
    assert example["precision"] in schema["properties"]["precision"]["enum"]
    assert [p for p in schema["properties"]["precision"]["enum"] if p] == list(PRECISIONS)


def test_boutiques_offers_the_same_choices():
    descriptor = json.loads((ROOT / "boutiques" / "descriptor.json").read_text())
    item = next(i for i in descriptor["inputs"] if i.get("command-line-flag") == "--precision")
    assert item["value-choices"] == list(PRECISIONS) and item["value-key"] in descriptor["command-line"]

