"""Our mask and soft-map headers are SCT 7.3's (``imaging.like_sct``): qform and sform both the input's best
affine, each with the input's code or 2 where the input had none (nibabel's ``set_qform``/``set_sform`` with
``code=None``, as SCT's ``change_orientation`` calls them). Expected values written out by hand."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bidsapp.imaging import like_sct

SFORM = np.array([[-0.8, 0, 0, 30.0], [0, 0.8, 0, -20.0], [0, 0, 2.4, 5.0], [0, 0, 0, 1]])
QFORM = np.array([[-0.8, 0, 0, 31.0], [0, 0.8, 0, -20.0], [0, 0, 2.4, 5.0], [0, 0, 0, 1]])  # 1 mm off in x


def _img(qcode: int, scode: int) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), None)
    img.header.set_qform(QFORM, qcode)
    img.header.set_sform(SFORM, scode)
    return nib.Nifti1Image(img.dataobj, img.header.get_best_affine(), img.header)


@pytest.mark.parametrize("codes,expected_codes,best", [
    ((0, 2), (2, 2), SFORM),   # no qform: SCT writes the sform there, code 2
    ((1, 2), (1, 2), SFORM),   # both: the codes kept, the qform replaced by the sform
    ((1, 0), (1, 2), QFORM),   # qform only: it is the best affine; the sform gets it with code 2
    ((1, 4), (1, 4), SFORM),
])
def test_qform_and_sform_are_the_best_affine_with_scts_codes(codes, expected_codes, best):
    out = like_sct(_img(*codes), np.ones((4, 5, 3), np.uint8), np.uint8)
    back = nib.Nifti1Image.from_bytes(out.to_bytes())  # as written to disk
    q, qc = back.header.get_qform(coded=True)
    s, sc = back.header.get_sform(coded=True)
    assert (int(qc), int(sc)) == expected_codes
    np.testing.assert_allclose(q, best, atol=1e-5)
    np.testing.assert_allclose(s, best, atol=1e-5)
    assert back.get_data_dtype() == np.uint8 and np.asanyarray(back.dataobj).sum() == 60
