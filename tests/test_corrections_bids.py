"""Issue 24 end to end: ``run.py participant`` and ``group`` on a two-session phantom with the demo models,
then the manual-correction loop: the phantom's ground truth saved as manual_correction.py saves corrected
masks, a re-run with ``--corrections`` that redoes the figures only, every table checked against
``bidsapp.analyze`` on the corrected masks, and the re-runs after one corrected file changes."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from bidsapp.analysis.study import COUNTS_PATH, PER_LESION_PATH
from bidsapp.analysis.tables import read_tsv
from bidsapp.cli import main
from bidsapp.demo.dataset import write_dataset
from bidsapp.derivatives import image_names
from bidsapp.validation import validate

pytestmark = pytest.mark.slow

SEED = 20261124  # the shared phantom dataset's seed: its subject 01 has sessions M0 and M12
T2W = "sub-01/ses-{s}/anat/sub-01_ses-{s}_acq-sag_T2w.nii.gz"      # corrected in both sessions
T2S = "sub-01/ses-{s}/anat/sub-01_ses-{s}_T2starw.nii.gz"          # the model's masks
SOURCES = [p.format(s=s) for p in (T2W, T2S) for s in ("M0", "M12")]
CORRECTED = {T2W.format(s=s) for s in ("M0", "M12")}
ROUTING = {"rules": [{"match": {"suffix": "T2w", "acq": "sag"}, "tasks": ["lesion_ms"]},
                     {"match": {"suffix": "T2starw"}, "tasks": ["lesion_ms"]}], "use_default_rules": False}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(out: Path) -> dict[str, tuple[str, int]]:
    """Every file of output_dir: (sha256, mtime) by relative path."""
    return {p.relative_to(out).as_posix(): (_sha(p), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


def _run(bids: Path, out: Path, level: str, *extra: str) -> int:
    config = out.parent / "routing.json"
    config.write_text(json.dumps(ROUTING))
    return main([str(bids), str(out), level, "--demo", "--config", str(config), "--skip_bids_validator",
                 "--nprocs", "1", "--omp-nthreads", "1", *extra])


def _manual(bids: Path, labels: Path, source: str, author: str = "Ada Lovelace") -> Path:
    """The phantom's true lesion mask where manual_correction.py -path-out puts a corrected mask, with the
    sidecar it writes (the GeneratedBy of the file it started from, then its Manual entry)."""
    stem = Path(source).name[: -len("_T2w.nii.gz")]
    truth = (bids / "derivatives/groundtruth" / Path(source).parent
             / f"{stem}_label-lesion_desc-T2w_mask.nii.gz")
    target = labels / Path(source).parent / (Path(source).name[: -len(".nii.gz")] + "_lesion-manual.nii.gz")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(truth, target)
    target.with_name(target.name.replace(".nii.gz", ".json")).write_text(json.dumps({
        "SpatialReference": "orig", "GeneratedBy": [
            {"Name": "cordlesion", "Version": "0.1.0"},
            {"Name": "Manual", "Author": author, "Date": "2025-05-06 07:08:09"}]}, indent=4))
    return target


@pytest.fixture(scope="module")
def one_thread_registration():
    """SimpleITK sums the metric over threads in whatever order they finish: one thread makes the group's
    registration and bidsapp.analyze's give the same bytes, so their tables can be compared as text."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


@pytest.fixture(scope="module")
def loop(tmp_path_factory, one_thread_registration):
    """The whole loop once: model run + group, corrections, figures-only re-run + group."""
    bids = tmp_path_factory.mktemp("bids")
    write_dataset(bids, n_subjects=1, seed=SEED)
    out = tmp_path_factory.mktemp("run") / "cordlesion"
    assert _run(bids, out, "participant") == 0
    assert _run(bids, out, "group") == 0
    model = _files(out)
    labels = tmp_path_factory.mktemp("labels")
    fixed = {source: _manual(bids, labels, source) for source in sorted(CORRECTED)}
    fixed_sha = {s: _sha(p) for s, p in fixed.items()}
    assert _run(bids, out, "participant", "--corrections", str(labels)) == 0
    assert _run(bids, out, "group", "--corrections", str(labels)) == 0
    return bids, out, labels, fixed, fixed_sha, model


def _names(source: str):
    return image_names(source, "lesion_ms")


def test_model_masks_and_corrected_files_are_unchanged(loop):
    _, out, _, fixed, fixed_sha, model = loop
    now = _files(out)
    for source in SOURCES:
        names = _names(source)
        for rel in (names.mask, names.probseg, names.cord):
            assert now[rel] == model[rel], rel                           # not even rewritten
    assert {s: _sha(p) for s, p in fixed.items()} == fixed_sha
    # the T2starw images were up to date: none of their files was touched
    untouched = [rel for rel in model if "T2starw" in rel and not rel.startswith(("group/", "qc/"))]
    assert untouched and all(now[rel] == model[rel] for rel in untouched)


def test_each_table_is_bidsapp_analyze_on_the_corrected_mask(loop, tmp_path):
    from bidsapp.analyze import main as analyze

    _, out, _, fixed, _, _ = loop
    for source in SOURCES:
        names = _names(source)
        mask = fixed.get(source, out / names.mask)
        expected = tmp_path / "expected.tsv"
        assert analyze(["-m", str(mask), "-s", str(out / names.cord), "-o", str(expected)]) == 0
        rows = read_tsv((out / names.lesions_tsv).read_text())
        want = "manual" if source in CORRECTED else "model"
        assert {(r.pop("mask_source"), r.pop("cord_source")) for r in rows} <= {(want, "model")}
        assert rows == read_tsv(expected.read_text()), source
        side = json.loads((out / names.mask_json).read_text())["Provenance"]
        assert side["LesionCount"] == len(rows)
        assert side["MaskSource"]["mask"]["source"] == want
        record = json.loads((out / names.qc_record).read_text())
        assert record["lesions"]["count"] == len(rows) and record["mask_source"] == {
            k: side["MaskSource"][k] for k in ("mask", "cord", "refused", "notes")}
        if source in CORRECTED:
            assert record["mask_source"]["mask"] == {
                "source": "manual", "path": str(fixed[source]), "sha256": _sha(fixed[source]),
                "author": "Ada Lovelace", "date": "2025-05-06 07:08:09"}


def test_group_tables_use_the_corrected_masks_and_say_so(loop, tmp_path):
    from bidsapp.analyze import main as analyze

    bids, out, _, fixed, _, _ = loop
    rows = read_tsv((out / "group/lesions.tsv").read_text())
    assert {r["source"]: r["mask_source"] for r in rows} == {
        s: "manual" if s in CORRECTED else "model" for s in SOURCES}
    per_lesion = read_tsv((out / PER_LESION_PATH).read_text())
    for source in SOURCES:
        mine = [r for r in per_lesion if r["source"] == source]
        table = read_tsv((out / _names(source).lesions_tsv).read_text())
        assert [{k: v for k, v in r.items() if k in table[0]} for r in mine] == table if table else not mine
        assert {r["mask_source"] for r in mine} <= {"manual" if source in CORRECTED else "model"}
    counts = {r["contrast"]: r for r in read_tsv((out / COUNTS_PATH).read_text())}
    t2w = counts["T2w"]
    sources = (t2w["followup_mask_source"], t2w["baseline_mask_source"], t2w["error"])
    assert sources == ("manual", "manual", "n/a")
    assert (counts["T2starw"]["followup_mask_source"], counts["T2starw"]["baseline_mask_source"]) == \
        ("model", "model")
    # the change between the corrected masks, as bidsapp.analyze computes it from them
    m0, m12 = T2W.format(s="M0"), T2W.format(s="M12")
    expected = tmp_path / "change.tsv"
    assert analyze(["-m", str(fixed[m12]), "-i", str(bids / m12), "-s", str(out / _names(m12).cord),
                    "--baseline-mask", str(fixed[m0]), "--baseline-image", str(bids / m0),
                    "--baseline-cord", str(out / _names(m0).cord), "-o", str(expected)]) == 0
    change = read_tsv((out / t2w["change_table"]).read_text())
    assert {(r.pop("mask_source"), r.pop("baseline_mask_source")) for r in change} == {("manual", "manual")}
    direct = read_tsv(expected.read_text())
    assert change == direct and direct                                  # every cell
    for status in ("new", "enlarged", "stable", "shrunk", "disappeared"):
        assert int(t2w[status]) == sum(r["status"] == status for r in direct)


def test_outputs_are_valid_bids(loop):
    _, out, _, _, _, _ = loop
    report = validate(out)
    assert report.n_errors == 0, report.summary()


def test_editing_one_corrected_mask_redoes_that_image_and_its_pair_only(loop, tmp_path, caplog, capsys):
    bids, out0, labels0, fixed0, _, _ = loop
    out, labels = tmp_path / "cordlesion", tmp_path / "labels"
    shutil.copytree(out0, out)
    shutil.copytree(labels0, labels)
    assert _run(bids, out, "participant", "--corrections", str(labels)) == 0   # unchanged: nothing
    assert _run(bids, out, "group", "--corrections", str(labels)) == 0
    before = _files(out)
    caplog.clear()
    assert _run(bids, out, "participant", "--corrections", str(labels)) == 0
    assert "summary: 0 done, 4 up to date, 0 failed" in caplog.text
    assert _files(out) == before                                               # not one byte, not one touch
    assert _run(bids, out, "group", "--corrections", str(labels)) == 0         # no pair registered again
    again = _files(out)
    assert {r: again[r] for r in again if r.startswith("group/changes/")} == \
        {r: before[r] for r in before if r.startswith("group/changes/")}
    before = again
    # the rater removes one lesion of the follow-up (drawn as one blob: take the first labelled component)
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    m12 = T2W.format(s="M12")
    edited = labels / fixed0[m12].relative_to(labels0)
    img = nib.load(edited)
    labelled, n = ndimage.label(np.asarray(img.dataobj) > 0, ndimage.generate_binary_structure(3, 2))
    assert n >= 2
    nib.save(nib.Nifti1Image((labelled > 1).astype(np.uint8), img.affine, img.header), edited)
    capsys.readouterr()
    assert _run(bids, out, "participant", "--corrections", str(labels), "--dry-run") == 0
    plan = capsys.readouterr().out
    assert plan.count("[figures to redo: corrected masks or disc labels new or changed]") == 1
    assert plan.count("[up to date]") == 3
    caplog.clear()
    assert _run(bids, out, "participant", "--corrections", str(labels)) == 0
    assert "summary: 0 done, 1 figures redone (masks kept), 3 up to date, 0 failed" in caplog.text
    after = _files(out)
    changed = {rel for rel in after if after[rel] != before.get(rel)}
    names = _names(m12)
    assert changed == {names.lesions_tsv, names.lesions_json, names.mask_json, names.probseg_json,
                       names.cord_json, names.qc_record, *names.figures.values(), names.log, names.settings}
    assert json.loads((out / names.mask_json).read_text())["Provenance"]["LesionCount"] == n - 1
    before = after
    assert _run(bids, out, "group", "--corrections", str(labels)) == 0
    after = _files(out)
    pairs = {rel for rel in after if rel.startswith("group/changes/") and after[rel] != before[rel]}
    assert pairs and all("T2w" in rel for rel in pairs)                       # the T2w pair only
    assert not any(after[r] != before[r] for r in before if r.startswith("group/changes/") and "T2starw" in r)


def test_a_bad_corrected_mask_leaves_the_model_figures_with_the_reason(loop, tmp_path, caplog):
    import nibabel as nib
    import numpy as np

    bids, out0, _, _, _, _ = loop
    out, labels = tmp_path / "cordlesion", tmp_path / "labels"
    shutil.copytree(out0, out)
    source = T2S.format(s="M0")
    soft = labels / Path(source).parent / (Path(source).name[: -len(".nii.gz")] + "_lesion-manual.nii.gz")
    soft.parent.mkdir(parents=True)
    img = nib.load(out / _names(source).probseg)                           # a soft map saved as the mask
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), soft)
    caplog.clear()
    assert _run(bids, out, "participant", "--corrections", str(labels)) == 0
    record = json.loads((out / _names(source).qc_record).read_text())
    assert record["mask_source"]["mask"] == {"source": "model"}
    (reason,) = record["mask_source"]["refused"]
    assert reason.startswith(f"{soft}: not binary: a soft map (") and reason.endswith("threshold it to 0/1")
    assert f"corrected mask refused, the model's figures stand: {reason}" in caplog.text
    # the corrected T2w masks were removed from this run's folder: their figures go back to the model's
    rows = read_tsv((out / _names(T2W.format(s="M0")).lesions_tsv).read_text())
    assert {r["mask_source"] for r in rows} <= {"model"}


def test_the_group_level_names_corrections_the_participant_level_has_not_seen(loop, tmp_path, caplog):
    """A corrected file edited after the participant level: the group level says which image to redo, and
    its session pair is not computed on figures that no longer match (the other pair still is)."""
    import nibabel as nib
    import numpy as np

    bids, out0, labels0, fixed0, _, _ = loop
    out, labels = tmp_path / "cordlesion", tmp_path / "labels"
    shutil.copytree(out0, out)
    shutil.copytree(labels0, labels)
    m12 = T2W.format(s="M12")
    edited = labels / fixed0[m12].relative_to(labels0)
    img = nib.load(edited)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), edited)
    # the records name the files the figures were measured on: point them at this copy of the folder
    for path in out.glob("sub-*/figures/*_qc.json"):
        path.write_text(path.read_text().replace(str(labels0), str(labels)))
    caplog.clear()
    assert _run(bids, out, "group", "--corrections", str(labels)) == 0
    warning = (f"1 image(s) have corrected masks in {labels} that their figures were not measured on (new, "
               "changed or removed since the participant level): re-run the participant level with "
               f"--corrections {labels} (it redoes their figures only, no model): {m12} (lesion_ms)")
    assert warning in caplog.text
    counts = {r["contrast"]: r for r in read_tsv((out / COUNTS_PATH).read_text())}
    assert counts["T2w"]["error"] == (f"{edited}: corrected lesion mask changed or missing since the "
                                      "participant level: re-run the participant level with --corrections")
    assert counts["T2starw"]["error"] == "n/a"
