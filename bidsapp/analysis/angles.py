"""The cord's angle per axial slice, as SCT 7.3's ``sct_analyze_lesion.angle_correction``.

The centreline is the cord's centre of mass per axial slice (SCT ``find_and_sort_coord``), fitted by a
smoothing cubic B-spline (SCT ``curve_fitting.bspline`` with ``smooth=20``) evaluated on every slice
(``minmax=False``). The tangent ``(dx/dz * px, dy/dz * py, pz)`` gives ``angle_3d`` (vs S-I) and its
projection on the sagittal plane ``(0, dy/dz * py, pz)`` gives ``angle_sagittal``. Arrays on the RPI grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import interpolate

#: SCT's centreline smoothing (``ParamCenterline(smooth=20)``, B-spline of degree 3).
CENTERLINE_SMOOTH = 20.0


@dataclass(frozen=True)
class Angles:
    """Per-axial-slice cord angles (radians): 3D and projected on the sagittal plane."""

    angle_3d: np.ndarray
    angle_sagittal: np.ndarray


def cord_angles(cord: np.ndarray, spacing: tuple[float, float, float]) -> Angles:
    """SCT ``angle_correction``: per axial slice (last axis), the angles of the fitted centreline's tangent.

    With fewer than 2 cord slices every angle is 0: no correction.
    """
    nz = cord.shape[2]
    zs = np.flatnonzero(cord.any(axis=(0, 1)))
    if zs.size < 2:
        return Angles(np.zeros(nz), np.zeros(nz))
    com = slice_centres(cord)[zs]  # (n, 2): x, y in voxels
    px, py, pz = spacing
    z_ref = np.arange(nz, dtype=float)
    dx = smoothing_bspline(zs.astype(float), com[:, 0], z_ref, pz, der=1)
    dy = smoothing_bspline(zs.astype(float), com[:, 1], z_ref, pz, der=1)
    t3 = np.stack([dx * px, dy * py, np.full(nz, pz)], axis=1)
    ts = np.stack([np.zeros(nz), dy * py, np.full(nz, pz)], axis=1)
    angle_3d = np.arccos(np.clip(t3[:, 2] / np.linalg.norm(t3, axis=1), -1, 1))
    angle_sag = np.arccos(np.clip(ts[:, 2] / np.linalg.norm(ts, axis=1), -1, 1))
    return Angles(angle_3d, angle_sag)


def slice_centres(mask: np.ndarray) -> np.ndarray:
    """Per axial slice, the (x, y) centre of mass of ``mask`` in voxels (NaN for empty slices):
    SCT's ``find_and_sort_coord``, in one pass instead of one ``center_of_mass`` per slice."""
    counts = mask.sum(axis=(0, 1), dtype=np.int64).astype(float)
    xs = mask.sum(axis=1, dtype=np.int64).T @ np.arange(mask.shape[0])
    ys = mask.sum(axis=0, dtype=np.int64).T @ np.arange(mask.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([xs / counts, ys / counts], axis=1)


def smoothing_bspline(z: np.ndarray, v: np.ndarray, z_ref: np.ndarray, pz: float, *, der: int) -> np.ndarray:
    """SCT ``curve_fitting.bspline`` (smooth=20): the fit of ``v(z)`` evaluated on ``z_ref`` (``der=0``) or
    its first derivative (``der=1``); smoothing factor ``density * smooth * pz / 3``, density
    ``(len(z) / len(z_ref)) ** 2``."""
    degree = 3 if len(z) > 3 else 1  # SCT: "if len(x) <= deg_bspline: deg_bspline -= 2"
    density = (float(len(z)) / len(z_ref)) ** 2
    tck = interpolate.splrep(z, v, s=density * CENTERLINE_SMOOTH * pz / 3.0, k=degree)
    return np.asarray(interpolate.splev(z_ref, tck, der=der), float)


