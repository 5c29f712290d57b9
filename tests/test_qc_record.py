"""QC records: schema-valid for ok and failed images, entities exact, paths relative."""
from __future__ import annotations

import json

import jsonschema
import pytest

from bidsapp.metrics import LesionStats
from bidsapp.qc import QcJob, build_record, parse_entities, qc_names, record_validator

SRC = "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_run-01_T2w.nii.gz"


def test_ok_record_carries_stats_and_paths():
    stats = LesionStats(count=2, total_mm3=30.0, volumes_mm3=[20.0, 10.0])
    names = qc_names(SRC, "lesion_ms")
    job = QcJob(SRC, "lesion_ms", "r20250101", False, runtime_s=12.34567,
                outputs={"mask": "sub-01/ses-M0/anat/x_mask.nii.gz"})
    rec = build_record(job, stats=stats, figures={"axial": names["axial"]})
    assert rec["entities"] == {"sub": "01", "ses": "M0", "acq": "sag", "run": "01", "suffix": "T2w"}
    assert rec["lesions"] == {"count": 2, "total_mm3": 30.0, "largest_mm3": 20.0, "volumes_mm3": [20.0, 10.0]}
    assert (rec["status"], rec["error"], rec["runtime_s"]) == ("ok", None, 12.346)
    assert rec["model"] == {"release": "r20250101", "demo": False}
    assert names["axial"] == "sub-01/figures/sub-01_ses-M0_acq-sag_run-01_T2w_desc-lesionms_axial.png"
    assert names["record"] == "sub-01/figures/sub-01_ses-M0_acq-sag_run-01_T2w_desc-lesionms_qc.json"
    json.dumps(rec)                                   # plain JSON types only


def test_failed_record_has_error_and_no_lesions():
    job = QcJob("sub-02/anat/sub-02_UNIT1.nii.gz", "lesion_ms_mp2rage", None, True, runtime_s=0.5)
    rec = build_record(job, status="failed", error="sub-02_UNIT1.nii.gz: image contains NaN",
                       stats=LesionStats(1, 1.0, [1.0]))
    assert (rec["status"], rec["lesions"]) == ("failed", None)
    assert rec["error"] == "sub-02_UNIT1.nii.gz: image contains NaN"
    assert rec["entities"] == {"sub": "02", "suffix": "UNIT1"}


@pytest.mark.parametrize("kwargs", [
    {"status": "ok"},                                             # ok without stats
    {"status": "failed"},                                         # failed without error
    {"status": "crashed", "error": "x"},                          # unknown status
    {"status": "ok", "stats": LesionStats(0, 0.0, []), "outputs": {"mask": "/abs/mask.nii.gz"}},
    {"status": "ok", "stats": LesionStats(0, 0.0, []), "figures": {"axial": "../elsewhere.png"}},
])
def test_inconsistent_records_are_refused(kwargs):
    with pytest.raises(jsonschema.ValidationError):
        outputs = kwargs.pop("outputs", {})
        build_record(QcJob(SRC, "lesion_ms", "r1", False, outputs=outputs), **kwargs)


def test_schema_is_valid_and_entities_parse_exactly():
    record_validator()  # check_schema ran
    assert parse_entities("sub-<script>_T2w.nii.gz") == {"sub": "<script>", "suffix": "T2w"}
    assert parse_entities("sub-ABC_ses-01_rec-x1_chunk-2_T2starw.nii.gz") == {
        "sub": "ABC", "ses": "01", "rec": "x1", "chunk": "2", "suffix": "T2starw"}
