"""nnU-Net's default preprocessing steps: crop to the non-zero box, per-channel normalisation.

Each function mirrors the nnunetv2 one named in its docstring, on float32 arrays of shape (c, ...).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from scipy.ndimage import binary_fill_holes

from ..errors import ModelError

BBox = list[list[int]]  # half-open [start, end) per axis, as nnU-Net's


def nonzero_bbox(data: np.ndarray) -> tuple[BBox, np.ndarray]:
    """``create_nonzero_mask`` + ``get_bbox_from_mask``: the box of the hole-filled mask of voxels
    non-zero in any channel, and that mask cropped to the box (whole array when all zero)."""
    mask = np.any(data != 0, axis=0)
    mask = binary_fill_holes(mask)
    bbox = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        bbox.append([int(hit[0]), int(hit[-1]) + 1] if hit.size else [0, mask.shape[axis]])
    return bbox, mask[bbox_slices(bbox)]


def bbox_slices(bbox: BBox) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in bbox)


def insert_crop(full: np.ndarray, crop: np.ndarray, bbox: BBox) -> np.ndarray:
    """``insert_crop_into_image`` for arrays with leading channel axis: ``full[..., box] = crop``."""
    full[(Ellipsis, *bbox_slices(bbox))] = crop
    return full


def _zscore(image: np.ndarray, mask: np.ndarray | None, props: Mapping) -> np.ndarray:
    eps = 1e-8
    if mask is not None:
        mean = image[mask].mean()
        std = image[mask].std()
        image[mask] = (image[mask] - mean) / max(std, eps)
    else:
        mean = image.mean()
        std = image.std()
        image -= mean
        image /= max(std, eps)
    return image


def _ct(image: np.ndarray, mask: np.ndarray | None, props: Mapping) -> np.ndarray:
    try:
        mean, std = props["mean"], props["std"]
        low, high = props["percentile_00_5"], props["percentile_99_5"]
    except (KeyError, TypeError) as exc:
        raise ModelError(f"plans.json: CTNormalization needs foreground intensity property {exc}") from exc
    np.clip(image, low, high, out=image)
    image -= mean
    image /= max(std, 1e-8)
    return image


def _none(image: np.ndarray, mask: np.ndarray | None, props: Mapping) -> np.ndarray:
    return image


def _rescale01(image: np.ndarray, mask: np.ndarray | None, props: Mapping) -> np.ndarray:
    image -= image.min()
    image /= np.clip(image.max(), a_min=1e-8, a_max=None)
    return image


def _rgb01(image: np.ndarray, mask: np.ndarray | None, props: Mapping) -> np.ndarray:
    image /= 255.0
    return image


NORMALIZERS: dict[str, Callable[[np.ndarray, np.ndarray | None, Mapping], np.ndarray]] = {
    "ZScoreNormalization": _zscore,
    "CTNormalization": _ct,
    "NoNormalization": _none,
    "RescaleTo01Normalization": _rescale01,
    "RGBTo01Normalization": _rgb01,
}


def normalize(data: np.ndarray, nonzero_mask: np.ndarray, config: Mapping,
              intensity_properties: Mapping[str, Mapping] | None) -> np.ndarray:
    """``DefaultPreprocessor._normalize`` in place on float32 ``data`` (c, ...); returns ``data``.

    Only ZScore uses the mask (``use_mask_for_norm``), as in nnU-Net.
    """
    schemes = config["normalization_schemes"]
    use_mask = config.get("use_mask_for_norm") or [False] * len(schemes)
    for c, scheme in enumerate(schemes):
        fn = NORMALIZERS.get(scheme)
        if fn is None:
            raise ModelError(f"plans.json: unsupported normalization {scheme!r} "
                             f"(supported: {', '.join(NORMALIZERS)})")
        mask = nonzero_mask if (use_mask[c] and fn is _zscore) else None
        props = (intensity_properties or {}).get(str(c), {})
        data[c] = fn(data[c], mask, props)
    return data
