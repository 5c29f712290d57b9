"""TSV cells, the group join and the data dictionaries."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bidsapp.analysis import ChangeRules, LesionMeasures
from bidsapp.analysis.change import STATUSES, LesionChange
from bidsapp.analysis.tables import (
    LESION_DICTIONARY,
    change_dictionary,
    combine_tables,
    format_value,
    read_tsv,
    tsv,
)


@pytest.mark.parametrize("value,text", [
    (None, "n/a"), (math.nan, "n/a"), (3, "3"), (np.int64(7), "7"), (1.0, "1"), (0.123456, "0.1235"),
    (-1e-9, "0"), (np.float64(57.25), "57.25"), (True, "true"), ("a\tb", "a b"),
])
def test_cells(value, text):
    assert format_value(value) == text


def test_combine_prefixes_keys_and_maps_other_columns():
    one = tsv(["lesion_id", "volume_mm3"], [{"lesion_id": 1, "volume_mm3": 2.5}, {"lesion_id": 2}])
    empty = tsv(["lesion_id", "volume_mm3"], [])
    text = combine_tables([(("sub-01", "ses-1"), one), (("sub-02", "n/a"), empty), (("sub-03", None), one)],
                          ("participant_id", "session_id"))
    rows = read_tsv(text)
    assert text.splitlines()[0] == "participant_id\tsession_id\tlesion_id\tvolume_mm3"
    assert [(r["participant_id"], r["session_id"], r["lesion_id"], r["volume_mm3"]) for r in rows] == [
        ("sub-01", "ses-1", "1", "2.5"), ("sub-01", "ses-1", "2", "n/a"),
        ("sub-03", "n/a", "1", "2.5"), ("sub-03", "n/a", "2", "n/a")]
    # a table of another release (fewer columns, or more) lands on the union of the columns, n/a where absent
    newer = tsv(["lesion_id", "volume_mm3", "mask_source"],
                [{"lesion_id": 1, "volume_mm3": 4, "mask_source": "manual"}])
    mixed = read_tsv(combine_tables([(("sub-01",), one), (("sub-09",), newer)], ("participant_id",)))
    assert [(r["participant_id"], r["volume_mm3"], r["mask_source"]) for r in mixed] == [
        ("sub-01", "2.5", "n/a"), ("sub-01", "n/a", "n/a"), ("sub-09", "4", "manual")]
    nothing = combine_tables([], ("participant_id",))
    assert nothing.splitlines() == ["participant_id\t" + "\t".join(LesionMeasures.columns())]


def test_dictionaries_cover_every_column():
    assert list(LESION_DICTIONARY) == LesionMeasures.columns()
    for name, entry in LESION_DICTIONARY.items():
        assert entry["LongName"] and entry["Description"]
        assert ("Units" in entry) == name.endswith(("_mm", "_mm3")), name  # units named in the column
    d = change_dictionary(ChangeRules(min_new_volume_mm3=5.0))
    assert set(LesionChange.columns()) <= set(d)
    assert set(d["status"]["Levels"]) == set(STATUSES)
    assert "5.0" in d["status"]["Description"] and d["Thresholds"]["Defaults"]["min_new_volume_mm3"] == 3.0
