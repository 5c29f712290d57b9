"""Midsagittal tissue bridges, as SCT 7.3's ``sct_analyze_lesion`` (Huber et al., Ann Neurol 2017).

All arrays are on SCT's RPI grid (axis 0 R-L, axis 1 A-P with anterior = higher index, axis 2 S-I):
dorsal = towards index 0 of axis 1, ventral = towards its end.

1. One interpolated midsagittal position for the whole image: the mean R-L centre of mass of the cord
   over the 5 axial slices around the S-I centre of mass of the largest lesion (SCT
   ``get_midsagittal_slice``); the two sagittal slices either side of it are interpolated linearly.
2. Per lesion and per axial slice where the lesion lies on one of the two slices: dorsal bridge =
   first lesion voxel - first cord voxel, ventral = last cord voxel - last lesion voxel (voxels, >= 0);
   interpolated between the two slices (a slice without the lesion falls back to the other one),
   times the A-P voxel size and ``cos(angle_sagittal)``; the lesion's bridges are the minima over its
   axial slices, total = dorsal + ventral.
3. A lesion on neither slice (parasagittal): the smallest interpolated cord A-P diameter over its axial
   slices, split half dorsal, half ventral (SCT 7.3, issue #5123).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .angles import Angles


@dataclass(frozen=True)
class Midsagittal:
    """Interpolated midsagittal position (float R-L index, RPI grid) and its two sagittal slices."""

    position: float
    slices: tuple[int, int]

    @property
    def factor(self) -> float:
        return self.position - int(self.position)

    def interpolate(self, a: float, b: float) -> float:
        """SCT ``_interpolate_values``: a NaN side falls back to the other; both NaN stays NaN."""
        if math.isnan(a):
            a = b
        if math.isnan(b):
            b = a
        return (1 - self.factor) * a + self.factor * b


@dataclass(frozen=True)
class Bridges:
    dorsal_mm: float
    ventral_mm: float

    @property
    def total_mm(self) -> float:
        return self.dorsal_mm + self.ventral_mm


def midsagittal(largest: np.ndarray, cord: np.ndarray, z0: int = 0) -> Midsagittal | None:
    """Midsagittal position from the largest lesion (RPI bool, inside the cord; a slab of axial slices
    starting at ``z0``) and the whole cord mask."""
    if not largest.any():
        return None
    z_center = int(round(ndimage.center_of_mass(largest)[2] + z0))
    xs = [ndimage.center_of_mass(cord[:, :, z])[0] for z in range(z_center - 2, z_center + 3)
          if 0 <= z < cord.shape[2] and cord[:, :, z].any()]
    if not xs:
        return None
    position = float(np.mean(xs))
    s1, s2 = int(math.floor(position)), int(math.ceil(position))
    return Midsagittal(position, (s1, min(s2, cord.shape[0] - 1)))


def _bridge_voxels(lesion_line: np.ndarray, cord_line: np.ndarray) -> tuple[float, float]:
    """(dorsal, ventral) bridge in voxels on one A-P line; NaN when the lesion is not on it."""
    ls = np.flatnonzero(lesion_line)
    cs = np.flatnonzero(cord_line)
    if ls.size == 0 or cs.size == 0:
        return math.nan, math.nan
    return float(max(ls[0] - cs[0], 0)), float(max(cs[-1] - ls[-1], 0))


def tissue_bridges(lesion: np.ndarray, cord: np.ndarray, mid: Midsagittal,
                   spacing: tuple[float, float, float], angles: Angles) -> Bridges | None:
    """Dorsal and ventral midsagittal bridges (mm) of one lesion (RPI bool, restricted to the cord)."""
    py = spacing[1]
    s1, s2 = mid.slices
    on_mid = lesion[s1].any(axis=0) | lesion[s2].any(axis=0)  # (nz,) axial slices with lesion on a slice
    zs = np.flatnonzero(on_mid)
    if zs.size == 0:
        return _parasagittal(lesion, cord, mid, spacing, angles)
    dorsal, ventral = [], []
    for z in zs:
        d1, v1 = _bridge_voxels(lesion[s1, :, z], cord[s1, :, z])
        d2, v2 = _bridge_voxels(lesion[s2, :, z], cord[s2, :, z])
        scale = py * math.cos(angles.angle_sagittal[z])
        dorsal.append(mid.interpolate(d1, d2) * scale)
        ventral.append(mid.interpolate(v1, v2) * scale)
    return Bridges(float(np.nanmin(dorsal)), float(np.nanmin(ventral)))


def _parasagittal(lesion: np.ndarray, cord: np.ndarray, mid: Midsagittal, spacing: tuple[float, float, float],
                  angles: Angles) -> Bridges | None:
    """SCT's proxy: the smallest midsagittal cord A-P diameter over the lesion's axial slices, halved."""
    s1, s2 = mid.slices
    diameters = []
    for z in np.flatnonzero(lesion.any(axis=(0, 1))):
        n1, n2 = np.count_nonzero(cord[s1, :, z]), np.count_nonzero(cord[s2, :, z])
        if n1 and n2:
            diameters.append(mid.interpolate(n1, n2) * spacing[1] * math.cos(angles.angle_sagittal[z]))
    if not diameters:
        return None
    d = float(min(diameters))
    return Bridges(d / 2, d / 2)
