"""The group level's side of the manual-correction loop (issue 24): the mask sources in lesions.tsv, the model
masks laid out for manual_correction.py's -path-label, the QC page's qc_fail.yml read the way
spinalcordtoolbox/manual-correction's manual_correction.py reads its -config, and the page's lesion-load
trajectories with the corrected images marked."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from components import missing

from bidsapp.corrections import LABELS_DIR, LESION, find_candidates, load_correction
from bidsapp.demo.phantom import Grid, make_anatomy, make_phantom
from bidsapp.derivatives import atomic_save_nifti, image_names, sha256_file
from bidsapp.errors import CorrectionError
from bidsapp.group import run_group
from bidsapp.qc import QcJob, write_image_qc

HARNESS = Path(__file__).with_name("qc_page_node.js")
# manual_correction.py's suffix_dict keys: the config keys it acts on (other FILES_* keys: skipped, warned)
CONFIG_KEYS = {"FILES_SEG", "FILES_GMSEG", "FILES_LESION", "FILES_LABEL", "FILES_COMPRESSION", "FILES_PMJ",
               "FILES_ROOTLETS", "FILES_CENTERLINE"}
IMAGES = {  # source -> (lesions?, figures from a corrected mask?)
    "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_T2w.nii.gz": (True, False),
    "sub-01/ses-M12/anat/sub-01_ses-M12_acq-sag_T2w.nii.gz": (True, True),
    "sub-02/anat/sub-02_T2w.nii.gz": (False, False),
}
FAILED = "sub-03/anat/sub-03_T2w.nii.gz"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """BIDS images, their model masks and QC records in output_dir (one image's figures from a corrected
    mask, one failed run), a labels folder, and the group level run once."""
    root = tmp_path_factory.mktemp("loop")
    bids, out, labels = root / "bids", root / "out", root / "labels"
    for i, (source, (lesions, corrected)) in enumerate(sorted(IMAGES.items()) + [(FAILED, (True, False))]):
        rng = np.random.default_rng(40 + i)
        ph = make_phantom("T2w", rng=rng, anatomy=make_anatomy(rng, n_lesions=2 if lesions else 0),
                          grid=Grid(voxel_size=(0.8, 0.8, 2.0)))
        (bids / source).parent.mkdir(parents=True, exist_ok=True)
        nib.save(ph.image, bids / source)
        if source == FAILED:
            write_image_qc(out, QcJob(source, "lesion_ms", "demo", True, runtime_s=0.1),
                           error=f"{bids / source}: the worker process died")
            continue
        names = image_names(source, "lesion_ms")
        atomic_save_nifti(ph.lesion, out / names.mask)
        atomic_save_nifti(ph.cord, out / names.cord)
        source_block = {"mask": {"source": "model"}, "cord": {"source": "model"}, "refused": [], "notes": []}
        if corrected:
            fixed = labels / Path(source).parent / (Path(source).name[:-7] + "_lesion-manual.nii.gz")
            fixed.parent.mkdir(parents=True)
            nib.save(ph.lesion, fixed)
            source_block["mask"] = {"source": "manual", "path": str(fixed), "sha256": sha256_file(fixed),
                                    "author": "Ada Lovelace", "date": "2025-02-03 04:05:06"}
        write_image_qc(out, QcJob(source, "lesion_ms", "demo", True, runtime_s=1.0,
                                  outputs={"mask": names.mask, "cord": names.cord}, mask_source=source_block),
                       image=ph.image, mask=ph.lesion, cord=ph.cord)
    (out / "dataset_description.json").write_text(json.dumps({"Name": "loop study"}))
    assert run_group(out, bids) == 0
    return bids, out, labels


def test_lesions_tsv_says_what_each_image_was_measured_on(study):
    _, out, labels = study
    with open(out / "group/lesions.tsv", newline="") as fh:
        rows = {r["source"]: r for r in csv.DictReader(fh, delimiter="\t")}
    fixed = labels / "sub-01/ses-M12/anat/sub-01_ses-M12_acq-sag_T2w_lesion-manual.nii.gz"
    assert [rows[s]["mask_source"] for s in sorted(IMAGES)] == ["model", "manual", "model"]
    corrected = rows["sub-01/ses-M12/anat/sub-01_ses-M12_acq-sag_T2w.nii.gz"]
    assert (corrected["manual_mask"], corrected["manual_mask_sha256"], corrected["manual_mask_author"],
            corrected["manual_mask_date"], corrected["cord_source"], corrected["manual_cord"]) == \
        (str(fixed), sha256_file(fixed), "Ada Lovelace", "2025-02-03 04:05:06", "model", "n/a")
    assert (rows[FAILED]["mask_source"], rows[FAILED]["status"]) == ("n/a", "failed")
    dictionary = json.loads((out / "group/lesions.json").read_text())
    assert set(dictionary["mask_source"]["Levels"]) == {"model", "manual"}


def test_model_masks_are_laid_out_for_manual_correction_and_are_not_corrections(study):
    _, out, _ = study
    for source in IMAGES:
        names = image_names(source, "lesion_ms")
        stem = Path(source).name[: -len(".nii.gz")]
        lesion = out / LABELS_DIR / Path(source).parent / f"{stem}_lesion-manual.nii.gz"
        cord = lesion.with_name(f"{stem}_seg-manual.nii.gz")
        assert lesion.read_bytes() == (out / names.mask).read_bytes()
        assert cord.read_bytes() == (out / names.cord).read_bytes()
        sidecar = json.loads(lesion.with_name(f"{stem}_lesion-manual.json").read_text())
        assert sidecar["GeneratedBy"][0]["Name"] == "cordlesion"
        # pointed at by mistake as the corrections folder, they are refused, with the reason
        files = find_candidates(out / LABELS_DIR, source, [LESION]).files["lesion"]
        with pytest.raises(CorrectionError, match="written by cordlesion"):
            load_correction(LESION, files, nib.load(out / names.mask), source)
    assert not (out / LABELS_DIR / "sub-03").exists()                 # a failed run has no mask to offer
    before = {p: p.stat().st_mtime_ns for p in (out / LABELS_DIR).rglob("*") if p.is_file()}
    assert run_group(out, study[0]) == 0                                # unchanged: not rewritten
    assert before == {p: p.stat().st_mtime_ns for p in (out / LABELS_DIR).rglob("*") if p.is_file()}


def _page(out: Path, ratings: dict[str, str]) -> dict:
    if shutil.which("node") is None:
        missing("node", "not found: the QC page's script is run under node where no browser is installed")
    proc = subprocess.run(["node", str(HARNESS), str(out / "qc/index.html"), json.dumps(ratings)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _records(out: Path) -> dict[str, str]:
    """source -> the page's key of its record (the QC record's path)."""
    return {json.loads(p.read_text())["source"]: p.relative_to(out).as_posix()
            for p in out.glob("sub-*/figures/*_qc.json")}


def test_the_export_is_a_config_manual_correction_reads_as_it_is(study):
    bids, out, _ = study
    rec = _records(out)
    ratings = {rec["sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_T2w.nii.gz"]: "fail",
               rec["sub-01/ses-M12/anat/sub-01_ses-M12_acq-sag_T2w.nii.gz"]: "pass",
               rec["sub-02/anat/sub-02_T2w.nii.gz"]: "cord"}
    text = _page(out, ratings)["yaml"]
    config = yaml.safe_load(text)                                       # utils.fetch_yaml_config
    assert config == {"FILES_LESION": ["sub-01_ses-M0_acq-sag_T2w.nii.gz", "sub-03_T2w.nii.gz"],
                      "FILES_SEG": ["sub-02_T2w.nii.gz"]}
    assert set(config) <= CONFIG_KEYS
    path_label = out / LABELS_DIR
    for key, files in config.items():
        suffix = {"FILES_LESION": "_lesion-manual", "FILES_SEG": "_seg-manual"}[key]
        assert isinstance(files, list) and files and all(isinstance(f, str) for f in files)  # [] stops it
        for file in files:
            assert os.path.basename(file) == file                       # utils.curate_dict_yml
            # utils.fetch_subject_and_session: sub-/ses- by regex, 'anat' unless 'dwi' is in the name
            subject = re.search("sub-(.*?)[_/]", file).group(0)[:-1]
            session = m.group(0)[:-1] if (m := re.search("ses-(.*?)[_/]", file)) else ""
            assert (bids / subject / session / "anat" / file).is_file()  # -path-img
            label = path_label / subject / session / "anat" / (file[: -len(".nii.gz")] + suffix + ".nii.gz")
            assert label.is_file() == (file != "sub-03_T2w.nii.gz")     # utils.add_suffix under -path-label
    assert f"-path-label {out.absolute()}/group/labels" in text and f"-path-img {bids}" in text
    assert "--participant_label 03" in text                             # the failed run is re-run


def test_nothing_to_correct_is_an_empty_mapping(study):
    _, out, _ = study
    shutil.copytree(out, out.parent / "none")
    records = list((out.parent / "none").glob("sub-03/figures/*_qc.json"))
    for path in records:
        path.unlink()
    assert run_group(out.parent / "none") == 0
    assert yaml.safe_load(_page(out.parent / "none", {})["yaml"]) == {}


def test_trajectories_show_each_series_across_sessions_with_corrections_marked(study):
    _, out, _ = study
    plots = _page(out, {})["plots"]
    assert [p["caption"] for p in plots] == ["Lesion count per session",
                                             "Total lesion volume per session (mm\u00b3, log scale)"]
    for plot in plots:
        assert plot["lines"] == 1                                       # sub-01's two sessions
        assert [(m["manual"], m["title"].split(":")[0]) for m in plot["marks"]] == [
            (False, "sub-01 T2w acq-sag lesion_ms ses-M0"), (True, "sub-01 T2w acq-sag lesion_ms ses-M12")]
        assert plot["marks"][1]["title"].endswith("(corrected mask)")
