"""Issue 25 end to end: ``run.py participant`` and ``group`` with ``--disc-labels`` on the phantom dataset
(demo models): each image's level map against the phantom's TRUE levels, each lesion's ``vert_level``
against the true levels of its voxels, the group per-level table (sums, ``n/a`` outside the field of
view), the QC record and page, validator 0 errors; then re-runs: unchanged (nothing), a changed disc file
(that session's figures only), and each refusal with the line a user reads (levels ``n/a``, masks kept)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp.analysis.lesions import lesion_labels
from bidsapp.analysis.levels import level_name, level_value
from bidsapp.analysis.tables import read_tsv
from bidsapp.cli import main
from bidsapp.demo.dataset import write_dataset
from bidsapp.derivatives import image_names
from bidsapp.validation import validate
from tests.conftest import PHANTOM_BIDS_SEED

pytestmark = pytest.mark.slow

T2W = "sub-01/ses-{s}/anat/sub-01_ses-{s}_acq-sag_T2w.nii.gz"   # sagittal: its own disc labels
T2S = "sub-01/ses-{s}/anat/sub-01_ses-{s}_T2starw.nii.gz"       # axial: the session's UNIT1's disc labels
SUB02 = ["sub-02/anat/sub-02_T2starw.nii.gz", "sub-02/anat/sub-02_acq-ax_run-1_T2w.nii.gz",
         "sub-02/anat/sub-02_acq-ax_run-2_T2w.nii.gz"]           # no sagittal image: no disc labels
SOURCES = [p.format(s=s) for p in (T2W, T2S) for s in ("M0", "M12")] + SUB02
ROUTING = {"rules": [{"match": {"suffix": "T2w"}, "tasks": ["lesion_ms"]},
                     {"match": {"suffix": "T2starw"}, "tasks": ["lesion_ms"]}], "use_default_rules": False}


def _run(bids: Path, out: Path, level: str, labels: Path, *extra: str) -> int:
    config = out.parent / "routing.json"
    config.write_text(json.dumps(ROUTING))
    return main([str(bids), str(out), level, "--demo", "--config", str(config), "--skip_bids_validator",
                 "--nprocs", "1", "--omp-nthreads", "1", "--disc-labels", str(labels), *extra])


def _names(source: str):
    return image_names(source, "lesion_ms")


def _disc_file(labels: Path, source: str) -> Path:
    return labels / source.replace(".nii.gz", "_label-discs_dlabel.nii.gz")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("levels_bids")
    bids, out, labels = root / "bids", root / "cordlesion", root / "labels"
    write_dataset(bids, n_subjects=2, seed=PHANTOM_BIDS_SEED)
    shutil.copytree(bids / "derivatives" / "labels", labels)  # the tests below edit their own copies
    assert _run(bids, out, "participant", labels) == 0
    assert _run(bids, out, "group", labels) == 0
    return bids, out, labels


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).astype(int)


def _truth(bids: Path, rel: str) -> np.ndarray:
    return _data(bids / "derivatives" / "groundtruth" / rel)


@pytest.mark.parametrize("source, agree", [(T2W.format(s="M0"), 0.9), (T2W.format(s="M12"), 0.9),
                                           (T2S.format(s="M0"), 0.75), (T2S.format(s="M12"), 0.75)])
def test_level_maps_are_the_phantoms_true_levels(run, source, agree):
    # measured: sagittal 0.987 / 0.952, axial (5 mm slices: one level per slice) 0.805 / 0.886; always
    # within one level (a boundary is a plane at the disc's projection, not the disc's own plane)
    bids, out, _ = run
    rel = _names(source).levels
    ours, truth = _data(out / rel), _truth(bids, rel)
    both = (ours > 0) & (truth > 0)
    assert both.sum() > 0.85 * (ours > 0).sum()                     # the demo cord vs the true cord
    assert (ours[both] == truth[both]).mean() >= agree
    assert (np.abs(ours[both] - truth[both]) <= 1).all()
    assert set(np.unique(ours[ours > 0])) >= {3, 4, 5, 6, 7}         # C3-C7 at least: the phantom's span


def test_every_lesions_level_is_the_true_level_of_most_of_its_voxels(run):
    bids, out, _ = run
    checked = 0
    for source in SOURCES[:4]:
        names = _names(source)
        labels, truth = lesion_labels(nib.load(out / names.mask)), _truth(bids, names.levels)
        for row in read_tsv((out / names.lesions_tsv).read_text()):
            values = truth[(labels == int(row["lesion_id"])) & (truth > 0)]
            fractions = [float(f) for f in row["vert_level_fractions"].split(",")]
            if values.size and max(fractions) >= 0.6:               # not a lesion split evenly on a disc
                assert row["vert_level"] == level_name(int(np.bincount(values).argmax())), (source, row)
                checked += 1
            assert row["vert_levels"].split(",")[fractions.index(max(fractions))] == row["vert_level"]
            assert abs(sum(fractions) - 1) < 0.003 and row["vert_level_extrapolated"] in ("true", "false")
    assert checked >= 5


def test_images_without_disc_labels_have_na_levels_and_no_map(run):
    _, out, _ = run
    for source in SUB02:
        names = _names(source)
        rows = read_tsv((out / names.lesions_tsv).read_text())
        assert rows and all(r[c] == "n/a" for r in rows for c in ("vert_level", "vert_levels",
                                                                  "vert_level_fractions",
                                                                  "vert_level_extrapolated"))
        assert not (out / names.levels).exists()
        levels = json.loads((out / names.qc_record).read_text())["levels"]
        assert levels["covered"] == [] and levels["source"] is None and levels["error"] is None
    dictionary = json.loads((out / _names(SUB02[0]).lesions_json).read_text())
    assert dictionary["vert_level"]["Levels"]["C3"] == "vertebra C3"


def test_the_sidecar_and_tsv_say_which_discs_made_the_map(run):
    bids, out, labels = run
    own, shared = _names(T2W.format(s="M12")), _names(T2S.format(s="M12"))
    side = json.loads((out / own.levels_json).read_text())
    assert side["DiscLabels"] == str(_disc_file(labels, T2W.format(s="M12")))
    assert side["DiscLabelsShared"] is False and side["DiscsUsed"]["which"] == "all"
    assert side["SpatialReference"] == f"bids:raw:{T2W.format(s='M12')}"
    side = json.loads((out / shared.levels_json).read_text())
    unit1 = "sub-01/ses-M12/anat/sub-01_ses-M12_UNIT1"
    assert side["DiscLabelsShared"] is True and side["DiscLabelsDrawnOn"] == unit1
    assert side["DiscsUsed"]["which"] == "bounding"
    along = [p["value"] for p in side["DiscPlacement"] if p["where"] == "along"]
    assert side["DiscsUsed"]["values"] == along and len(along) >= 3
    for names in (own, shared):
        present = sorted(int(v) for v in np.unique(_data(out / names.levels)) if v)
        rows = read_tsv((out / names.levels_tsv).read_text())
        assert [(int(r["index"]), r["name"]) for r in rows] == [(v, level_name(v)) for v in present]
    prov = json.loads((out / own.mask_json).read_text())["Provenance"]
    assert prov["VertebralLevels"]["error"] is None and prov["VertebralLevels"]["covered"][0] == "C2"
    assert [p.name for p in [_disc_file(labels, T2W.format(s="M12"))]][0] in \
        {name for name, _ in prov["FiguresState"]["Discs"]}


def _group_rows(out: Path, name: str) -> list[dict[str, str]]:
    return read_tsv((out / "group" / name).read_text())


def test_group_table_sums_to_each_images_lesions_and_is_na_outside_the_field_of_view(run):
    _, out, _ = run
    images = _group_rows(out, "lesions.tsv")
    levels = _group_rows(out, "lesion_levels.tsv")
    study = sorted({r["level"] for r in levels}, key=level_value)
    assert len(levels) == len(images) * len(study) == 7 * len(study)
    for image in images:
        key = lambda r, image=image: all(r[k] == image[k] for k in ("participant_id", "session_id",  # noqa: E731
                                                                    "acquisition", "run", "contrast"))
        rows = [r for r in levels if key(r)]
        assert [r["level"] for r in rows] == study
        names = _names(image["source"])
        covered = {r["name"] for r in read_tsv((out / names.levels_tsv).read_text())} \
            if (out / names.levels_tsv).exists() else set()
        assert {r["level"] for r in rows if r["lesion_volume_mm3"] != "n/a"} == covered
        assert all((r["lesion_count"] == "n/a") == (r["level"] not in covered) for r in rows)
        if covered:  # volumes and counts sum to the image's own totals
            assert sum(float(r["lesion_volume_mm3"]) for r in rows if r["level"] in covered) == \
                pytest.approx(float(image["total_lesion_volume_mm3"]), abs=0.01)
            counts = [int(r["lesion_count"]) for r in rows if r["level"] in covered]
            assert sum(counts) == int(image["lesion_count"])
        else:
            assert image["participant_id"] == "sub-02"
    summary = _group_rows(out, "levels_summary.tsv")
    assert [r["level"] for r in summary] == study
    for row in summary:
        at = [r for r in levels if r["level"] == row["level"] and r["lesion_count"] != "n/a"]
        assert int(row["images_covering"]) == len(at)
        total = sum(float(r["lesion_volume_mm3"]) for r in at)
        assert float(row["lesion_volume_mm3"]) == pytest.approx(total, abs=0.01)
    for name in ("lesion_levels.json", "levels_summary.json"):
        assert "level" in json.loads((out / "group" / name).read_text())


def test_group_per_lesion_table_carries_the_levels(run):
    _, out, _ = run
    assert "vert_level" in json.loads((out / "group" / "lesions_per_lesion.json").read_text())
    rows = _group_rows(out, "lesions_per_lesion.tsv")
    assert rows and {"vert_level", "vert_levels", "vert_level_fractions"} <= set(rows[0])
    assert {r["vert_level"] for r in rows if r["participant_id"] == "sub-02"} == {"n/a"}
    assert all(r["vert_level"] != "n/a" for r in rows if r["participant_id"] == "sub-01")


def test_qc_record_pictures_and_page_show_the_levels(run):
    from PIL import Image

    _, out, _ = run
    names = _names(T2W.format(s="M0"))
    record = json.loads((out / names.qc_record).read_text())
    levels = record["levels"]
    assert levels["covered"][0] == "C2" and not levels["shared"]
    assert sum(levels["volume_mm3"].values()) == pytest.approx(record["lesions"]["total_mm3"], abs=0.01)
    assert levels["files"]["levels"] == names.levels
    text = Image.open(out / names.figures["sagittal"]).text["cordlesion:levels"]
    bands = [b.split(":")[0] for b in text.split(",")]  # inferior first (RAS slices)
    assert bands == sorted(bands, key=level_value, reverse=True) and {"C3", "C4", "C5", "C6"} <= set(bands)
    page = (out / "qc" / "index.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id="qc-data">(.*?)</script>', page,
                                re.S).group(1))
    spans = {r["src"]: r["lv"] for r in data["rows"]}
    assert spans[T2W.format(s="M0")] == f"{levels['covered'][0]}-{levels['covered'][-1]}"
    assert spans[SUB02[0]] is None
    summary = _group_rows(out, "levels_summary.tsv")
    assert [r["level"] for r in data["levels"]] == [r["level"] for r in summary]


def test_the_pages_script_draws_the_load_by_level(run):
    import subprocess

    from tests.components import missing

    _, out, _ = run
    if shutil.which("node") is None:
        missing("node", "not found: the QC page's script is run under node where no browser is installed")
    harness = Path(__file__).with_name("qc_page_node.js")
    proc = subprocess.run(["node", str(harness), str(out / "qc/index.html"), "{}"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    levels = json.loads(proc.stdout)["levels"]
    summary = _group_rows(out, "levels_summary.tsv")
    assert levels["hidden"] is False and len(levels["bars"]) == len(summary)
    for bar, row in zip(levels["bars"], summary, strict=True):
        assert bar.startswith(f"{row['level']}: ")
        assert f"in {row['images_covering']} image(s) covering it" in bar


def test_outputs_are_valid_bids(run, bids_validator):
    _, out, _ = run
    report = validate(out)
    assert report.n_errors == 0, report.summary()


def _files(out: Path) -> dict[str, int]:
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_changed_disc_file_redoes_that_sessions_figures_only(run, tmp_path, caplog):
    bids, out0, labels0 = run
    out, labels = tmp_path / "cordlesion", tmp_path / "labels"
    shutil.copytree(out0, out)
    shutil.copytree(labels0, labels)
    caplog.clear()
    assert _run(bids, out, "participant", labels) == 0
    assert "summary: 0 done, 7 up to date, 0 failed" in caplog.text
    before = _files(out)
    edited = _disc_file(labels, T2W.format(s="M0"))        # the rater drops the lowest disc
    img = nib.load(edited)
    data = np.asanyarray(img.dataobj).copy()
    assert (data == data.max()).sum() == 1
    data[data == data.max()] = 0
    nib.save(nib.Nifti1Image(data, img.affine, img.header), edited)
    caplog.clear()
    assert _run(bids, out, "group", labels) == 0            # the group level names what to redo
    assert (f"2 image(s) have disc labels in {labels} that their levels were not computed from: re-run the "
            f"participant level with --disc-labels {labels} (it redoes their figures only, no model): "
            f"{T2S.format(s='M0')} (lesion_ms); {T2W.format(s='M0')} (lesion_ms)") in caplog.text
    before = _files(out)
    caplog.clear()
    assert _run(bids, out, "participant", labels) == 0
    assert "summary: 0 done, 2 figures redone (masks kept), 5 up to date, 0 failed" in caplog.text
    after = _files(out)
    changed = {rel for rel in after if after[rel] != before.get(rel)}
    for source in SOURCES:
        names = _names(source)
        redo = source in (T2W.format(s="M0"), T2S.format(s="M0"))   # the session of the edited file
        assert (names.qc_record in changed) == redo, source
        assert names.mask not in changed and names.probseg not in changed and names.cord not in changed
    assert not any(rel.startswith("group/") for rel in changed)


@pytest.mark.parametrize("case", ["totalspineseg", "off grid", "far from the cord", "two files"])
def test_a_refused_disc_file_leaves_levels_na_with_the_reason(run, tmp_path, caplog, case):
    bids, out0, labels0 = run
    out, labels = tmp_path / "cordlesion", tmp_path / "labels"
    shutil.copytree(out0, out)
    shutil.copytree(labels0, labels)
    source = T2W.format(s="M12")
    bad = _disc_file(labels, source)
    img = nib.load(bad)
    data, affine = np.asanyarray(img.dataobj).astype(np.int16), img.affine.copy()
    if case == "totalspineseg":                  # values in TotalSpineSeg's raw disc range (63-100)
        data[data > 0] += 62
        values = sorted(int(v) for v in np.unique(data[data > 0]))
        expected = (f"{bad}: values {values} are TotalSpineSeg's raw disc labels, not SCT disc values: use "
                    "its step1_levels output (SCT's _totalspineseg_discs), one voxel per disc")
    elif case == "off grid":                     # saved 2 mm away
        affine[:3, 3] += (2.0, 0.0, 0.0)
        expected = (f"{bad}: not on the image's grid: its affine differs from the image's by up to 2 mm "
                    f"(resampled, or saved in another space?); the image: {source} (disc labels are drawn on "
                    "the image itself)")
    elif case == "two files":                    # the same labels under an older spine-generic name too
        other = bad.with_name(bad.name.replace("_label-discs_dlabel", "_labels-disc"))
        shutil.copyfile(bad, other)
        rels = sorted(p.relative_to(labels).as_posix() for p in (bad, other))
        expected = f"{source}: two disc label files for one image ({', '.join(rels)}): keep one"
    else:                                        # every disc moved to the image's front, at its side
        ap, lr = (int(np.argmax(np.abs(affine[row, :3]))) for row in (1, 0))
        moved = np.zeros_like(data)
        for voxel in np.argwhere(data):
            target = voxel.copy()
            target[ap] = data.shape[ap] - 1 if affine[1, ap] > 0 else 0
            target[lr] = 0 if voxel[lr] > data.shape[lr] / 2 else data.shape[lr] - 1
            moved[tuple(target)] = data[tuple(voxel)]
        data = moved
        expected = None
    nib.save(nib.Nifti1Image(data, affine, img.header), bad)
    caplog.clear()
    assert _run(bids, out, "participant", labels) == 0
    names = _names(source)
    reason = json.loads((out / names.qc_record).read_text())["levels"]["error"]
    if expected is None:
        assert re.fullmatch(rf"{re.escape(str(bad))}: disc \S+ \(\d+\) lies \d+\.\d mm from the cord of "
                            rf"{re.escape(source)} \(at most 20 mm: labels of another image, session or "
                            r"subject, or a cord mask that missed the cord\?\)", reason), reason
    else:
        assert reason == expected
    assert "\n" not in reason and f"disc labels refused, its levels are n/a: {reason}" in caplog.text
    assert reason in (out / names.log).read_text()
    assert json.loads((out / names.mask_json).read_text())["Provenance"]["VertebralLevels"]["error"] == reason
    rows = read_tsv((out / names.lesions_tsv).read_text())
    assert rows and {r["vert_level"] for r in rows} == {"n/a"}
    assert (out / names.mask).is_file() and not (out / names.levels).exists()
    assert _run(bids, out, "group", labels) == 0
    levels = [r for r in _group_rows(out, "lesion_levels.tsv") if r["session_id"] == "ses-M12"
              and r["contrast"] == "T2w"]
    assert levels and {r["lesion_volume_mm3"] for r in levels} == {"n/a"}


def test_disc_labels_need_the_cord_masks(run, tmp_path, caplog):
    bids, _, labels = run
    assert _run(bids, tmp_path / "out", "participant", labels, "--no-cord") == 64
    assert "--disc-labels needs the cord masks (their centreline carries the levels): drop --no-cord" \
        in caplog.text
    assert _run(bids, tmp_path / "out", "participant", tmp_path / "missing") == 66
    assert f"{tmp_path / 'missing'}: --disc-labels is not a folder" in caplog.text


def test_a_rerun_without_disc_labels_takes_the_levels_away(run, tmp_path, caplog):
    bids, out0, _ = run
    out = tmp_path / "cordlesion"
    shutil.copytree(out0, out)
    config = tmp_path / "routing.json"
    config.write_text(json.dumps(ROUTING))
    caplog.clear()
    assert main([str(bids), str(out), "participant", "--demo", "--config", str(config),
                 "--skip_bids_validator", "--nprocs", "1", "--omp-nthreads", "1"]) == 0
    assert "summary: 0 done, 7 figures redone (masks kept), 0 up to date, 0 failed" in caplog.text
    for source in SOURCES:
        names = _names(source)
        assert not (out / names.levels).exists() and not (out / names.levels_json).exists()
        assert "vert_level" not in (out / names.lesions_tsv).read_text().splitlines()[0].split("\t")
        assert "levels" not in json.loads((out / names.qc_record).read_text())
        prov = json.loads((out / names.mask_json).read_text())["Provenance"]
        assert "Discs" not in prov["FiguresState"] and "VertebralLevels" not in prov
