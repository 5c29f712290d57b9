"""python -m bidsapp.analyze: tables, data dictionaries, registration record, exit codes."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from analysis_phantoms import TubeLesion, tube_phantom, two_sessions

from bidsapp.analysis import LesionMeasures, analyze_lesions
from bidsapp.analysis.change import LesionChange
from bidsapp.analysis.tables import read_tsv
from bidsapp.analyze import main

INSIDE = TubeLesion(u=0.0, v=1.0, s=0.0, a=2.0, b=1.5, c=5.0)
OUTSIDE = TubeLesion(u=9.0, v=9.0, s=-15.0, a=1.5, b=1.5, c=2.0)


@pytest.fixture
def tube_files(tmp_path):
    tube = tube_phantom((INSIDE, OUTSIDE), tilt_deg=10.0, orientation=("L", "A", "S"))
    nib.save(tube.mask, tmp_path / "lesion.nii.gz")
    nib.save(tube.cord, tmp_path / "cord.nii.gz")
    return tmp_path, tube


def test_table_and_dictionary(tube_files):
    folder, tube = tube_files
    out = folder / "out" / "lesions.tsv"
    out.parent.mkdir()
    assert main(["-m", str(folder / "lesion.nii.gz"), "-s", str(folder / "cord.nii.gz"), "-o", str(out)]) == 0
    rows = read_tsv(out.read_text())
    header = out.read_text().splitlines()[0].split("\t")
    assert header == LesionMeasures.columns()
    dictionary = json.loads(out.with_suffix(".json").read_text())
    assert set(dictionary) == set(header)
    assert all({"LongName", "Description"} <= set(v) for v in dictionary.values())
    assert dictionary["volume_mm3"]["Units"] == "mm^3"
    direct = analyze_lesions(tube.mask, tube.cord)
    assert [float(r["volume_mm3"]) for r in rows] == pytest.approx([d.volume_mm3 for d in direct.lesions],
                                                                   abs=1e-4)
    assert sorted(r["inside_cord_fraction"] for r in rows) == ["0", "1"]


def test_without_cord_columns_are_na_and_drop_needs_cord(tube_files):
    folder, _ = tube_files
    assert main(["-m", str(folder / "lesion.nii.gz")]) == 0
    rows = read_tsv((folder / "lesion_lesions.tsv").read_text())
    assert {r["max_axial_damage_ratio"] for r in rows} == {"n/a"}
    assert {r["dorsal_bridge_width_mm"] for r in rows} == {"n/a"}
    assert all(r["length_mm"] != "n/a" for r in rows)
    assert main(["-m", str(folder / "lesion.nii.gz"), "--drop-outside-cord"]) == 64


def test_drop_outside_cord(tube_files):
    folder, _ = tube_files
    out = folder / "kept.tsv"
    assert main(["-m", str(folder / "lesion.nii.gz"), "-s", str(folder / "cord.nii.gz"), "-o", str(out),
                 "--drop-outside-cord"]) == 0
    rows = read_tsv(out.read_text())
    assert len(rows) == 1 and rows[0]["inside_cord_fraction"] == "1"


def test_errors_are_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 3, np.uint8), np.eye(4)), bad)
    assert main(["-m", str(bad)]) == 65
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "not binary" in err
    assert main(["-m", str(tmp_path / "missing.nii.gz")]) == 66
    assert str(tmp_path / "missing.nii.gz") in capsys.readouterr().err
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8bnot really gzip")
    assert main(["-m", str(broken)]) == 65
    assert str(broken) in capsys.readouterr().err
    assert main(["-m", str(bad), "--baseline-mask", str(bad)]) == 64
    assert main(["-m", str(bad), "-o", str(tmp_path / "x.csv")]) == 64


def test_change_table_transform_and_quality(tmp_path):
    s = two_sessions()
    names = {}
    for key in ("baseline_image", "baseline_mask", "followup_image", "followup_mask"):
        names[key] = tmp_path / f"{key}.nii.gz"
        nib.save(getattr(s, key), names[key])
    out = tmp_path / "change.tsv"
    code = main(["-m", str(names["followup_mask"]), "-i", str(names["followup_image"]),
                 "--baseline-mask", str(names["baseline_mask"]),
                 "--baseline-image", str(names["baseline_image"]),
                 "-o", str(out), "--enlarge-relative", "0.4"])
    assert code == 0
    text = out.read_text()
    assert text.splitlines()[0].split("\t") == LesionChange.columns()
    assert sorted(r["status"] for r in read_tsv(text)) == ["enlarged", "new", "stable", "stable"]
    dictionary = json.loads(out.with_suffix(".json").read_text())
    assert dictionary["Thresholds"]["enlarge_relative"] == 0.4
    assert dictionary["Thresholds"]["Defaults"]["enlarge_relative"] == 0.5
    assert set(dictionary["status"]["Levels"]) >= {"new", "enlarged", "stable", "shrunk", "disappeared"}
    record = json.loads((tmp_path / "change_registration.json").read_text())
    assert record["Counts"] == {"new": 1, "enlarged": 1, "stable": 2, "shrunk": 0, "disappeared": 0}
    assert record["NormalizedCrossCorrelation"] > 0.9 and record["CordDice"] is None
    truth = np.linalg.inv(s.motion)
    assert np.abs(np.array(record["FollowupToBaselineRAS"])[:3, :3] - truth[:3, :3]).max() < 0.02
    import SimpleITK as sitk
    tfm = sitk.ReadTransform(str(tmp_path / "change.tfm"))
    assert np.allclose(tfm.GetParameters(), record["Parameters"])
