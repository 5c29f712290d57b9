"""Participant-level QC writing: pictures then record, failed images get a record too."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from bidsapp.qc import VIEWS, QcJob, qc_names, record_validator, write_image_qc

SRC = "sub-07/ses-M0/anat/sub-07_ses-M0_T2w.nii.gz"


def _images():
    data = np.zeros((20, 20, 10), np.float32)
    data[8:12, 8:12] = 100
    mask = np.zeros(data.shape, np.uint8)
    mask[9:11, 9:11, 4:6] = 1
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    return nib.Nifti1Image(data, affine), nib.Nifti1Image(mask, affine)


def test_ok_image_writes_every_view_and_a_valid_record(tmp_path):
    img, mask = _images()
    (tmp_path / "sub-07/ses-M0/anat").mkdir(parents=True)
    (tmp_path / "sub-07/ses-M0/anat/m_mask.nii.gz").write_bytes(b"x")
    job = QcJob(SRC, "lesion_ms", "r1", False, runtime_s=2.0,
                outputs={"mask": "sub-07/ses-M0/anat/m_mask.nii.gz",
                         "probseg": "sub-07/ses-M0/anat/m_probseg.nii.gz"})
    rec = write_image_qc(tmp_path, job, image=img, mask=mask)
    names = qc_names(SRC, "lesion_ms")
    on_disk = json.loads((tmp_path / names["record"]).read_text())
    record_validator().validate(on_disk)
    assert on_disk == rec
    assert rec["outputs"] == {"mask": "sub-07/ses-M0/anat/m_mask.nii.gz"}   # probseg not written: not listed
    assert set(rec["figures"]) == set(VIEWS)
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in rec["figures"].values())
    assert rec["lesions"]["count"] == 1 and rec["lesions"]["total_mm3"] == 8 * 0.5 * 0.5 * 2.0
    assert not list(tmp_path.rglob(".*.tmp*"))                              # no temp files left


def test_failed_image_gets_a_failed_record_and_no_pictures(tmp_path):
    rec = write_image_qc(tmp_path, QcJob(SRC, "lesion_ms", None, True, runtime_s=0.1),
                         error="sub-07_ses-M0_T2w.nii.gz: not a NIfTI file")
    assert (rec["status"], rec["error"], rec["lesions"], rec["figures"]) == \
        ("failed", "sub-07_ses-M0_T2w.nii.gz: not a NIfTI file", None, {})
    assert sorted(p.name for p in (tmp_path / "sub-07/figures").iterdir()) == \
        ["sub-07_ses-M0_T2w_desc-lesionms_qc.json"]


def test_picture_failure_keeps_the_image_ok(tmp_path):
    img, mask = _images()
    cord = nib.Nifti1Image(np.zeros((3, 3, 3), np.uint8), np.eye(4))          # wrong grid: cannot draw
    rec = write_image_qc(tmp_path, QcJob(SRC, "lesion_ms", "r1", False, runtime_s=1.0), image=img, mask=mask,
                         cord=cord)
    assert rec["status"] == "ok" and rec["lesions"]["count"] == 1
    assert rec["figures"] == {} and "cord mask shape" in rec["qc_error"]
