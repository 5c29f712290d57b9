"""Issue 17 end to end: ``run.py participant`` + ``group`` on a two-session phantom dataset with the demo
models. The demo models are imperfect, so every figure the app wrote is checked against the figures
computed directly from the masks it wrote, and the change against the phantom's ground truth (the known
subject motion, the lesion that grew and the one that is new)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp.analysis import SessionInputs, analyze_change, analyze_lesions
from bidsapp.analysis.study import COUNTS_PATH, PER_LESION_PATH
from bidsapp.analysis.tables import lesion_tsv, read_tsv
from bidsapp.cli import main
from bidsapp.demo.dataset import write_dataset
from bidsapp.derivatives import image_names
from bidsapp.validation import validate

pytestmark = pytest.mark.slow

SEED = 20261124  # the shared phantom dataset's seed: its subject 01 has sessions M0 and M12
IMAGES = {"T2w": ("sub-01/ses-{s}/anat/sub-01_ses-{s}_acq-sag_T2w.nii.gz", "lesion_ms"),
          "T2starw": ("sub-01/ses-{s}/anat/sub-01_ses-{s}_T2starw.nii.gz", "lesion_ms"),
          "UNIT1": ("sub-01/ses-{s}/anat/sub-01_ses-{s}_UNIT1.nii.gz", "lesion_ms_mp2rage")}


def _run(args: list[str]) -> int:
    return main([*args, "--demo", "--nprocs", "2", "--omp-nthreads", "1"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    bids = tmp_path_factory.mktemp("bids2ses")
    write_dataset(bids, n_subjects=1, seed=SEED)
    out = tmp_path_factory.mktemp("out2ses") / "cordlesion"
    work = tmp_path_factory.mktemp("work2ses")
    assert _run([str(bids), str(out), "participant", "-w", str(work)]) == 0
    assert main([str(bids), str(out), "group"]) == 0
    return bids, out


def _names(suffix: str, ses: str):
    source, task = IMAGES[suffix]
    return source.format(s=ses), task, image_names(source.format(s=ses), task)


def test_outputs_are_valid_bids(bids_validator, run):
    _, out = run
    report = validate(out)
    assert report.n_errors == 0, report.summary()


@pytest.mark.parametrize("suffix", sorted(IMAGES))
def test_each_lesion_table_is_the_analysis_of_the_written_masks(run, suffix):
    _, out = run
    for ses in ("M0", "M12"):
        _, _, names = _names(suffix, ses)
        mask, cord = nib.load(out / names.mask), nib.load(out / names.cord)  # the cord is written
        assert np.asanyarray(cord.dataobj).any()
        sources = {"mask_source": "model", "cord_source": "model"}  # issue 24: what it was measured on
        assert (out / names.lesions_tsv).read_text() == lesion_tsv(analyze_lesions(mask, cord), sources)
        assert set(json.loads((out / names.lesions_json).read_text())) >= {"lesion_id", "volume_mm3"}
        block = json.loads((out / names.mask_json).read_text())["Provenance"]["LesionTable"]
        assert block["CordMask"] is True and block["DropOutsideCord"] is False
        assert block["DroppedLesions"] == 0 and block["Connectivity"] == 18


def test_group_per_lesion_table_holds_every_image_lesion(run):
    _, out = run
    rows = read_tsv((out / PER_LESION_PATH).read_text())
    expected = 0
    for suffix in IMAGES:
        for ses in ("M0", "M12"):
            source, task, names = _names(suffix, ses)
            mine = [r for r in rows if r["source"] == source and r["task"] == task]
            table = read_tsv((out / names.lesions_tsv).read_text())
            assert [r["volume_mm3"] for r in mine] == [r["volume_mm3"] for r in table]
            assert {r["session_id"] for r in mine} <= {f"ses-{ses}"}
            expected += len(table)
    assert len(rows) == expected
    assert (out / PER_LESION_PATH).with_suffix(".json").is_file()


def _truth(bids: Path, suffix: str, ses: str, label: str) -> Path:
    source = IMAGES[suffix][0].format(s=ses)
    stem = Path(source).name.rsplit("_", 1)[0]
    folder = bids / "derivatives" / "groundtruth" / Path(source).parent
    return folder / f"{stem}_label-{label}_desc-{suffix}_mask.nii.gz"


@pytest.mark.parametrize("suffix", sorted(IMAGES))
def test_change_matches_the_direct_analysis_and_the_truth(run, suffix):
    bids, out = run
    (src0, _, n0), (src1, task, n1) = _names(suffix, "M0"), _names(suffix, "M12")
    counts = next(r for r in read_tsv((out / COUNTS_PATH).read_text())
                  if r["contrast"] == suffix and r["task"] == task)
    pair = (counts["baseline_session"], counts["followup_session"], counts["error"])
    assert pair == ("ses-M0", "ses-M12", "n/a")
    table = read_tsv((out / counts["change_table"]).read_text())
    inputs = SessionInputs(nib.load(out / n1.mask), nib.load(bids / src1), nib.load(out / n0.mask),
                           nib.load(bids / src0), nib.load(out / n1.cord), nib.load(out / n0.cord))
    direct = analyze_change(inputs)
    assert sorted(r["status"] for r in table) == sorted(c.status for c in direct.changes)
    for status in ("new", "enlarged", "stable", "shrunk", "disappeared"):
        assert int(counts[status]) == direct.count(status)
    # the truth: the recovered motion, and the phantom's new and grown lesions found as such
    record_path = out / counts["change_table"].replace("_change.tsv", "_registration.json")
    record = json.loads(record_path.read_text())
    meta = json.loads(_truth(bids, suffix, "M12", "lesion").with_suffix("").with_suffix(".json").read_text())
    error = np.asarray(record["FollowupToBaselineRAS"]) @ np.asarray(meta["PhantomSubjectMotionRAS"])
    assert np.abs(error[:3, 3]).max() < 1.5 and np.abs(error[:3, :3] - np.eye(3)).max() < 0.02
    truth = analyze_change(SessionInputs(
        nib.load(_truth(bids, suffix, "M12", "lesion")), nib.load(bids / src1),
        nib.load(_truth(bids, suffix, "M0", "lesion")), nib.load(bids / src0)))
    assert sorted(c.status for c in truth.changes) == sorted(meta["PhantomLesionChange"])
    for true in truth.changes:  # the app's lesion at each true lesion's place has the true status
        found = min(table, key=lambda r: np.hypot.reduce([float(r[f"centroid_{a}_mm"]) - getattr(
            true, f"centroid_{a}_mm") for a in "xyz"]))
        assert found["status"] == true.status, (true, found)


def test_qc_page_marks_the_new_lesions(run):
    _, out = run
    html = (out / "qc" / "index.html").read_text()
    block = re.search(r'<script type="application/json" id="qc-data">(.*?)</script>', html, re.S)
    data = json.loads(block.group(1))
    counts = {(r["contrast"], r["task"]): int(r["new"]) for r in read_tsv((out / COUNTS_PATH).read_text())}
    for row in data["rows"]:
        if row["ses"] == "M12":
            assert row["new"] == counts[(row["con"], row["task"])] >= 1
            assert sum(le["st"] == "new" for le in row["les"]) == row["new"]
        else:
            assert row["new"] is None and row["les"] and all(le["st"] is None for le in row["les"])
        assert [le["id"] for le in row["les"]] == list(range(1, len(row["les"]) + 1))


def test_drop_outside_cord(run, tmp_path):
    bids, first = run
    out = tmp_path / "drop"
    assert _run([str(bids), str(out), "participant", "--session-label", "M12", "--drop-outside-cord",
                 "--skip-bids-validator", "-w", str(tmp_path / "w")]) == 0
    for suffix in IMAGES:
        _, _, names = _names(suffix, "M12")
        mask, cord = nib.load(out / names.mask), nib.load(out / names.cord)
        rows = analyze_lesions(mask, cord).lesions
        assert all(r.inside_cord_fraction > 0 for r in rows)  # none wholly outside the cord is left
        block = json.loads((out / names.mask_json).read_text())["Provenance"]["LesionTable"]
        before = read_tsv((first / names.lesions_tsv).read_text())
        outside = sum(r["inside_cord_fraction"] == "0" for r in before)
        assert block["DropOutsideCord"] is True and block["DroppedLesions"] == outside
        assert len(read_tsv((out / names.lesions_tsv).read_text())) == len(rows) == len(before) - outside
        state = json.loads((out / names.mask_json).read_text())["Provenance"]["State"]
        assert state["Parameters"]["lesion_table"] == {"cord": True, "drop_outside_cord": True}
    assert main([str(bids), str(tmp_path / "bad"), "participant", "--no-cord", "--drop-outside-cord"]) == 64
