"""Our default masks against the REAL SCT 7.3 (``make test-sct``; tests/sct_real.py installs it from
../shared/peers/sct): the same release-shaped random-weight checkpoints, the same images, SCT's own
``sct_deepseg``. Random weights amplify every arithmetic difference, so agreement here is strict."""
from __future__ import annotations

import numpy as np
import pytest

from bidsapp import pipelines
from bidsapp.pipelines import RunOptions
from tests import sct_oracle as so
from tests.engine_models import dice
from tests.sct_real import model_zip, save, sct  # noqa: F401 - session fixture

pytestmark = pytest.mark.sct_oracle


@pytest.fixture(scope="module")
def lesion_ms(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lesion_ms")
    folder, _ = so.build_lesion_ms_release(tmp / "ms", "raise SystemExit('ran')\n")
    return folder, model_zip(folder, tmp / "lesion_ms.zip")


def test_lesion_ms_default_is_real_scts_mask(sct, lesion_ms, tmp_path):  # noqa: F811 - fixture
    folder, zip_path = lesion_ms
    img = so.sct_image("las", seed=3)
    ref = sct.deepseg("lesion_ms", zip_path, save(img, tmp_path / "in.nii.gz"), tmp_path / "sct.nii.gz")
    ours = pipelines.segment(img, task="lesion_ms", models={"lesion_ms": folder},
                             options=RunOptions(device="cpu", backend="auto"))
    a, b = np.asarray(ours.mask.dataobj).astype(bool), np.asarray(ref.dataobj).astype(bool)
    assert 0.01 < b.mean() < 0.9, "the phantom must give a real mask"
    assert dice(a, b) >= 0.999, f"{int((a != b).sum())} voxels differ"
