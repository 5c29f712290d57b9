"""The engine's SCT ensemble (``ensemble="sct"``) against SCT 7.3 driven through nnunetv2
(tests/sct_oracle.py), on release-shaped random checkpoints and non-RAS phantoms; and the proof that
SCT's vote is not nnU-Net's logit mean on those checkpoints (so agreement means something)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bidsapp.engine import NnUNetModel, NnUNetPredictor
from bidsapp.engine.ensemble import SctVote
from tests import sct_oracle as sct
from tests.engine_models import dice, one_torch_thread  # noqa: F401 - autouse fixture


@pytest.fixture(scope="module")
def lesion_folder(tmp_path_factory):
    folder, _ = sct.build_lesion_ms_release(tmp_path_factory.mktemp("lesion"), "raise SystemExit('ran')\n")
    return folder


@pytest.fixture(scope="module")
def lesion_oracle(lesion_folder):
    return sct.sct_predictor(lesion_folder)


@pytest.fixture(scope="module")
def lesion_engine(lesion_folder):
    return NnUNetPredictor(NnUNetModel.load(lesion_folder), ensemble="sct", tile_step=0.5, precision="fp32")


@pytest.mark.parametrize("case", ["las", "psr"])
def test_lesion_ms_vote_and_soft_map_are_scts(case, lesion_oracle, lesion_engine):
    img = sct.sct_image(case, seed=3)
    maps = lesion_engine.predict_maps(img)
    mask_sct = sct.sct_deepseg("lesion_ms", lesion_oracle, img)
    soft_sct = sct.sct_deepseg("lesion_ms", lesion_oracle, img, soft=True)
    assert maps.n_folds == 5 and maps.soft.shape == (2, *img.shape)
    assert 0.02 < mask_sct.mean() < 0.9, "the phantom must give a real mask"
    assert dice(maps.mask(1), mask_sct) >= 0.999
    assert float(np.abs(maps.soft[1] - soft_sct).mean()) <= 0.005
    # SCT's rule, read off our own counts: a voxel is lesion where 3 or more of the 5 folds say so
    assert np.array_equal(maps.mask(1), maps.votes[1] >= 3)


def test_scts_vote_is_not_the_logit_mean_on_these_checkpoints(lesion_oracle, lesion_folder):
    """Teeth: on the same checkpoint and image SCT's vote and soft map differ clearly from nnU-Net's
    logit mean, in the oracle and in the engine alike."""
    img = sct.sct_image("las", seed=3)
    mean_probs = sct.logit_mean(lesion_oracle, img)
    mask_sct = sct.sct_deepseg("lesion_ms", lesion_oracle, img)
    soft_sct = sct.sct_deepseg("lesion_ms", lesion_oracle, img, soft=True)
    assert dice(mean_probs.argmax(0) == 1, mask_sct) < 0.97
    assert float(np.abs(mean_probs[1] - soft_sct).mean()) > 0.02
    engine = NnUNetPredictor(NnUNetModel.load(lesion_folder), ensemble="logits", precision="fp32")
    logits = engine.predict(img)
    # the engine's logit mean is nnU-Net's (up to nnU-Net's float16 window sums)
    assert dice(logits.argmax(0) == 1, mean_probs.argmax(0) == 1) >= 0.995
    assert dice(logits.argmax(0) == 1, mask_sct) < 0.97


def test_one_fold_sct_mode_is_scts_single_model_path(tmp_path):
    """mp2rage: one fold, SCT's non-ensemble path (the fork adds the fold twice: argmax unchanged)."""
    folder = sct.build_mp2rage(tmp_path / "mp")
    img = sct.sct_image("psr", seed=5)
    oracle = sct.sct_deepseg("lesion_ms_mp2rage", sct.sct_predictor(folder), img)
    maps = NnUNetPredictor(NnUNetModel.load(folder), ensemble="sct", precision="fp32").predict_maps(img)
    assert maps.n_folds == 1 and 0.02 < oracle.mean() < 0.9
    assert dice(maps.mask(1), oracle) >= 0.999


def test_noisy_cord_model_has_many_objects_before_keep_largest(tmp_path):
    folder = sct.build_spinalcord(tmp_path / "sc")
    img = sct.sct_image("ali", seed=7)
    pred = sct.sct_predictor(folder)
    raw = sct.segment_nnunet(pred, img, ensemble=False, soft=False)
    ours = NnUNetPredictor(NnUNetModel.load(folder), precision="fp32").predict_maps(img).mask(1)
    assert dice(ours, raw == 1) >= 0.999
    _, n_objects = ndimage.label(raw)
    assert n_objects >= 10, n_objects  # what keep-largest-object is for
    kept = sct.sct_deepseg("spinalcord", pred, img)
    assert ndimage.label(kept)[1] == 1 and 0 < kept.sum() < (raw == 1).sum()


def test_sct_mode_inside_a_box_is_the_whole_images(lesion_engine):
    img = sct.sct_image("las", seed=3)
    whole = lesion_engine.predict_maps(img)
    box = (slice(8, 40), slice(5, 30), slice(2, 12))
    part = lesion_engine.predict_maps(img, roi=box)
    assert np.array_equal(part.votes[:, box[0], box[1], box[2]], whole.votes[:, box[0], box[1], box[2]])
    outside = np.ones(img.shape, bool)
    outside[box] = False
    assert not part.mask(1)[outside].any() and (part.votes[0][outside] == 5).all()
    assert np.allclose(part.soft[1][box], whole.soft[1][box], atol=1e-6)


def test_predict_refuses_the_vote_and_vote_counts_equal_scts_average():
    """``predict`` (probabilities) has no meaning for the vote; ``SctVote`` on synthetic folds gives
    exactly SCT's ``average_nnunet_predictions`` for both branches, for 1 to 5 folds."""
    rng = np.random.default_rng(0)
    for n in range(1, 6):
        logits = [rng.normal(0, 2, (2, 6, 5, 4)).astype(np.float32) for _ in range(n)]
        probs = [np.exp(lg) / np.exp(lg).sum(0, keepdims=True) for lg in logits]
        vote = SctVote()
        for lg, p in zip(logits, probs, strict=True):
            vote.add(lg, p.astype(np.float32))  # float32, as nnU-Net's softmax
        maps = vote.result()
        segs = [lg.argmax(0).astype(np.uint8) for lg in logits]
        assert np.array_equal(maps.mask(1), sct.average_nnunet_predictions(segs))
        probs32 = [p.astype(np.float32) for p in probs]
        soft = sct.average_nnunet_predictions((segs, probs32), probabilities=True)
        assert np.array_equal(maps.soft[1], soft)


def test_predict_raises_in_sct_mode(lesion_engine):
    with pytest.raises(ValueError, match="predict_maps"):
        lesion_engine.predict(sct.sct_image("las"))
