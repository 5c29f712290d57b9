"""End to end: the participant level on phantoms with the demo models (all three contrasts, sessions,
acq/run entities), judged against the ground truth; re-runs, filters, a corrupt image; a smoke run on
the real healthy-control scans."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp import __version__, plan
from bidsapp.cli import main
from bidsapp.validation import validate
from tests.components import beside_the_clone, missing

pytestmark = pytest.mark.slow

# Real healthy-control scans, kept beside the repository (../shared/data/real-bids), not in it; the
# variable points elsewhere (or at an empty folder, to leave them out). CI's fresh clone has shared/ beside
# it as this checkout does, so there a missing dataset FAILS (tests/components.py): the only test on real
# scans must not vanish with a moved folder. A user's clone has no shared/: the test skips, saying so.
REAL_BIDS = Path(os.environ.get("CORDLESION_REAL_BIDS") or beside_the_clone("data", "real-bids"))
# Pooled Dice of the committed demo models on this held-out phantom dataset (seed PHANTOM_BIDS_SEED),
# measured through the whole app: lesion_ms 0.814, lesion_ms_mp2rage 0.805. The floors are issue 3's
# targets for the demo models; a wrong orientation, grid, crop or class gives ~0.
MIN_DICE = {"lesion_ms": 0.7, "lesion_ms_mp2rage": 0.7}
MIN_CORD_DICE = 0.9  # the demo cord model is good (validation 0.96; measured 0.97-0.99 here)


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under root: sha256 and mtime (symlinks not followed)."""
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _jobs(bids: Path):
    rules = plan.default_rules()
    return plan.route(plan.index(bids, suffixes=plan.rule_suffixes(rules)), rules)


def _assert_same_grid(out: nib.Nifti1Image, ref: nib.Nifti1Image, name: str) -> None:
    assert out.shape == ref.shape[:3], name
    np.testing.assert_array_equal(out.affine, ref.affine, err_msg=name)
    best = ref.header.get_best_affine()
    for get in ("get_qform", "get_sform"):  # SCT 7.3's output header (imaging.like_sct)
        o_mat, o_code = getattr(out.header, get)(coded=True)
        r_code = int(getattr(ref.header, get)(coded=True)[1])
        assert int(o_code) == (r_code or 2), name
        np.testing.assert_allclose(o_mat, best, atol=1e-5, err_msg=name)


def _assert_outputs(out_dir: Path, bids: Path, jobs) -> None:
    for job in jobs:
        ref = nib.load(job.source.path)
        mask = nib.load(out_dir / job.outputs["mask"])
        prob = nib.load(out_dir / job.outputs["probseg"])
        _assert_same_grid(mask, ref, job.outputs["mask"])
        _assert_same_grid(prob, ref, job.outputs["probseg"])
        assert mask.get_data_dtype() == np.uint8 and prob.get_data_dtype() == np.float32
        m = np.asanyarray(mask.dataobj)
        p = np.asanyarray(prob.dataobj)
        assert set(np.unique(m)) <= {0, 1}
        assert 0.0 <= p.min() and p.max() <= 1.0
        if "cord" in job.outputs:
            cord = nib.load(out_dir / job.outputs["cord"])
            _assert_same_grid(cord, ref, job.outputs["cord"])
            assert np.asanyarray(cord.dataobj).sum() > 0


def test_every_image_has_outputs_on_its_grid(participant_run, phantom_bids):
    jobs = _jobs(phantom_bids)
    suffixes = {j.source.suffix for j in jobs}
    assert suffixes == {"T2w", "T2starw", "T2star", "UNIT1"}
    assert any(j.source.session for j in jobs) and any("run" in j.source.entities for j in jobs)
    assert any("acquisition" in j.source.entities for j in jobs)
    assert not any("inv" in j.source.entities for j in jobs)  # MP2RAGE inversions are never segmented
    _assert_outputs(participant_run, phantom_bids, jobs)


def _dice(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return 2.0 * float(np.logical_and(a, b).sum()), float(a.sum() + b.sum())


def _load_bool(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj) > 0


def test_dice_against_ground_truth(participant_run, phantom_bids):
    truth = phantom_bids / "derivatives" / "groundtruth"
    pooled: dict[str, list[float]] = {}
    for job in _jobs(phantom_bids):
        inter, total = _dice(_load_bool(truth / job.outputs["mask"]),
                             _load_bool(participant_run / job.outputs["mask"]))
        acc = pooled.setdefault(job.task, [0.0, 0.0])
        acc[0] += inter
        acc[1] += total
        if "cord" in job.outputs:  # the cord mask used for the MP2RAGE crop, against the true cord
            inter, total = _dice(_load_bool(truth / job.outputs["cord"]),
                                 _load_bool(participant_run / job.outputs["cord"]))
            assert inter / total >= MIN_CORD_DICE, (job.outputs["cord"], inter / total)
    dice = {task: inter / total for task, (inter, total) in pooled.items()}
    assert set(dice) == set(MIN_DICE)
    for task, value in dice.items():
        assert value >= MIN_DICE[task], (task, value)


def test_sidecars_and_dataset_description(participant_run, phantom_bids):
    job = next(j for j in _jobs(phantom_bids) if j.task == "lesion_ms_mp2rage")
    side = json.loads((participant_run / job.outputs["mask_json"]).read_text())
    assert side["Type"] == "Lesion" and side["Manual"] is False and side["Description"]
    assert side["Sources"] == [f"bids:raw:{job.source.relpath}"]
    prov = side["Provenance"]
    state = prov["State"]
    assert prov["Version"] == __version__ and state["Task"] == "lesion_ms_mp2rage"
    # the MP2RAGE box rule: 30 mm in-plane, 5 mm along S-I (issue 15: physical space, as the model's README)
    assert state["Parameters"]["tta"] is False and state["Parameters"]["crop"]["margin_si_mm"] == 5.0
    assert list(state["Models"]) == ["spinalcord", "lesion_ms_mp2rage"]
    # each fact once: the pipeline block holds only what the state does not
    assert set(prov) == {"Software", "Version", "RunTimeSeconds", "LesionCount", "LesionVolumeMm3", "Date",
                         "Pipeline", "State", "Outputs", "LesionTable",  # LesionTable: issue 17
                         "MaskSource", "FiguresState"}  # what the figures were measured on: issue 24
    assert prov["MaskSource"] == {"mask": {"source": "model"}, "cord": {"source": "model"}, "refused": [],
                                  "notes": []}
    assert prov["FiguresState"] == {"Version": 1, "Corrections": {}}
    assert set(prov["Pipeline"]) == {"engine", "device", "folds", "threshold", "model_paths", "crop"}
    assert prov["Pipeline"]["folds"] == {"spinalcord": [0], "lesion_ms_mp2rage": [3]}  # SCT ships fold 3
    assert len(prov["Pipeline"]["crop"]["box_voxels"]) == 3
    for model in state["Models"].values():
        assert model["release"] == "demo" and model["demo"] is True
        assert model["sha256"] and all(len(h) == 64 for h in model["sha256"].values())
    mask = nib.load(participant_run / job.outputs["mask"])
    voxel = float(np.prod(mask.header.get_zooms()[:3]))
    assert prov["LesionVolumeMm3"] == pytest.approx(np.asanyarray(mask.dataobj).sum() * voxel, abs=1e-2)
    assert isinstance(prov["LesionCount"], int) and prov["RunTimeSeconds"] > 0
    assert prov["State"]["InputSha256"] == hashlib.sha256(job.source.path.read_bytes()).hexdigest()
    assert prov["Outputs"][-1] == job.outputs["cord"]
    assert json.loads((participant_run / job.outputs["cord_json"]).read_text())["Type"] == "ROI"
    desc = json.loads((participant_run / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "cordlesion"
    assert desc["DatasetLinks"]["raw"] == phantom_bids.resolve().as_uri()
    assert (participant_run / ".bidsignore").read_text().split() == ["**/figures", "logs", "qc", "group",
                                                                      "**/*_lesions.tsv", "**/*_lesions.json"]
    log_file = participant_run / job.log
    assert "lesion_ms_mp2rage" in log_file.read_text()
    settings = json.loads((participant_run / job.names.settings).read_text())
    assert settings["demo"] is True and settings["nprocs"] == 2


def test_output_validates_and_input_untouched(participant_run, phantom_bids):
    report = validate(participant_run)
    assert report.n_errors == 0, report.summary()
    assert not list(phantom_bids.rglob(".*.tmp*"))  # nothing (not even a temp file) in bids_dir
    assert not (phantom_bids / "derivatives" / "cordlesion").exists()
    assert not list(participant_run.rglob(".*.tmp*"))  # no temp file left in the outputs


def test_rerun_skips_everything_and_changes_no_byte(participant_run, phantom_bids, tmp_path, capsys):
    out = tmp_path / "cordlesion"
    shutil.copytree(participant_run, out)
    before = _snapshot(out)
    bids_before = _snapshot(phantom_bids)
    assert main([str(phantom_bids), str(out), "participant", "--demo", "--skip_bids_validator"]) == 0
    assert _snapshot(out) == before
    assert _snapshot(phantom_bids) == bids_before
    assert f"0 done, {len(_jobs(phantom_bids))} up to date, 0 failed" in capsys.readouterr().err
    # --overwrite forces one selected image; same model, same input: the same mask
    mask = "sub-02/anat/sub-02_acq-ax_run-2_label-lesion_desc-T2w_mask.nii.gz"
    assert main([str(phantom_bids), str(out), "participant", "--demo", "--skip_bids_validator", "--overwrite",
                 "--participant-label", "sub-02", "--bids-filter-file", _filter(tmp_path, {"run": 2})]) == 0
    after = _snapshot(out)
    assert after[mask][1] != before[mask][1]
    np.testing.assert_array_equal(nib.load(out / mask).get_fdata(),
                                  nib.load(participant_run / mask).get_fdata())
    changed = {k for k in after if after[k] != before.get(k)}
    assert all(k.startswith(("sub-02/", "logs/sub-02/", "sub-02/figures/")) for k in changed), changed


def _filter(tmp_path: Path, obj: dict) -> str:
    path = tmp_path / "filter.json"
    path.write_text(json.dumps(obj))
    return str(path)


def test_filters_and_config_in_the_plan(phantom_bids, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = tmp_path / "config.json"
    rule = {"match": {"suffix": "T2w", "acq": "sag"}, "tasks": ["lesion_ms", "seg_sc_contrast_agnostic"]}
    cfg.write_text(json.dumps({"rules": [rule], "use_default_rules": False}))
    args = [str(phantom_bids), str(out), "participant", "--demo", "--skip_bids_validator", "--dry-run"]
    assert main([*args, "--config", str(cfg), "--session-label", "M0"]) == 0
    text = capsys.readouterr().out
    inputs = sorted({line[2:] for line in text.splitlines() if line.startswith("- ")})
    assert inputs == ["sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_T2w.nii.gz",
                      "sub-04/ses-M0/anat/sub-04_ses-M0_acq-sag_T2w.nii.gz"]
    assert text.count("_label-SC_desc-T2w_mask") == text.count("_label-lesion_desc-T2w_mask") == 2
    assert text.count("[will run]") == 4
    only_m12_unit1 = {"UNIT1": {"session": "M12"}, "T2w": {"acq": "x"}, "T2starw": {"subject": "none"},
                      "T2star": {"subject": "none"}}
    assert main([*args, "--bids-filter-file", _filter(tmp_path, only_m12_unit1)]) == 0
    inputs = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("- ")]
    assert inputs == ["sub-01/ses-M12/anat/sub-01_ses-M12_UNIT1.nii.gz"]
    cfg.write_text(json.dumps({"rules": [{"match": {"suffix": "T2w"}, "tasks": ["lesion_ms"], "foo": 1}]}))
    assert main([*args, "--config", str(cfg)]) == 64
    assert "config.json: rules[0]: Additional properties are not allowed ('foo'" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_corrupt_image_among_good_ones(bids_validator, phantom_bids, tmp_path, capsys):
    bids = tmp_path / "bids"
    shutil.copytree(phantom_bids, bids, ignore=shutil.ignore_patterns("sub-01", "sub-03", "sub-04", "sub-05"))
    bad = bids / "sub-02/anat/sub-02_acq-ax_run-1_T2w.nii.gz"
    bad.write_bytes(bad.read_bytes()[:2000])  # truncated download
    out = tmp_path / "out"
    assert main([str(bids), str(out), "participant", "--demo", "--skip_bids_validator"]) == 1
    err = capsys.readouterr().err
    assert "1 failed" in err and "sub-02_acq-ax_run-1_T2w.nii.gz" in err
    good = [j for j in _jobs(bids) if j.source.path != bad]
    assert len(good) == 2
    _assert_outputs(out, bids, good)
    failed_log = (out / "logs/sub-02/sub-02_acq-ax_run-1_T2w_desc-T2w.log").read_text()
    assert "Traceback" in failed_log and "sub-02_acq-ax_run-1_T2w.nii.gz" in failed_log
    assert not (out / "sub-02/anat/sub-02_acq-ax_run-1_label-lesion_desc-T2w_mask.json").exists()
    assert validate(out).n_errors == 0


@pytest.fixture(scope="session")  # session: checked before the validator (a session fixture too)
def real_bids() -> Path:
    if not (REAL_BIDS / "dataset_description.json").is_file():
        missing("real-bids data", f"no BIDS dataset at {REAL_BIDS} (../shared/data/real-bids beside the "
                "clone, or CORDLESION_REAL_BIDS)")
    return REAL_BIDS


def test_real_bids_smoke(real_bids, bids_validator, tmp_path):
    """Real scans (read only, never written): every output on the exact input grid, output valid."""
    before = _snapshot(real_bids)
    out = tmp_path / "real"
    assert main([str(real_bids), str(out), "participant", "--demo", "-w", str(tmp_path / "work"),
                 "--nprocs", "2", "--omp-nthreads", "1"]) == 0
    jobs = _jobs(real_bids)
    assert len(jobs) == 4
    _assert_outputs(out, real_bids, jobs)
    assert validate(out).n_errors == 0
    assert _snapshot(real_bids) == before


def test_two_tasks_on_one_image_write_distinct_files(phantom_bids, tmp_path):
    """lesion_ms and spinalcord routed to one T2w image (the config schema allows it) through run.py: each
    job its own mask, log, settings and QC record, and the cord mask is the cord model's."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"rules": [{"match": {"suffix": "T2w", "acq": "ax", "run": 1},
                                             "tasks": ["lesion_ms", "spinalcord"]}],
                                  "use_default_rules": False}))
    out = tmp_path / "two"
    assert main([str(phantom_bids), str(out), "participant", "--demo", "--skip_bids_validator",
                 "--participant-label", "02", "--config", str(config)]) == 0
    rules = plan.load_config(json.loads(config.read_text()))
    lesion, cord = plan.route(plan.index(phantom_bids, participants=["02"], suffixes=["T2w"]), rules)
    assert (lesion.task, cord.task) == ("lesion_ms", "spinalcord") and lesion.source == cord.source
    per_job = [(j.outputs["mask"], j.outputs["mask_json"], j.log, j.names.settings, j.names.qc_record)
               for j in (lesion, cord)]
    for paths in zip(*per_job, strict=True):
        assert paths[0] != paths[1] and all((out / p).is_file() for p in paths), paths
    assert cord.log == "logs/sub-02/sub-02_acq-ax_run-1_T2w_label-SC_desc-T2w.log"
    assert "task spinalcord" in (out / cord.log).read_text()
    assert "task lesion_ms" in (out / lesion.log).read_text()
    records = [json.loads((out / j.names.qc_record).read_text()) for j in (lesion, cord)]
    assert [r["task"] for r in records] == ["lesion_ms", "spinalcord"]
    sidecars = [json.loads((out / j.outputs["mask_json"]).read_text()) for j in (lesion, cord)]
    assert [s["Provenance"]["State"]["Task"] for s in sidecars] == ["lesion_ms", "spinalcord"]
    assert [s["Type"] for s in sidecars] == ["Lesion", "ROI"]
    truth = phantom_bids / "derivatives" / "groundtruth"
    inter, total = _dice(_load_bool(truth / cord.outputs["mask"]), _load_bool(out / cord.outputs["mask"]))
    assert inter / total >= MIN_CORD_DICE
