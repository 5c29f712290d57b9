"""nnU-Net's default resampling (``resample_data_or_seg_to_shape``), reproduced with scipy.ndimage.

nnU-Net resizes with ``skimage.transform.resize(x, shape, order, mode="edge", anti_aliasing=False)``,
which is ``scipy.ndimage.zoom(x, out/in, order, mode="nearest", grid_mode=True)`` followed by
clipping to the input's range; we call that directly. When either spacing is anisotropic (max/min >
3) and a single axis is the coarse one, nnU-Net resizes each slice in-plane with ``order`` and then
the coarse axis with ``order_z`` (nearest by default) through ``map_coordinates``; so do we. nnU-Net
computes in float64 and stores the result in the input's dtype. For float32 data we let scipy write
float32 directly (it computes splines in float64 and rounds once: the same values); float16 data (the
logits) are widened to float64 and the result rounded once to float16, as nnU-Net does.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

ANISO_THRESHOLD = 3.0


def compute_new_shape(old_shape: Sequence[int], old_spacing: Sequence[float],
                      new_spacing: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``: ``round(old_spacing / new_spacing * old_shape)``."""
    return tuple(int(round(i / j * k)) for i, j, k in zip(old_spacing, new_spacing, old_shape, strict=True))


def _lowres_axes(spacing: Sequence[float]) -> np.ndarray:
    spacing = np.asarray(spacing, float)
    return np.where(spacing.max() / spacing == 1)[0]


def separate_z_axis(current_spacing: Sequence[float], new_spacing: Sequence[float],
                    force_separate_z: bool | None = None,
                    threshold: float = ANISO_THRESHOLD) -> int | None:
    """The axis nnU-Net resamples separately, or None (``determine_do_sep_z_and_axis``)."""
    if force_separate_z is not None:
        axes = _lowres_axes(current_spacing) if force_separate_z else None
    elif max(current_spacing) / min(current_spacing) > threshold:
        axes = _lowres_axes(current_spacing)
    elif max(new_spacing) / min(new_spacing) > threshold:
        axes = _lowres_axes(new_spacing)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return None
    return int(axes[0])


def resize(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``skimage.transform.resize(image, shape, order, mode="edge", anti_aliasing=False)``, dtype kept."""
    factors = [o / i for o, i in zip(shape, image.shape, strict=True)]
    out = ndi.zoom(image, factors, order=order, mode="nearest", grid_mode=True)
    if order > 0:  # skimage clips interpolated values to the input range
        np.clip(out, image.min(), image.max(), out=out)
    return out


def _nearest_indices(n_in: int, n_out: int, order_z: int) -> np.ndarray:
    """The source index ``map_coordinates(order=0, mode="nearest")`` picks for each output position
    with nnU-Net's coordinates ``scale * (i + 0.5) - 0.5`` (same rounding as scipy, ties included)."""
    coords = float(n_in) / n_out * (np.arange(n_out) + 0.5) - 0.5
    return ndi.map_coordinates(np.arange(n_in, dtype=float), coords[None], order=order_z,
                               mode="nearest").round().astype(int)


def _resize_along(data: np.ndarray, axis: int, n_out: int, order_z: int) -> np.ndarray:
    n_in = data.shape[axis]
    if order_z == 0:
        return np.take(data, _nearest_indices(n_in, n_out, 0), axis=axis)
    coords = np.meshgrid(*[np.arange(s, dtype=float) if d != axis else
                           float(n_in) / n_out * (np.arange(n_out) + 0.5) - 0.5
                           for d, s in enumerate(data.shape)], indexing="ij")
    return ndi.map_coordinates(data, np.stack(coords), order=order_z, mode="nearest").astype(data.dtype)


def _resample_channel(x: np.ndarray, shape: tuple[int, ...], order: int, axis: int | None,
                      order_z: int) -> np.ndarray:
    if axis is None:
        return resize(x, shape, order)
    inplane = tuple(s for d, s in enumerate(shape) if d != axis)
    slices = [resize(np.take(x, i, axis=axis), inplane, order) for i in range(x.shape[axis])]
    out = np.stack(slices, axis=axis)
    if out.shape[axis] != shape[axis]:
        out = _resize_along(out, axis, shape[axis], order_z)
    return out


def resample_to_shape(data: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                      new_spacing: Sequence[float], *, order: int = 3, order_z: int = 0,
                      force_separate_z: bool | None = None) -> np.ndarray:
    """``resample_data_or_seg_to_shape(is_seg=False)`` for ``data`` of shape (c, x, y, z).

    Returns ``data`` itself when the shape does not change, else a new array of ``data.dtype``.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data
    axis = separate_z_axis(current_spacing, new_spacing, force_separate_z)
    out = np.empty((data.shape[0], *new_shape), dtype=data.dtype)
    for c in range(data.shape[0]):
        x = data[c].astype(np.float64) if data.dtype == np.float16 else data[c]  # scipy has no float16
        out[c] = _resample_channel(x, new_shape, order, axis, order_z)
    return out
