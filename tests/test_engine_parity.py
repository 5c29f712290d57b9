"""Oracle parity: our engine vs nnunetv2's nnUNetPredictor on the same checkpoints and images.

Checkpoints are built here with random (sharpened) weights: a PlainConvUNet and a
ResidualEncoderUNet, anisotropic plan spacing, 2 folds. Images: RAS at the plan spacing, LAS with
anisotropic voxels, and a PSR image that needs resampling. Criteria (issue 2): binarised Dice >=
0.99 and mean |p_ours - p_nnunet| <= 0.01, TTA off and on.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from engine_models import (  # noqa: F401
    build_folder,
    dice,
    make_image,
    one_torch_thread,
    oracle_predictor,
    oracle_probabilities,
)

from bidsapp.engine import NnUNetModel, NnUNetPredictor
from bidsapp.engine.nnunet import _prepare_cpu_weights

pytestmark = pytest.mark.timeout(300)

NETWORKS = ("PlainConvUNet", "ResidualEncoderUNet")
#: nnunetv2's CPU mode is float32, so parity is checked in float32 (also what "auto" is on every CPU;
#: tests/test_precision.py checks the reduced precisions)
Fp32Predictor = functools.partial(NnUNetPredictor, precision="fp32")
CASES = ("ras", "las", "resample")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_models")
    return {net: build_folder(root / net, net) for net in NETWORKS}


@pytest.fixture(scope="module")
def images():
    return {case: make_image(case, seed=i) for i, case in enumerate(CASES)}


def _agree(ref: np.ndarray, ours: np.ndarray) -> tuple[float, float]:
    return dice(ref.argmax(0) == 1, ours.argmax(0) == 1), float(np.abs(ref - ours).mean())


@pytest.mark.parametrize("tta", [False, True], ids=["tta_off", "tta_on"])
@pytest.mark.parametrize("network", NETWORKS)
def test_parity_with_nnunetv2(folders, images, network, tta):
    oracle = oracle_predictor(folders[network], tta)
    ours = Fp32Predictor(NnUNetModel.load(folders[network]), tta=tta)
    for case, img in images.items():
        ref = oracle_probabilities(oracle, img)
        got = ours.predict(img)
        assert got.shape == ref.shape == (2, *img.shape)
        assert got.dtype == np.float32
        d, mad = _agree(ref, got)
        fg = float((ref.argmax(0) == 1).mean())
        assert 0.1 < fg < 0.7, f"{case}: lesion class should win in a sizeable region, got {fg:.2f}"
        assert d >= 0.99, f"{network} {case} tta={tta}: Dice {d:.4f}"
        assert mad <= 0.01, f"{network} {case} tta={tta}: mean |diff| {mad:.4f}"
        np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)


def test_parity_detects_an_orientation_error(folders, images):
    """Negative control: the criteria fail when the image is mirrored before inference."""
    img = images["las"]
    oracle = oracle_predictor(folders["PlainConvUNet"], False)
    ref = oracle_probabilities(oracle, img)
    ours = Fp32Predictor(NnUNetModel.load(folders["PlainConvUNet"]))
    flipped = type(img)(np.ascontiguousarray(np.asarray(img.dataobj)[::-1]), img.affine, img.header)
    got = ours.predict(flipped)[:, ::-1]
    assert _agree(ref, got)[0] < 0.99


def test_single_fold_and_probability_ensemble(folders, images):
    folder, img = folders["ResidualEncoderUNet"], images["resample"]
    # one fold: same as nnU-Net with use_folds=(1,)
    ref1 = oracle_probabilities(oracle_predictor(folder, False, folds=(1,)), img)
    got1 = Fp32Predictor(NnUNetModel.load(folder, folds=[1])).predict(img)
    d, mad = _agree(ref1, got1)
    assert d >= 0.99 and mad <= 0.01
    # SCT's ensembling: mean of the per-fold probabilities
    ref0 = oracle_probabilities(oracle_predictor(folder, False, folds=(0,)), img)
    got = Fp32Predictor(NnUNetModel.load(folder), ensemble="probabilities").predict(img)
    d, mad = _agree((ref0 + ref1) / 2, got)
    assert d >= 0.99 and mad <= 0.01
    # and it is not the logit mean (the two differ where folds disagree)
    logit_mean = Fp32Predictor(NnUNetModel.load(folder)).predict(img)
    assert np.abs(logit_mean - got).max() > 1e-3


def test_old_plans_format(tmp_path, images):
    """Pre-2.4 plans (UNet_class_name, conv_kernel_sizes...) build the same network as the new form."""
    old = build_folder(tmp_path / "old", "PlainConvUNet", old_format=True)
    img = images["las"]
    ref = oracle_probabilities(oracle_predictor(old, False), img)
    got = Fp32Predictor(NnUNetModel.load(old)).predict(img)
    d, mad = _agree(ref, got)
    assert d >= 0.99 and mad <= 0.01


def test_other_orientation_transpose_and_mask_norm(tmp_path, images):
    """dataset.json image_orientation "RPI", a non-identity transpose_forward, ZScore inside the
    non-zero mask: still nnU-Net's numbers."""
    folder = build_folder(tmp_path / "m", "PlainConvUNet", folds=(0,), orientation="RPI",
                          transpose_forward=(0, 2, 1), use_mask_for_norm=True, spacing=(3.0, 0.8, 0.8))
    img = images["ras"]
    ref = oracle_probabilities(oracle_predictor(folder, False), img, sct_orientation="RPI")
    got = Fp32Predictor(NnUNetModel.load(folder)).predict(img)
    d, mad = _agree(ref, got)
    assert d >= 0.99 and mad <= 0.01


def test_cpu_network_uses_the_checkpoint_tensors(folders):
    """One copy of the weights on the CPU: every network parameter IS a checkpoint tensor (shared
    encoder tensors stay shared), and switching folds switches them."""
    model = NnUNetModel.load(folders["ResidualEncoderUNet"])
    pred = Fp32Predictor(model, device="cpu")
    ptrs = {t.data_ptr() for t in model.state_dicts[0].values()}
    params = list(pred.network.parameters())
    assert params and all(p.data_ptr() in ptrs for p in params)
    assert not any(p.is_meta for p in pred.network.parameters())
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in params if p.dim() == 5)
    # tensors shared in a checkpoint (nnU-Net's decoder holds the encoder) stay one tensor
    w = torch.randn(4, 2, 3, 3, 3)
    converted = _prepare_cpu_weights({"encoder.w": w, "decoder.encoder.w": w, "b": torch.zeros(4)}, True)
    assert converted["encoder.w"] is converted["decoder.encoder.w"]
    assert converted["encoder.w"].is_contiguous(memory_format=torch.channels_last_3d)
    # half-precision files run in float32, still shared
    h = w.half()
    converted = _prepare_cpu_weights({"encoder.w": h, "decoder.encoder.w": h}, False)
    assert converted["encoder.w"].dtype == torch.float32
    assert converted["encoder.w"] is converted["decoder.encoder.w"]
    pred._load_fold(1)
    ptrs1 = {t.data_ptr() for t in model.state_dicts[1].values()}
    assert all(p.data_ptr() in ptrs1 for p in pred.network.parameters())


def _wide(img):
    """``img`` tiled 2x2 in-plane (as data): wide enough for several windows per in-plane axis."""
    data = np.tile(np.asarray(img.dataobj), (2, 2, 1))
    return type(img)(data, img.affine, img.header)


@pytest.mark.parametrize("case", CASES)
def test_roi_is_exact_inside_and_background_outside(folders, images, case):
    """Windows that miss the box are skipped, yet inside the box the probabilities are the whole
    image's (same normalisation, windows and weights); outside it background has probability 1."""
    img = _wide(images[case])
    pred = Fp32Predictor(NnUNetModel.load(folders["ResidualEncoderUNet"]))
    full = pred.predict(img)
    shape = img.shape
    roi = (slice(4, 9), slice(2, 6), slice(2, 5))  # a corner box (voxels 0-1 of axis 0 are zero)
    calls = []
    forward = pred.network.forward
    pred.network.forward = lambda x: (calls.append(x.shape[0]), forward(x))[1]
    part = pred.predict(img, roi=roi)
    np.testing.assert_allclose(part[(slice(None), *roi)], full[(slice(None), *roi)], atol=1e-5)
    outside = np.ones(shape, bool)
    outside[roi] = False
    assert (part[0][outside] == 1).all() and (part[1][outside] == 0).all()
    # fewer windows ran than for the whole image, and an empty box runs none
    calls_full = []
    pred.network.forward = lambda x: (calls_full.append(x.shape[0]), forward(x))[1]
    pred.predict(img)
    assert 0 < sum(calls) < sum(calls_full)
    calls.clear()
    pred.network.forward = lambda x: (calls.append(x.shape[0]), forward(x))[1]
    empty = pred.predict(img, roi=(slice(0, 0), slice(None), slice(None)))
    assert not calls and (empty[0] == 1).all()
