"""The study's lesion load by level (``analysis.level_tables``) from hand-made QC records: ``n/a`` outside an
image's field of view and for an image without levels, sums, the summary; expected values worked out by
hand."""
from __future__ import annotations

import json

from bidsapp.analysis.level_tables import level_rows, summary_rows, write_level_tables
from bidsapp.analysis.tables import read_tsv


def _record(covered, volume, count, error=None, status="ok"):
    return {"status": status, "levels": {"covered": covered, "source": "x", "drawn_on": "x", "shared": False,
                                         "error": error, "volume_mm3": volume, "count": count,
                                         "unlevelled_mm3": 0.0, "files": {}}}


KEYS_A = {"participant_id": "sub-01", "session_id": None, "acquisition": "sag", "run": None,
          "contrast": "T2w", "task": "lesion_ms"}
KEYS_B = {**KEYS_A, "participant_id": "sub-02"}
KEYS_C = {**KEYS_A, "participant_id": "sub-03"}
IMAGES = [
    (KEYS_A, _record(["C2", "C3", "C4"], {"C3": 10.0, "C4": 2.5}, {"C3": 1})),  # a lesion over C3/C4
    (KEYS_B, _record(["C4", "C5"], {"C5": 4.0}, {"C5": 2})),
    (KEYS_C, _record([], {}, {}, error="discs.nii.gz: no disc label (every voxel is 0)")),
]


def test_rows_are_na_outside_the_field_of_view_and_sum_to_each_image():
    rows = level_rows(IMAGES)
    assert [r["level"] for r in rows[:4]] == ["C2", "C3", "C4", "C5"]       # the study's levels, C2 first
    table = {(r["participant_id"], r["level"]): (r["lesion_count"], r["lesion_volume_mm3"]) for r in rows}
    assert table == {
        ("sub-01", "C2"): (0, 0.0), ("sub-01", "C3"): (1, 10.0), ("sub-01", "C4"): (0, 2.5),
        ("sub-01", "C5"): (None, None),
        ("sub-02", "C2"): (None, None), ("sub-02", "C3"): (None, None), ("sub-02", "C4"): (0, 0.0),
        ("sub-02", "C5"): (2, 4.0),
        ("sub-03", "C2"): (None, None), ("sub-03", "C3"): (None, None), ("sub-03", "C4"): (None, None),
        ("sub-03", "C5"): (None, None),
    }


def test_summary_counts_covering_images_and_load_per_image():
    summary = {r["level"]: r for r in summary_rows(level_rows(IMAGES))}
    assert summary["C4"] == {"level": "C4", "images_covering": 2, "images_with_lesion": 1, "lesion_count": 0,
                             "lesion_volume_mm3": 2.5, "volume_per_covering_image_mm3": 1.25}
    assert summary["C2"]["images_covering"] == 1 and summary["C2"]["volume_per_covering_image_mm3"] == 0
    assert summary["C5"]["lesion_count"] == 2 and summary["C3"]["lesion_volume_mm3"] == 10.0


def test_written_only_with_levels(tmp_path):
    assert write_level_tables(tmp_path, [(KEYS_A, {"status": "ok"})]) == []
    assert not (tmp_path / "group").exists()
    write_level_tables(tmp_path, IMAGES)
    rows = read_tsv((tmp_path / "group/lesion_levels.tsv").read_text())
    assert rows[3] == {"participant_id": "sub-01", "session_id": "n/a", "acquisition": "sag", "run": "n/a",
                       "contrast": "T2w", "task": "lesion_ms", "level": "C5", "lesion_count": "n/a",
                       "lesion_volume_mm3": "n/a"}
    dictionary = json.loads((tmp_path / "group/lesion_levels.json").read_text())
    assert list(dictionary) == list(rows[0]) and dictionary["level"]["Levels"]["T1"] == "vertebra T1"
    summary = read_tsv((tmp_path / "group/levels_summary.tsv").read_text())
    assert summary[2]["volume_per_covering_image_mm3"] == "1.25"


def test_a_failed_image_is_na_everywhere():
    rows = level_rows([IMAGES[0], (KEYS_B, _record(["C3"], {"C3": 9.0}, {"C3": 1}, status="failed"))])
    assert {r["lesion_count"] for r in rows if r["participant_id"] == "sub-02"} == {None}
