"""Each preprocessing / tiling step against the nnunetv2 function it reproduces, on random arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bidsapp.engine import preprocess, resample, sliding


@pytest.mark.parametrize("shape,new_shape,cur,new,order", [
    ((1, 12, 30, 28), (40, 30, 28), (3.0, 0.8, 0.8), (0.9, 0.8, 0.8), 3),   # separate z, z changes
    ((2, 12, 30, 28), (12, 40, 21), (3.0, 0.8, 0.8), (3.0, 0.6, 1.067), 3),  # separate z, in-plane only
    ((1, 10, 20, 25), (13, 17, 31), (1.0, 1.2, 0.8), (0.77, 1.41, 0.645), 3),  # isotropic-ish: 3D spline
    ((2, 24, 11, 20), (24, 26, 20), (0.7, 3.0, 0.7), (0.7, 1.27, 0.7), 1),   # lowres axis 1, order 1
    ((1, 9, 16, 16), (18, 16, 16), (3.0, 0.7, 0.7), (1.5, 0.7, 0.7), 1),     # 2x: nearest-z ties
])
def test_resample_matches_nnunetv2(shape, new_shape, cur, new, order):
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    rng = np.random.default_rng(0)
    data = rng.normal(size=shape).astype(np.float32)
    ref = resample_data_or_seg_to_shape(data, new_shape, cur, new, is_seg=False, order=order, order_z=0,
                                        force_separate_z=None)
    got = resample.resample_to_shape(data, new_shape, cur, new, order=order, order_z=0)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)


def test_resample_identity_returns_input():
    data = np.ones((1, 4, 5, 6), np.float32)
    assert resample.resample_to_shape(data, (4, 5, 6), (1, 1, 1), (1, 1, 1)) is data


def test_crop_matches_nnunetv2():
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    data = np.zeros((2, 20, 22, 24), np.float32)
    data[0, 3:15, 5:20, 2:9] = 1
    data[1, 4:17, 6:10, 2:21] = 2
    data[0, 8, 10, 5] = 0  # a hole: filled by nnU-Net's binary_fill_holes
    ref_data, ref_seg, ref_bbox = crop_to_nonzero(data.copy())
    bbox, mask = preprocess.nonzero_bbox(data)
    assert bbox == [list(b) for b in ref_bbox]
    np.testing.assert_array_equal(mask, ref_seg[0] >= 0)
    np.testing.assert_array_equal(data[(slice(None), *preprocess.bbox_slices(bbox))], ref_data)


@pytest.mark.parametrize("scheme,use_mask", [("ZScoreNormalization", False), ("ZScoreNormalization", True),
                                             ("CTNormalization", False), ("NoNormalization", False),
                                             ("RescaleTo01Normalization", False)])
def test_normalization_matches_nnunetv2(scheme, use_mask):
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as nn

    rng = np.random.default_rng(1)
    data = (rng.normal(300, 90, size=(1, 8, 9, 10))).astype(np.float32)
    data[0, :2] = 0
    mask = data[0] != 0
    props = {"mean": 280.0, "std": 70.0, "percentile_00_5": 120.0, "percentile_99_5": 450.0}
    ref = getattr(nn, scheme)(use_mask_for_norm=use_mask, intensityproperties=props).run(
        data[0].copy(), np.where(mask, 0, -1))
    config = {"normalization_schemes": [scheme], "use_mask_for_norm": [use_mask]}
    got = preprocess.normalize(data.copy(), mask, config, {"0": props})
    np.testing.assert_allclose(got[0], ref, rtol=1e-6, atol=1e-6)


def test_unknown_normalization_is_a_model_error():
    from bidsapp.errors import ModelError

    with pytest.raises(ModelError, match="unsupported normalization"):
        preprocess.normalize(np.ones((1, 2, 2, 2), np.float32), np.ones((2, 2, 2), bool),
                             {"normalization_schemes": ["MyNorm"]}, None)


@pytest.mark.parametrize("size,patch", [((30, 64, 100), (16, 64, 48)), ((8, 9, 10), (8, 9, 10)),
                                        ((110, 33, 17), (64, 32, 16))])
def test_tiles_and_gaussian_match_nnunetv2(size, patch):
    from nnunetv2.inference.sliding_window_prediction import (
        compute_gaussian,
        compute_steps_for_sliding_window,
    )

    assert sliding.tile_starts(size, patch, 0.5) == compute_steps_for_sliding_window(size, patch, 0.5)
    # nnU-Net's default dtype, float16 (what its sliding window uses): the same bits
    ref = compute_gaussian(tuple(patch), 1 / 8, 10, device=torch.device("cpu")).numpy()
    got = sliding.gaussian_weights(tuple(patch))
    assert ref.dtype == got.dtype == np.float16 and got.tobytes() == ref.tobytes()


def test_padding_matches_nnunetv2():
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    x = torch.arange(2 * 5 * 7 * 3, dtype=torch.float32).reshape(2, 5, 7, 3)
    ref, ref_slicer = pad_nd_image(x, (8, 6, 6), "constant", {"value": 0}, True, None)
    got, slicer = sliding.pad_to_patch(x, (8, 6, 6))
    assert torch.equal(got, ref)
    assert torch.equal(got[(slice(None), *slicer)], x)
    assert tuple(ref_slicer[1:]) == slicer


def test_sliding_window_is_identity_for_an_identity_network():
    """Gaussian-weighted tiles of a network that returns its input average back to the input (to
    float16's precision: nnU-Net's sums are float16)."""
    class Echo(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x, -x], 1)

    data = torch.randn(1, 13, 40, 37)
    acc = sliding.sliding_window_logits(Echo(), data, (8, 16, 16), 2, sliding.WindowRun(batch_size=3))
    weights = sliding.weight_sum(data.shape[1:], (8, 16, 16))
    out = (acc / weights).float()
    assert acc.dtype == weights.dtype == torch.float16
    # where only Gaussian tails (subnormal in float16) reach a voxel, nnU-Net's quotient is coarse
    inner = weights.float() >= 1e-3
    assert inner.float().mean() > 0.7
    torch.testing.assert_close(out[0][inner], data[0][inner], rtol=4e-3, atol=4e-3)
    torch.testing.assert_close(out[1][inner], -data[0][inner], rtol=4e-3, atol=4e-3)
