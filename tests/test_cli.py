"""cli: (arguments -> exit code) tables, label parsing, dry-run, validation; fast (a fake segmenter)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp import __version__, cli, runner, tasks
from bidsapp.argtypes import flatten_folds
from bidsapp.imaging import like
from bidsapp.qc import qc_names


def _write_dataset(root: Path, images: dict[str, np.ndarray]) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "cli test", "BIDSVersion": "1.10.0", "Authors": ["A", "B"]}))
    (root / "README").write_text("Synthetic dataset for the CLI tests.\n")
    for rel, data in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0]))
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, path)
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text("{}")
    return root


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(1)
    vol = lambda: rng.random((12, 10, 6)).astype(np.float32)  # noqa: E731
    bids = _write_dataset(base / "bids", {"sub-01/anat/sub-01_T2w.nii.gz": vol(),
                                          "sub-02/ses-A/anat/sub-02_ses-A_acq-ax_T2starw.nii.gz": vol()})
    (base / "nodesc").mkdir()
    invalid = _write_dataset(base / "invalid", {"sub-01/anat/sub-01_T2w.nii.gz": vol()})
    (invalid / "sub-01/anat/sub-01_notbids.txt").write_text("x")
    (base / "badconfig.json").write_text(json.dumps({"rules": [{"match": {"suffix": "T2w", "acqq": "x"},
                                                                "tasks": ["lesion_ms"]}]}))
    (base / "notjson.json").write_text("{")
    (base / "badfilter.json").write_text(json.dumps({"T2w": {"runn": 1}}))
    return {"bids": bids, "out": base / "out", "missing": base / "missing", "nodesc": base / "nodesc",
            "invalid": invalid, "badconfig": base / "badconfig.json", "notjson": base / "notjson.json",
            "badfilter": base / "badfilter.json", "base": base}


def _fmt(args: list[str], dirs: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in dirs.items()}) for a in args]


@pytest.mark.parametrize("args, code", [
    ([], 64),
    (["{bids}"], 64),
    (["{bids}", "{out}", "participant", "--nope"], 64),
    (["{bids}", "{out}", "participant", "--nprocs", "0"], 64),
    (["{bids}", "{out}", "participant", "--omp-nthreads", "x"], 64),
    (["{bids}", "{out}", "participant", "--device", "tpu"], 64),
    (["{bids}", "{out}", "participant", "--participant_label", "sub-0_1"], 64),
    (["{bids}", "{out}", "participant", "--folds", "a"], 64),
    (["{bids}", "{out}", "banana"], 17),
    (["{missing}", "{out}", "participant"], 66),
    (["{nodesc}", "{out}", "participant"], 66),
    (["{bids}", "{bids}", "participant"], 73),
    (["{bids}", "{bids}/sourcedata/cordlesion", "participant"], 73),  # only derivatives/<name> is allowed
    (["{bids}", "{out}", "participant", "--config", "{badconfig}"], 64),
    (["{bids}", "{out}", "participant", "--config", "{notjson}"], 64),
    (["{bids}", "{out}", "participant", "--config", "{missing}.json"], 64),
    (["{bids}", "{out}", "participant", "--bids-filter-file", "{badfilter}"], 64),
    (["{bids}", "{out}", "participant", "--skip_bids_validator", "--participant-label", "99"], 18),
    (["{bids}", "{out}", "participant", "--skip_bids_validator", "--session-label", "B"], 18),
    (["{invalid}", "{out}", "participant", "--demo"], 16),
    (["{bids}", "{out}", "participant", "--skip_bids_validator", "--models-dir", "{base}/nomodels"], 66),
])
def test_exit_codes(dirs, args, code, capsys):
    assert cli.main(_fmt(args, dirs)) == code
    assert not (dirs["bids"] / "derivatives").exists() and not (dirs["bids"] / "sourcedata").exists()


def test_messages(dirs, capsys):
    assert cli.main(_fmt(["{bids}", "{out}", "participant", "--config", "{badconfig}"], dirs)) == 64
    assert "badconfig.json: rules[0].match.acqq: unknown key 'acqq'" in capsys.readouterr().err
    assert cli.main(_fmt(["{bids}", "{out}", "participant", "--skip_bids_validator",
                          "--participant-label", "99"], dirs)) == 18
    err = capsys.readouterr().err
    assert "participant_label 99" in err and "subjects: sub-01, sub-02" in err and "T2starw, T2w" in err
    assert cli.main(_fmt(["{invalid}", "{out}", "participant"], dirs)) == 16
    err = capsys.readouterr().err
    assert "NOT_INCLUDED" in err and "sub-01_notbids.txt" in err and "--skip_bids_validator" in err
    assert cli.main(_fmt(["{bids}", "{bids}/x", "participant"], dirs)) == 73
    assert "inside it but not in derivatives/<name>" in capsys.readouterr().err


def test_version(capsys):
    assert cli.main(["-v"]) == 0
    assert capsys.readouterr().out.strip() == f"cordlesion {__version__}"
    assert __version__ == (Path(__file__).parents[1] / "version").read_text().strip()


def test_labels_and_defaults(monkeypatch):
    monkeypatch.setenv("CORDLESION_MODELS", "/opt/models")
    args = cli.build_parser().parse_args(["b", "o", "participant", "--participant_label", "sub-01", "02",
                                          "--session-label", "ses-M0", "M12"])
    assert args.participant_label == ["01", "02"] and args.session_label == ["M0", "M12"]
    assert str(args.models_dir) == "/opt/models"
    assert (args.nprocs, args.device, args.tta, args.overwrite) == (1, "auto", False, False)
    dashed = cli.build_parser().parse_args(["b", "o", "group", "--participant-label", "1", "--work-dir", "w",
                                            "--omp-nthreads", "2", "--folds", "0,2", "3"])
    assert dashed.participant_label == ["1"] and dashed.omp_nthreads == 2
    assert flatten_folds(dashed.folds) == (0, 2, 3)  # "--folds 0 1" and "--folds 0,1" alike


# ------------------------------------------------------------------------------ runs with a fake model
@dataclass(frozen=True)
class FakeModel:
    task: str
    path: Path
    release: str = "demo"
    demo: bool = True
    sha256: dict = None


def fake_segment(img, *, task, models, options=None):
    from bidsapp.pipelines import Provenance, SegmentationResult

    data = np.asanyarray(img.dataobj)
    prob = (data > 0.9).astype(np.float32)
    provenance = Provenance(task=tasks.get(task).name, engine="fake", device="cpu", models={}, folds={},
                            tta=False, ensemble=None, threshold=0.5)
    return SegmentationResult(like(img, (prob > 0.5).astype(np.uint8), np.uint8), like(img, prob, np.float32),
                              None, provenance)


@pytest.fixture
def fake_models(monkeypatch):
    from bidsapp import pipelines

    monkeypatch.setattr(pipelines, "segment", fake_segment)
    monkeypatch.setattr(runner, "locate_models", lambda names, settings: {
        name: FakeModel(name, Path("/m"), sha256={"w": "0" * 64})
        for task in names for name in tasks.get(task).models_run(settings.crop, cord=settings.cord)})


def test_dry_run_writes_nothing(dirs, fake_models, capsys, tmp_path):
    out = tmp_path / "out"
    assert cli.main([str(dirs["bids"]), str(out), "participant", "--dry-run", "--skip_bids_validator"]) == 0
    text = capsys.readouterr().out
    assert "sub-02/ses-A/anat/sub-02_ses-A_acq-ax_T2starw.nii.gz" in text
    assert "sub-02/ses-A/anat/sub-02_ses-A_acq-ax_label-lesion_desc-T2starw_probseg.nii.gz" in text
    assert text.count("[will run]") == 2 and "lesion_ms (demo)" in text
    assert list(out.iterdir()) == []


def test_run_rerun_and_failure(dirs, fake_models, capsys, tmp_path):
    out = tmp_path / "out"
    base = [str(dirs["bids"]), str(out), "participant", "--skip_bids_validator"]
    assert cli.main(base) == 0
    mask = out / "sub-01/anat/sub-01_label-lesion_desc-T2w_mask.nii.gz"
    assert mask.is_file() and (out / "logs/sub-01/sub-01_T2w_desc-T2w.log").is_file()
    assert cli.main([*base, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("[up to date]") == 2
    # Killed between the mask sidecar and the QC record: not up to date; its re-run adds the record
    record = out / qc_names("sub-01/anat/sub-01_T2w.nii.gz", "lesion_ms")["record"]
    record.unlink()
    assert cli.main([*base, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("[up to date]") == 1
    assert cli.main(base) == 0 and record.is_file()
    # A corrupt input among good ones: exit 1, the other image still done
    bad = dirs["base"] / "withbad"
    import shutil

    shutil.copytree(dirs["bids"], bad)
    (bad / "sub-01/anat/sub-01_T2w.nii.gz").write_bytes(b"\x1f\x8bnot really")
    annexed = bad / "sub-02/ses-A/anat/sub-02_ses-A_acq-sag_T2w.nii.gz"  # DataLad content not fetched
    annexed.symlink_to("../../../.git/annex/objects/Xx/Yy/SHA256E-s9--0.nii.gz/SHA256E-s9--0.nii.gz")
    out2 = tmp_path / "out2"
    assert cli.main([str(bad), str(out2), "participant", "--skip_bids_validator"]) == 1
    assert (out2 / "sub-02/ses-A/anat/sub-02_ses-A_acq-ax_label-lesion_desc-T2starw_mask.json").is_file()
    assert not (out2 / "sub-01/anat/sub-01_label-lesion_desc-T2w_mask.json").exists()
    log_text = (out2 / "logs/sub-01/sub-01_T2w_desc-T2w.log").read_text()
    assert "sub-01_T2w.nii.gz" in log_text and "Traceback" in log_text
    err = capsys.readouterr().err
    assert "failed: sub-01/anat/sub-01_T2w.nii.gz" in err and "2 failed" in err
    assert "broken symbolic link" in err
    assert "datalad get sub-02/ses-A/anat/sub-02_ses-A_acq-sag_T2w.nii.gz" in err
