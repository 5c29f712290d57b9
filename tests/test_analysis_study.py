"""Study tables from participant-level outputs: the per-lesion table, change tables, counts, reuse."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from analysis_phantoms import two_sessions

from bidsapp.analysis import analyze_lesions, lesion_labels
from bidsapp.analysis.study import COUNTS_PATH, PER_LESION_PATH, read_counts, write_study
from bidsapp.analysis.tables import LESION_DICTIONARY, lesion_tsv, read_tsv
from bidsapp.derivatives import image_names

SOURCES = {"M0": "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_T2w.nii.gz",
           "M12": "sub-01/ses-M12/anat/sub-01_ses-M12_acq-sag_T2w.nii.gz"}


def _record(ses: str) -> dict:
    return {"status": "ok", "task": "lesion_ms", "source": SOURCES[ses], "lesions": {"count": 1},
            "entities": {"sub": "01", "ses": ses, "acq": "sag", "suffix": "T2w"}}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A BIDS folder with the two sessions' images, an output folder with their masks and tables."""
    s = two_sessions()
    bids, out = tmp_path_factory.mktemp("bids"), tmp_path_factory.mktemp("out")
    for ses, (image, mask) in {"M0": (s.baseline_image, s.baseline_mask),
                               "M12": (s.followup_image, s.followup_mask)}.items():
        (bids / SOURCES[ses]).parent.mkdir(parents=True, exist_ok=True)
        nib.save(image, bids / SOURCES[ses])
        names = image_names(SOURCES[ses], "lesion_ms")
        (out / names.mask).parent.mkdir(parents=True, exist_ok=True)
        nib.save(mask, out / names.mask)
        (out / names.lesions_tsv).write_text(lesion_tsv(analyze_lesions(mask)))
    records = [_record("M0"), _record("M12"),
               {**_record("M0"), "status": "failed", "source": "sub-02/anat/sub-02_T2w.nii.gz"}]
    result = write_study(out, bids, records)
    return s, bids, out, records, result


def test_per_lesion_table_has_every_lesion_keyed_by_image(study):
    s, _, out, _, result = study
    rows = read_tsv((out / PER_LESION_PATH).read_text())
    n0 = analyze_lesions(s.baseline_mask).count
    n12 = analyze_lesions(s.followup_mask).count
    assert result.lesion_rows == len(rows) == n0 + n12
    assert [r["session_id"] for r in rows] == ["ses-M0"] * n0 + ["ses-M12"] * n12
    assert {r["source"] for r in rows} == set(SOURCES.values())
    dictionary = json.loads((out / PER_LESION_PATH).with_suffix(".json").read_text())
    assert set(LESION_DICTIONARY) | {"participant_id", "session_id", "source"} <= set(dictionary)


def test_counts_and_change_table(study):
    _, _, out, _, result = study
    (row,) = read_counts(out)
    assert (row["participant_id"], row["baseline_session"], row["followup_session"]) == \
        ("sub-01", "ses-M0", "ses-M12")
    assert (row["new"], row["enlarged"], row["stable"], row["disappeared"]) == ("1", "1", "2", "0")
    assert float(row["registration_ncc"]) > 0.9 and row["error"] == "n/a"
    change = read_tsv((out / row["change_table"]).read_text())
    assert sorted(r["status"] for r in change) == ["enlarged", "new", "stable", "stable"]
    statuses = result.statuses[(SOURCES["M12"], "lesion_ms")]
    assert sorted(statuses.values()) == ["enlarged", "new", "stable", "stable"]
    assert result.pairs == 1 and not result.failed_pairs
    assert (out / COUNTS_PATH).with_suffix(".json").is_file()


def test_up_to_date_pair_is_not_registered_again(study, monkeypatch):
    s, bids, out, records, _ = study
    import bidsapp.analysis.study as mod

    def boom(*args, **kwargs):
        raise AssertionError("registered again")
    monkeypatch.setattr(mod, "analyze_change", boom)
    again = write_study(out, bids, records)
    assert again.statuses == write_study(out, bids, records).statuses
    assert read_counts(out)[0]["new"] == "1"


def test_missing_source_image_is_a_row_with_its_error(study, tmp_path):
    _, _, out, records, _ = study
    result = write_study(out, tmp_path, records)  # a BIDS folder without the images
    (row,) = read_counts(out)
    assert row["new"] == "n/a" and "sub-01_ses-M12_acq-sag_T2w.nii.gz" in row["error"]
    assert result.pairs == 0 and len(result.failed_pairs) == 1


def test_page_lesions_mark_the_follow_up_statuses(study):
    from bidsapp.analysis.study import page_lesions

    s, _, out, records, _ = study
    result = write_study(out, study[1], records)
    page = page_lesions(out, [(r["source"], r) for r in records], result)
    assert set(page) == set(SOURCES.values())  # the failed image has no table
    assert all(les["st"] is None for les in page[SOURCES["M0"]])  # a baseline: no status
    assert sorted(les["st"] for les in page[SOURCES["M12"]]) == ["enlarged", "new", "stable", "stable"]
    direct = analyze_lesions(s.followup_mask).lesions
    volumes = [les["vol"] for les in page[SOURCES["M12"]]]
    assert volumes == pytest.approx([r.volume_mm3 for r in direct], abs=1e-3)


def test_change_uses_the_corrected_masks_the_records_name(study, tmp_path):
    """Issue 24: a follow-up whose figures were measured on a corrected mask is compared on that mask; the
    tables say so; a corrected file changed since the participant level stops that pair, with the fix."""
    import shutil

    from bidsapp.analysis import SessionInputs, analyze_change
    from bidsapp.analysis.tables import change_tsv
    from bidsapp.derivatives import sha256_file
    from bidsapp.imaging import like

    s, bids, _, records, _ = study
    out = tmp_path / "out"
    shutil.copytree(study[2], out)
    # the rater removed the new lesion: the corrected follow-up is the follow-up without it
    data = np.asarray(s.followup_mask.dataobj) > 0
    labels = lesion_labels(s.followup_mask)
    new = [r.lesion_id for r in analyze_lesions(s.followup_mask).lesions][-1]
    fixed = tmp_path / "labels" / "sub-01_ses-M12_acq-sag_T2w_lesion-manual.nii.gz"
    fixed.parent.mkdir()
    nib.save(like(s.followup_mask, (data & (labels != new)).astype(np.uint8), np.uint8), fixed)
    manual = {"source": "manual", "path": str(fixed), "sha256": sha256_file(fixed), "author": "A",
              "date": "D"}
    corrected = [r if r["source"] != SOURCES["M12"] else
                 {**r, "mask_source": {"mask": manual, "cord": None, "refused": [], "notes": []}}
                 for r in records]
    write_study(out, bids, corrected)
    (row,) = read_counts(out)
    sources = (row["followup_mask_source"], row["baseline_mask_source"], row["error"])
    assert sources == ("manual", "model", "n/a")
    direct = analyze_change(SessionInputs(nib.load(fixed), nib.load(bids / SOURCES["M12"]),
                                          s.baseline_mask, nib.load(bids / SOURCES["M0"])))
    text = (out / row["change_table"]).read_text()
    assert text == change_tsv(direct, {"mask_source": "manual", "baseline_mask_source": "model"})
    assert row["new"] == "0" and direct.count("new") == 0
    nib.save(like(s.followup_mask, data.astype(np.uint8), np.uint8), fixed)   # edited after the run
    result = write_study(out, bids, corrected)
    (row,) = read_counts(out)
    assert row["new"] == "n/a" and row["error"] == (
        f"{fixed}: corrected lesion mask changed or missing since the participant level: re-run the "
        "participant level with --corrections")
    assert result.failed_pairs
