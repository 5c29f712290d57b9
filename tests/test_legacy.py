"""Legacy sct_deepseg_lesion pipeline, step by step: grids, centreline, crop, standardisation, patches."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.interpolate import interp1d

from bidsapp import legacy
from bidsapp.demo.phantom import AXIAL_ORIENTATIONS, SAGITTAL_ORIENTATIONS, Grid, make_anatomy, make_phantom
from bidsapp.engine.onnx import OnnxModel
from bidsapp.errors import InputImageError, ModelError


class FakeModel(OnnxModel):
    """An OnnxModel without a file: records its inputs, answers with ``fn(batch)``."""

    provider = "fake"

    def __init__(self, fn=lambda b: np.ones_like(b)):
        self.path, self.patch_shape = Path("fake.onnx"), (48, 48, 48)
        self.fixed_batch, self.metadata = None, {}
        self.fn, self.calls = fn, []

    def run(self, batch):
        self.calls.append(batch.copy())
        return self.fn(batch).astype(np.float32)


# ---------------------------------------------------------------- grids

def test_sct_shape_and_grid_convention():
    assert legacy.sct_shape((60, 120, 50), (0.8, 0.8, 0.8), (0.5, 0.5, 0.8)) == (96, 192, 50)
    assert legacy.sct_shape((80, 96, 32), (0.5, 0.5, 3.0), (0.5, 0.5, 3.0)) == (80, 96, 32)
    assert legacy.sct_shape((32,), (3.0,), (0.5,)) == (192,)
    # output index k samples input coordinate k * n / n_new (first voxel kept), edges clamped
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32), (2, 2, 10))
    out = legacy.rescale_grid(ramp, (2, 2, 25))
    np.testing.assert_allclose(out[0, 0], np.minimum(np.arange(25) * 10 / 25, 9), atol=1e-5)
    data = np.random.default_rng(0).normal(size=(7, 8, 9)).astype(np.float32)
    assert np.array_equal(legacy.rescale_grid(data, data.shape), data)


# ---------------------------------------------------------------- centreline and crop

def test_crop_start_follows_sct():
    assert legacy.crop_start(30.7, 48, 100) == 7      # int(30.7) - 24 + 1
    assert legacy.crop_start(5.0, 48, 100) == 0       # clamped at the start
    assert legacy.crop_start(95.2, 48, 100) == 52     # clamped at the end: 100 - 48
    assert legacy.crop_start(20.0, 48, 40) == 0       # image narrower than the crop


def test_centerline_from_mask_centres_interpolation_and_scale():
    mask = np.zeros((40, 50, 12), np.uint8)
    xx, yy = np.meshgrid(np.arange(40), np.arange(50), indexing="ij")
    centres = {3: (10, 20), 4: (12, 21), 8: (20, 25)}
    for z, (cx, cy) in centres.items():
        mask[..., z] = (xx - cx) ** 2 + (yy - cy) ** 2 <= 9
    line = legacy.centerline_from_mask(mask)
    assert line.shape == (12, 2)
    for z, c in centres.items():
        np.testing.assert_allclose(line[z], c, atol=1e-9)
    np.testing.assert_allclose(line[0], (10, 20))                     # held before the first cord slice
    np.testing.assert_allclose(line[11], (20, 25))                    # and after the last
    np.testing.assert_allclose(line[6], (16, 23))                     # linear between slices 4 and 8
    np.testing.assert_allclose(legacy.centerline_from_mask(mask, (0.5, 2.0))[3], (20, 10))
    with pytest.raises(ValueError, match="empty"):
        legacy.centerline_from_mask(np.zeros((4, 4, 4)))


def test_crop_uncrop_round_trip_is_exact():
    rng = np.random.default_rng(1)
    data = np.arange(90 * 70 * 6, dtype=np.float32).reshape(90, 70, 6) + 1
    line = np.stack([rng.uniform(0, 90, 6), rng.uniform(0, 70, 6)], axis=1)
    crop, starts = legacy.crop_around_centerline(data, line)
    assert crop.shape == (48, 48, 6)
    back = legacy.uncrop(crop, starts, data.shape)
    for z, (x0, y0) in enumerate(starts):
        assert np.array_equal(crop[..., z], data[x0:x0 + 48, y0:y0 + 48, z])
        window = np.zeros(data.shape[:2], bool)
        window[x0:x0 + 48, y0:y0 + 48] = True
        assert np.array_equal(back[..., z][window], data[..., z][window])
        assert not back[..., z][~window].any()
    assert np.array_equal(legacy.crop_around_centerline(back, line)[0], crop)
    # an image narrower than the crop: zero-padded at the high end, uncrop gives it back whole
    small = data[:40, :30]
    crop_s, starts_s = legacy.crop_around_centerline(small, np.full((6, 2), 15.0))
    assert (starts_s == 0).all() and not crop_s[40:].any() and not crop_s[:, 30:].any()
    assert np.array_equal(legacy.uncrop(crop_s, starts_s, small.shape), small)


# ---------------------------------------------------------------- intensity standardisation

def _sct_reference(img: np.ndarray, landmarks) -> np.ndarray:
    """SCT's apply_intensity_normalization_model, re-expressed with the same scipy calls."""
    def exp_model(xs, ys, s2):
        m = (ys[1] - ys[0]) / (xs[1] - xs[0])
        b = ys[0] - m * xs[0]
        omega = m * xs[1] - s2 + b
        beta = omega * np.exp(-m * xs[1] / omega)
        return lambda x: s2 + beta * np.exp(m / omega * x)

    cur = np.percentile(img, q=[1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99])
    out = interp1d(cur, landmarks, bounds_error=False)(img)
    out[img < cur[0]] = exp_model(cur[:2], landmarks[:2], landmarks[0])(img[img < cur[0]])
    out[img > cur[-1]] = exp_model(cur[-3:-1], landmarks[-3:-1], landmarks[-1])(img[img > cur[-1]])
    return out.astype(np.float32)


@pytest.mark.parametrize("task", legacy.TASKS)
def test_standardisation_matches_sct(task):
    landmarks = legacy.CONTRASTS[task].landmarks
    img = np.random.default_rng(2).gamma(2.0, 300.0, size=(48, 48, 40)).astype(np.float32)
    out = legacy.standardize_intensity(img, landmarks)
    np.testing.assert_allclose(out, _sct_reference(img, landmarks), rtol=1e-5, atol=1e-3)
    # the image's deciles land on the landmarks, monotone between the 1st and 99th percentiles;
    # the exponential tails stay inside (0, 2611) (SCT's upper tail restarts below 2611 past p99)
    deciles = np.percentile(img, legacy.PERCENTILES)
    inner = (img >= deciles[0]) & (img <= deciles[-1])
    order = np.argsort(img[inner], kind="stable")
    assert np.all(np.diff(out[inner][order]) >= -1e-3)
    np.testing.assert_allclose(np.interp(deciles[1:-1], img[inner][order], out[inner][order]),
                               landmarks[1:-1], rtol=1e-4)
    assert out.min() > 0 and out.max() < landmarks[-1]


def test_standardisation_of_a_constant_image_is_finite():
    out = legacy.standardize_intensity(np.full((4, 4, 4), 7.0), legacy.CONTRASTS["t2"].landmarks)
    assert np.isfinite(out).all()


# ---------------------------------------------------------------- patches

def test_patches_cover_every_slice_and_are_z_scored_like_sct():
    contrast = legacy.CONTRASTS["t2s"]
    volume = np.full((48, 48, 100), 1000.0, np.float32)
    model = FakeModel()
    out = legacy.predict_patches(volume, model, contrast)
    assert out.shape == volume.shape and out.all()                  # starts 0, 48, 96: all 100 slices
    (batch,) = model.calls
    assert batch.shape == (3, 1, 48, 48, 48)
    np.testing.assert_allclose(batch[2, 0, :, :, :4], (1000 - contrast.mean) / contrast.std, rtol=1e-6)
    np.testing.assert_allclose(batch[2, 0, :, :, 4:], -contrast.mean / contrast.std, rtol=1e-6)  # padding
    assert legacy.patch_starts(100) == [0, 48, 96]


def test_empty_patches_are_skipped_and_threshold_is_strict():
    volume = np.full((48, 48, 96), 500.0, np.float32)
    volume[:, :, 48:] = 0
    model = FakeModel(lambda b: np.full_like(b, 0.1))
    out = legacy.predict_patches(volume, model, legacy.CONTRASTS["t2"])
    assert model.calls[0].shape[0] == 1 and not out.any()          # 0.1 is not > 0.1
    out = legacy.predict_patches(volume, FakeModel(lambda b: np.full_like(b, 0.1001)), legacy.CONTRASTS["t2"])
    assert out[:, :, :48].all() and not out[:, :, 48:].any()


# ---------------------------------------------------------------- the pipeline on phantoms

ORIENTATIONS = [(o, (0.8, 0.8, 0.8)) for o in SAGITTAL_ORIENTATIONS] + \
               [(o, (0.5, 0.5, 3.0)) for o in AXIAL_ORIENTATIONS]


@pytest.fixture(scope="module")
def phantoms():
    rng = np.random.default_rng(42)
    anatomy = make_anatomy(rng, n_lesions=3, z_range=(-15, 15))
    return {o: make_phantom("T2w", rng=rng, anatomy=anatomy, grid=Grid(o, v, fov_mm=(36, 40, 50)))
            for o, v in ORIENTATIONS}


@pytest.mark.parametrize("orientation", [o for o, _ in ORIENTATIONS], ids="".join)
def test_geometry_round_trip_on_every_phantom_orientation(phantoms, orientation):
    """A lesion mask pushed through the forward crop/resampling and back lands where it was."""
    ph = phantoms[orientation]
    prep = legacy.prepare(ph.image.get_fdata(), ph.image.affine, np.asanyarray(ph.cord.dataobj), "t2")
    truth = np.asanyarray(ph.lesion.dataobj).astype(bool)
    lesion_rpi = prep.reorientation.apply(truth.astype(np.float32))
    lesion_crop, _ = legacy.crop_around_centerline(legacy.rescale_grid(lesion_rpi, prep.res_shape),
                                                   prep.centerline)
    back = legacy.restore(legacy.rescale_grid(lesion_crop, prep.crop_iso.shape) > 0.5, prep).astype(bool)
    assert back.shape == truth.shape
    assert 2 * (back & truth).sum() / (back.sum() + truth.sum()) >= 0.85
    # the crop follows the cord: every cord voxel of the 0.5 mm grid lies inside its slice's window
    cord_rpi = prep.reorientation.apply(np.asanyarray(ph.cord.dataobj))
    cord_res = legacy.rescale_grid(cord_rpi, prep.res_shape) > 0.5
    inside = legacy.uncrop(np.ones((48, 48, prep.res_shape[2]), np.float32), prep.starts, prep.res_shape) > 0
    assert (cord_res & ~inside).sum() == 0


@pytest.mark.parametrize("orientation", [SAGITTAL_ORIENTATIONS[0], AXIAL_ORIENTATIONS[3]], ids="".join)
def test_segment_legacy_output_is_on_the_exact_input_grid(phantoms, orientation):
    ph = phantoms[orientation]
    img = ph.image
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=2)
    bright = FakeModel(lambda b: (b > 1.5).astype(np.float32))       # "lesion" = brightest tissue
    result = legacy.segment_legacy(img, task="t2", model=bright, cord=ph.cord)
    mask = result.mask
    assert mask.shape == img.shape and mask.get_data_dtype() == np.uint8
    assert np.array_equal(mask.affine, img.affine)
    assert int(mask.header["qform_code"]) == 1 and int(mask.header["sform_code"]) == 2
    assert np.array_equal(mask.header.get_qform(), img.header.get_qform())
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1} and np.asanyarray(mask.dataobj).any()
    assert result.cord.shape == img.shape and result.threshold == 0.1
    assert result.details["model_file"] == bright.path.name and result.details["patch_mean"] == 871.309


def test_segment_legacy_refuses_bad_inputs(phantoms):
    ph = phantoms[SAGITTAL_ORIENTATIONS[0]]
    with pytest.raises(ModelError, match="legacy task 'lesion_ms'"):
        legacy.segment_legacy(ph.image, task="lesion_ms", model=FakeModel(), cord=ph.cord)
    empty = nib.Nifti1Image(np.zeros(ph.image.shape, np.uint8), ph.image.affine)
    with pytest.raises(InputImageError, match="cord mask is empty"):
        legacy.segment_legacy(ph.image, task="t2", model=FakeModel(), cord=empty)
    other = nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), ph.image.affine)
    with pytest.raises(InputImageError, match="not on the image grid"):
        legacy.segment_legacy(ph.image, task="t2", model=FakeModel(), cord=other)
