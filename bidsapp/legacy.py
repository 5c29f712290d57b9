"""The legacy ``sct_deepseg_lesion`` pipeline (Gros et al. 2019): T2w (``t2``, ``t2_ax``) and T2*w (``t2s``).

Faithful to SCT's ``spinalcordtoolbox/deepseg_/lesion.py``, step by step:

1. reorient to SCT "RPI" (nibabel LAS);
2. resample in-plane to 0.5 mm (linear, SCT's grid: first voxel kept, spacing ``zoom * n / n_new``);
3. centreline: per axial slice, the centre of mass of the cord mask (SCT uses its OptiC detector;
   we take the cord of ``sct_deepseg spinalcord``: window step 0.5, largest object), interpolated
   across slices without cord;
4. crop 48x48 in-plane around the centreline, slice by slice;
5. percentile-landmark intensity standardisation (Nyul-style, SCT's learned landmarks per contrast);
6. resample the crop to 0.5 mm isotropic (only z changes);
7. 48^3 patches along z, z-scored with the model's fixed mean/std, ONNX model, probability > 0.1;
8. back: z to the crop's slices, uncrop, in-plane to the native grid (linear), >= 0.1, uint8,
   original orientation, exact input header.

Every step is a small pure function on arrays so it can be tested alone; :func:`segment_legacy` chains them.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from . import tasks as task_table
from .engine.onnx import OnnxModel
from .errors import InputImageError, ModelError
from .imaging import like, same_grid
from .orientation import Reorientation, to_sct_orientation

log = logging.getLogger(__name__)

TASKS = task_table.names(task_table.ONNX)
CROP_SIZE = 48          # in-plane crop around the centreline, voxels at 0.5 mm
RESOLUTION_MM = 0.5
PATCH_THRESHOLD = 0.1   # SCT: onnx probability > 0.1 per patch, then >= 0.1 after resampling back
PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


@dataclass(frozen=True)
class LegacyContrast:
    """What SCT hard-codes per legacy model: standard-space landmarks and the patch z-score."""

    landmarks: tuple[float, ...]
    mean: float
    std: float


# values copied from SCT deepseg_/lesion.py (apply_intensity_normalization, segment_3d)
CONTRASTS: dict[str, LegacyContrast] = {
    "t2": LegacyContrast((0.000000, 136.832187, 312.158435, 448.968030, 568.657779, 696.671586, 859.221138,
                          1074.463414, 1373.289174, 1811.522669, 2611.000000), 871.309, 557.916),
    "t2_ax": LegacyContrast((0.000000, 112.195357, 291.611185, 446.727066, 581.103970, 702.979079, 833.318257,
                             1011.856313, 1268.801813, 1687.137075, 2611.000000), 835.592, 528.386),
    "t2s": LegacyContrast((0.000000, 123.246969, 226.422561, 338.361023, 532.341924, 788.693675, 1096.975553,
                           1407.979466, 1716.524530, 2079.788451, 2611.000000), 1011.31, 678.985),
}


def contrast_for(task: str) -> LegacyContrast:
    """The fixed parameters of a legacy task; :class:`ModelError` for an unknown task."""
    if task not in CONTRASTS:
        raise ModelError(f"legacy task {task!r}: expected one of {', '.join(TASKS)}")
    return CONTRASTS[task]


# ---------------------------------------------------------------- resampling on SCT's grid

def sct_shape(shape: Sequence[int], zooms: Sequence[float], new_zooms: Sequence[float]) -> tuple[int, ...]:
    """SCT ``resample_nib(new_size_type='mm')`` output shape: ``round(n * zoom / new_zoom)`` per axis."""
    return tuple(max(1, int(np.round(n * float(z) / float(nz))))
                 for n, z, nz in zip(shape, zooms, new_zooms, strict=True))


def rescale_grid(data: np.ndarray, out_shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resample ``data`` to ``out_shape`` on SCT's grid convention (linear, edges clamped).

    SCT keeps the first voxel's position and stretches the spacing by ``n / n_new``: output index k
    samples input coordinate ``k * n / n_new`` (``resample_nib`` with ``affine @ diag(n / n_new)``,
    ``mode='nearest'``). Axes whose size does not change are copied exactly.
    """
    factors = [n / m for n, m in zip(data.shape, out_shape, strict=True)]
    return ndimage.affine_transform(np.asarray(data, np.float32), np.asarray(factors), offset=0.0,
                                    output_shape=tuple(out_shape), order=order, mode="nearest")


# ---------------------------------------------------------------- centreline and crop

def centerline_from_mask(cord: np.ndarray, scale_xy: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
    """Per axial slice (last axis) the cord's in-plane centre of mass, shape ``(nz, 2)``.

    ``scale_xy`` divides the coordinates, mapping the mask's grid to an in-plane resampled grid
    (SCT's grid: new index = old index * n_new / n). Slices without cord are filled by linear
    interpolation between cord slices and held constant beyond the ends, so that, like SCT's
    OptiC centreline, every slice is cropped. Raises ``ValueError`` when the mask is empty.
    """
    mask = np.asarray(cord) > 0
    counts = mask.sum(axis=(0, 1)).astype(float)
    present = np.flatnonzero(counts)
    if present.size == 0:
        raise ValueError("the cord mask is empty: no centreline")
    xs = np.arange(mask.shape[0], dtype=float)[:, None, None]
    ys = np.arange(mask.shape[1], dtype=float)[None, :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (mask * xs).sum(axis=(0, 1)) / counts
        cy = (mask * ys).sum(axis=(0, 1)) / counts
    z = np.arange(mask.shape[2])
    cx = np.interp(z, present, cx[present]) / scale_xy[0]
    cy = np.interp(z, present, cy[present]) / scale_xy[1]
    return np.stack([cx, cy], axis=1)


def crop_start(center: float, size: int, dim: int) -> int:
    """First index of a ``size``-wide window around ``center`` (SCT ``_find_crop_start_end``)."""
    half = size // 2
    start, end = int(center) - half + 1, int(center) + half + 1
    if end > dim:
        start = dim - size if dim >= size else 0
    if start < 0:
        start = 0
    return start


def crop_around_centerline(data: np.ndarray, centerline: np.ndarray, size: int = CROP_SIZE
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``(X, Y, Z)`` -> ``(size, size, Z)`` crop along the centreline, and the per-slice starts ``(Z, 2)``.

    Where the image is narrower than ``size`` the crop is zero-padded at the high end, as in SCT.
    """
    nx, ny, nz = data.shape
    out = np.zeros((size, size, nz), np.float32)
    starts = np.zeros((nz, 2), int)
    for z in range(nz):
        x0, y0 = crop_start(centerline[z, 0], size, nx), crop_start(centerline[z, 1], size, ny)
        window = data[x0:x0 + size, y0:y0 + size, z]
        out[:window.shape[0], :window.shape[1], z] = window
        starts[z] = (x0, y0)
    return out, starts


def uncrop(crop: np.ndarray, starts: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Put a crop from :func:`crop_around_centerline` back into zeros of ``shape`` (SCT ``uncrop_image``)."""
    out = np.zeros(tuple(shape), np.float32)
    sx, sy = crop.shape[:2]
    for z, (x0, y0) in enumerate(starts):
        x1, y1 = min(x0 + sx, shape[0]), min(y0 + sy, shape[1])
        out[x0:x1, y0:y1, z] = crop[:x1 - x0, :y1 - y0, z]
    return out


# ---------------------------------------------------------------- intensity standardisation

def _exp_tail(xs: Sequence[float], ys: Sequence[float], asymptote: float):
    """SCT's ``exp_model``: ``alpha + beta * exp(gamma * x)`` continuing the landmark line through
    (xs[0], ys[0]), (xs[1], ys[1]) at xs[1] with the same slope, tending to ``asymptote``.

    Returns None when the line is degenerate (equal landmarks), where SCT would divide by zero.
    """
    (x1, x2), (y1, y2) = xs, ys
    if x2 == x1:
        return None
    m = (y2 - y1) / (x2 - x1)
    omega = m * x2 - asymptote + (y1 - m * x1)
    if omega == 0:
        return None
    beta, gamma = omega * np.exp(-m * x2 / omega), m / omega
    return lambda x: asymptote + beta * np.exp(gamma * x)


def standardize_intensity(data: np.ndarray, landmarks: Sequence[float]) -> np.ndarray:
    """Map the image's percentiles (1, 10, ..., 90, 99) piecewise linearly onto ``landmarks``.

    SCT ``apply_intensity_normalization_model``: linear between the landmarks; below the 1st and
    above the 99th percentile an exponential tail towards the first / last landmark (SCT fits the
    upper tail on the 80th-90th percentile segment). Percentiles are taken over the whole array.
    Degenerate percentiles (a constant image) fall back to clamping.
    """
    values = np.asarray(data, np.float64)
    current = np.percentile(values, PERCENTILES)
    target = np.asarray(landmarks, np.float64)
    out = np.interp(values, current, target)
    below, above = values < current[0], values > current[-1]
    low = _exp_tail(current[:2], target[:2], target[0])
    high = _exp_tail(current[-3:-1], target[-3:-1], target[-1])
    with np.errstate(over="ignore"):
        if low is not None and below.any():
            out[below] = low(values[below])
        if high is not None and above.any():
            out[above] = high(values[above])
    return out.astype(np.float32)


# ---------------------------------------------------------------- patches

def patch_starts(nz: int, size: int = CROP_SIZE) -> list[int]:
    """Start slices of the non-overlapping z patches SCT uses (the last one zero-padded)."""
    return list(range(0, nz, size))


def predict_patches(volume: np.ndarray, model: OnnxModel, contrast: LegacyContrast,
                    threshold: float = PATCH_THRESHOLD) -> np.ndarray:
    """``(48, 48, Z)`` standardised volume -> ``(48, 48, Z)`` binary float32 lesion mask (SCT ``segment_3d``).

    Non-overlapping 48-slice patches along z; the last one zero-padded before the z-score, as SCT
    does; all-zero patches are skipped. All patches go to the model in one batch.
    """
    size_z = model.patch_shape[2]
    nz = volume.shape[2]
    starts = patch_starts(nz, size_z)
    patches, kept = [], []
    for z0 in starts:
        patch = np.zeros(model.patch_shape, np.float32)
        patch[:, :, :min(size_z, nz - z0)] = volume[:, :, z0:z0 + size_z]
        if patch.any():
            patches.append((patch - contrast.mean) / contrast.std)
            kept.append(z0)
    out = np.zeros(volume.shape, np.float32)
    if not patches:
        return out
    probs = model.run(np.stack(patches)[:, None])
    for z0, prob in zip(kept, probs[:, 0], strict=True):
        n = min(size_z, nz - z0)
        out[:, :, z0:z0 + n] = (prob[:, :, :n] > threshold)
    return out


# ---------------------------------------------------------------- the pipeline

@dataclass
class Prepared:
    """An image made ready for the legacy model, with what is needed to go back to its grid."""

    reorientation: Reorientation  # native -> RPI
    shape: tuple[int, ...]        # RPI array shape (native resolution)
    res_shape: tuple[int, ...]    # RPI shape at 0.5 mm in-plane
    centerline: np.ndarray        # (nz, 2) on the 0.5 mm in-plane grid
    starts: np.ndarray            # (nz, 2) crop window starts
    crop: np.ndarray              # standardised crop, (48, 48, nz)
    crop_iso: np.ndarray          # the same at 0.5 mm isotropic, (48, 48, nz_iso)


def prepare(data: np.ndarray, affine: np.ndarray, cord: np.ndarray, task: str) -> Prepared:
    """Steps 1-6: image and cord mask on the same grid -> the standardised 0.5 mm iso crop."""
    contrast = contrast_for(task)
    image_rpi, reo = to_sct_orientation(np.asarray(data, np.float32), affine, "RPI")
    cord_rpi = reo.apply(np.asarray(cord))
    zooms = voxel_sizes(reo.affine)
    shape = tuple(image_rpi.shape)
    res_shape = sct_shape(shape, zooms, (RESOLUTION_MM, RESOLUTION_MM, zooms[2]))
    image_res = rescale_grid(image_rpi, res_shape)
    centerline = centerline_from_mask(cord_rpi, (shape[0] / res_shape[0], shape[1] / res_shape[1]))
    crop, starts = crop_around_centerline(image_res, centerline)
    crop = standardize_intensity(crop, contrast.landmarks)
    iso_shape = (CROP_SIZE, CROP_SIZE, sct_shape(shape[2:], zooms[2:], (RESOLUTION_MM,))[0])
    return Prepared(reo, shape, res_shape, centerline, starts, crop, rescale_grid(crop, iso_shape))


def restore(lesion_iso: np.ndarray, prep: Prepared) -> np.ndarray:
    """Step 8: binary lesion crop at 0.5 mm iso -> uint8 mask on the native grid and orientation."""
    lesion_crop = rescale_grid(lesion_iso, prep.crop.shape)
    lesion_res = uncrop(lesion_crop, prep.starts, prep.res_shape)
    lesion_rpi = rescale_grid(lesion_res, prep.shape) >= PATCH_THRESHOLD
    return np.ascontiguousarray(prep.reorientation.undo(lesion_rpi.astype(np.uint8)))


def run_legacy(data: np.ndarray, affine: np.ndarray, cord: np.ndarray, task: str,
               model: OnnxModel) -> tuple[np.ndarray, Prepared]:
    """The whole legacy pipeline on arrays -> (uint8 mask on the input grid, the prepared crop)."""
    prep = prepare(data, affine, cord, task)
    lesion_iso = predict_patches(prep.crop_iso, model, contrast_for(task))
    return restore(lesion_iso, prep), prep


def _check_same_grid(img: nib.Nifti1Image, cord: nib.Nifti1Image) -> None:
    if not same_grid(cord, img):
        raise InputImageError(f"{img.get_filename() or 'image'}: the cord mask is not on the image grid "
                              f"(shape {cord.shape} vs {img.shape})")


@lru_cache(maxsize=8)
def load_model(path: str, device: str = "cpu") -> OnnxModel:
    """One onnxruntime session per model file and device, built once per process."""
    return OnnxModel(path, device=device)


@dataclass(frozen=True)
class LegacyOutput:
    """A legacy model's outputs on the input grid (uint8 0/1 ``mask``, the ``cord`` it followed), the
    ``threshold`` that made the mask and the facts of the run (``details``, for provenance)."""

    mask: nib.Nifti1Image
    cord: nib.Nifti1Image
    threshold: float
    details: dict


def segment_legacy(img: nib.Nifti1Image, *, task: str, model: OnnxModel | str | Path,
                   cord: nib.Nifti1Image, device: str = "cpu") -> LegacyOutput:
    """Segment lesions with a legacy ``sct_deepseg_lesion`` model.

    ``cord`` is a binary cord mask on the grid of ``img`` (from the ``spinalcord`` model); it gives the
    centreline SCT would find with OptiC. ``model`` is an :class:`OnnxModel` or the path of the task's
    ``.onnx`` file. The mask is uint8 0/1 on the exact grid of ``img``; there is no soft output (SCT
    thresholds every patch at 0.1).
    """
    contrast = contrast_for(task)
    name = img.get_filename() or "image"
    _check_same_grid(img, cord)
    onnx = model if isinstance(model, OnnxModel) else load_model(str(Path(model).resolve()), str(device))
    try:
        mask, _ = run_legacy(np.asanyarray(img.dataobj), img.affine, np.asanyarray(cord.dataobj), task, onnx)
    except ValueError as exc:
        raise InputImageError(f"{name}: legacy {task}: {exc}") from exc
    details = {"provider": onnx.provider, "model_file": onnx.path.name,
               "centerline": "spinalcord mask as SCT's spinalcord makes it (window step 0.5, largest "
                             "object), centre of mass per axial slice",
               "patch_mean": contrast.mean, "patch_std": contrast.std}
    if onnx.metadata:  # the demo files say what they are (the official ones carry none)
        details["model_metadata"] = dict(onnx.metadata)
    log.info("legacy %s: %d lesion voxels", task, int(mask.sum()))
    return LegacyOutput(mask=like(img, mask, np.uint8),
                        cord=like(img, (np.asanyarray(cord.dataobj) > 0).astype(np.uint8), np.uint8),
                        threshold=PATCH_THRESHOLD, details=details)
