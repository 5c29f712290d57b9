"""Which slices and which part of each slice the QC pictures show (pure geometry on RAS arrays).

Arrays here are reoriented to nibabel RAS (axis 0 towards Right, 1 towards Anterior, 2 towards
Superior), so an axial slice is ``a[:, :, z]`` and a sagittal slice ``a[x, :, :]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..metrics import label_lesions

MAX_AXIAL_TILES = 40       # a mosaic readable on one screen; every lesion still gets a tile past this
CONTEXT_TILES = 8          # evenly spaced cord slices shown besides the lesion slices
AXIAL_FOV_MM = 48.0        # square window around the cord (cord ~10-15 mm wide, plus surroundings)
NOCORD_FOV_MM = 100.0      # without a cord mask: a wider window around the image centre
SAGITTAL_SLICES = 3        # cord centre plus the sagittal slices holding most lesion voxels


@dataclass(frozen=True)
class Window:
    """A rectangle in voxel indices ``[lo, hi)`` along two array axes (may extend past the image)."""

    lo: tuple[int, int]
    hi: tuple[int, int]


def _even(lo: int, hi: int, n: int) -> list[int]:
    """``n`` evenly spaced integers from ``lo`` to ``hi`` inclusive (fewer when the range is short)."""
    if n <= 0 or hi < lo:
        return []
    return sorted({int(round(v)) for v in np.linspace(lo, hi, n)})


def cord_z_extent(cord: np.ndarray | None, nz: int) -> tuple[int, int]:
    """First and last axial slice holding cord; the whole image without a cord mask or when empty."""
    if cord is None or not cord.any():
        return 0, nz - 1
    zs = np.flatnonzero(cord.any(axis=(0, 1)))
    return int(zs[0]), int(zs[-1])


def choose_axial_slices(mask: np.ndarray, cord: np.ndarray | None, *,
                        max_tiles: int = MAX_AXIAL_TILES, context: int = CONTEXT_TILES) -> list[int]:
    """Axial slices for the mosaic: every lesion slice plus evenly spaced cord slices.

    When lesions span more slices than fit, each lesion keeps its largest-area slice (so every lesion
    is shown at least once, even past ``max_tiles``) and the remaining lesion slices are thinned evenly.
    """
    lesion_z = np.flatnonzero(mask.any(axis=(0, 1))).tolist()
    room = max(max_tiles - context, 0)
    if len(lesion_z) <= room:
        chosen = set(lesion_z)
    else:
        labels, n = label_lesions(mask)
        areas = np.stack([np.bincount(labels[:, :, z].ravel(), minlength=n + 1)
                          for z in range(mask.shape[2])])
        chosen = {int(np.argmax(areas[:, k])) for k in range(1, n + 1)}
        extra = room - len(chosen)
        if extra > 0:
            chosen |= {lesion_z[i] for i in _even(0, len(lesion_z) - 1, extra)}
    lo, hi = cord_z_extent(cord, mask.shape[2])
    chosen |= set(_even(lo, hi, context))
    return sorted(chosen)


def _centre_xy(cord: np.ndarray | None, z: int, shape: tuple[int, ...]) -> tuple[float, float]:
    """In-plane centre for slice ``z``: the cord on that slice, else the whole cord, else the image."""
    if cord is not None:
        for region in (cord[:, :, z], cord.any(axis=2)):
            if region.any():
                cx, cy = ndimage.center_of_mass(region)
                return float(cx), float(cy)
    return (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0


def axial_window(mask: np.ndarray, cord: np.ndarray | None, z: int,
                 zooms: tuple[float, float, float]) -> Window:
    """Square (in mm) window for axial slice ``z``, centred on the cord and grown to hold its lesions."""
    fov = AXIAL_FOV_MM if cord is not None and cord.any() else \
        min(NOCORD_FOV_MM, max(mask.shape[0] * zooms[0], mask.shape[1] * zooms[1]))
    cx, cy = _centre_xy(cord, z, mask.shape)
    half_mm = fov / 2.0
    lesion = np.argwhere(mask[:, :, z])
    if lesion.size:
        # Grow the half-width until the lesion bounding box (plus 2 mm) fits: lesions are never cut.
        dx_mm = max(abs(lesion[:, 0].min() - cx), abs(lesion[:, 0].max() - cx)) * zooms[0] + 2.0
        dy_mm = max(abs(lesion[:, 1].min() - cy), abs(lesion[:, 1].max() - cy)) * zooms[1] + 2.0
        half_mm = max(half_mm, dx_mm, dy_mm)
    hx, hy = half_mm / zooms[0], half_mm / zooms[1]
    lo = (int(np.floor(cx - hx)), int(np.floor(cy - hy)))
    return Window(lo=lo, hi=(max(lo[0] + 1, int(np.ceil(cx + hx))), max(lo[1] + 1, int(np.ceil(cy + hy)))))


def sagittal_window(mask: np.ndarray, cord: np.ndarray | None, zooms: tuple[float, float, float]) -> Window:
    """Window over (y, z) for the sagittal view: the cord and lesions plus a margin, else everything."""
    region = mask.any(axis=0)
    if cord is not None:
        region = region | cord.any(axis=0)
    if cord is None or not cord.any():
        # No cord: the same A-P width as the axial tiles, around the image centre, all slices.
        half = min(NOCORD_FOV_MM, mask.shape[1] * zooms[1]) / 2.0 / zooms[1]
        centre = (mask.shape[1] - 1) / 2.0
        lo_y = int(np.floor(centre - half))
        return Window(lo=(lo_y, 0), hi=(max(lo_y + 1, int(np.ceil(centre + half))), mask.shape[2]))
    ys, zs = np.nonzero(region)
    my, mz = 20.0 / zooms[1], 10.0 / zooms[2]          # 20 mm front/back, 10 mm above/below
    lo = (max(0, int(ys.min() - my)), max(0, int(zs.min() - mz)))
    hi = (min(mask.shape[1], int(ys.max() + my) + 1), min(mask.shape[2], int(zs.max() + mz) + 1))
    return Window(lo=lo, hi=hi)


def choose_sagittal_slices(mask: np.ndarray, cord: np.ndarray | None,
                           n: int = SAGITTAL_SLICES) -> list[int]:
    """Sagittal slices: through the cord centre (or image centre), then those richest in lesion voxels."""
    if cord is not None and cord.any():
        centre = int(round(ndimage.center_of_mass(cord)[0]))
    else:
        centre = (mask.shape[0] - 1) // 2
    chosen = [centre]
    per_x = mask.sum(axis=(1, 2))
    for x in np.argsort(-per_x, kind="stable"):
        if len(chosen) >= n or per_x[x] == 0:
            break
        if int(x) not in chosen:
            chosen.append(int(x))
    return sorted(chosen)


def crop(plane: np.ndarray, window: Window, fill: float = 0.0) -> np.ndarray:
    """Cut ``window`` out of a 2D array, padding with ``fill`` where it extends past the edges."""
    out = np.full((window.hi[0] - window.lo[0], window.hi[1] - window.lo[1]), fill, dtype=plane.dtype)
    src_lo = [max(0, window.lo[i]) for i in range(2)]
    src_hi = [min(plane.shape[i], window.hi[i]) for i in range(2)]
    if src_hi[0] > src_lo[0] and src_hi[1] > src_lo[1]:
        dst = tuple(slice(src_lo[i] - window.lo[i], src_hi[i] - window.lo[i]) for i in range(2))
        out[dst] = plane[src_lo[0]:src_hi[0], src_lo[1]:src_hi[1]]
    return out
