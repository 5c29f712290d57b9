"""Phantoms with analytic truth for the lesion-analysis tests.

``tube_phantom``: a straight cord (a tube of radius R along a line tilted in the sagittal plane) with
ellipsoid lesions defined in the cord's own frame (u: R-L, v: A-P perpendicular to the cord, s: along it),
sampled at voxel centres on any grid. ``two_sessions``: the demo phantom generator's realistic anatomy
(vertebrae, CSF, bias, noise: something to register) at two sessions, the follow-up with one lesion
grown and one new, on another grid and moved by a known rigid transform (the subject moved).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import nibabel as nib
import numpy as np

from bidsapp.demo.phantom import Anatomy, Appearance, Grid, Lesion, grid_affine, make_phantom


@dataclass(frozen=True)
class TubeLesion:
    """Ellipsoid in the cord frame: centre (u, v, s) mm, semi-axes (a: R-L, b: A-P, c: along the cord)."""

    u: float
    v: float
    s: float
    a: float
    b: float
    c: float

    @property
    def volume_mm3(self) -> float:
        return 4 / 3 * math.pi * self.a * self.b * self.c


@dataclass(frozen=True)
class Tube:
    mask: nib.Nifti1Image
    cord: nib.Nifti1Image
    lesions: tuple[TubeLesion, ...]
    radius: float
    tilt_deg: float


def _frame(tilt_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors of the cord frame in RAS: u (R-L), v (A-P, perpendicular to the cord), w (along it)."""
    t = math.radians(tilt_deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([1.0, 0, 0]), np.array([0, c, -s]), np.array([0, s, c])


def tube_phantom(lesions: tuple[TubeLesion, ...], *, radius: float = 5.0, tilt_deg: float = 0.0,
                 orientation: tuple[str, str, str] = ("R", "A", "S"),
                 voxel: tuple[float, float, float] = (0.5, 0.5, 1.0),
                 fov: tuple[float, float, float] = (30.0, 30.0, 60.0)) -> Tube:
    """Binary lesion and cord masks on a grid with array axes pointing to ``orientation``."""
    world = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    shape = tuple(int(round(fov[world[c]] / v)) for c, v in zip(orientation, voxel, strict=True))
    affine = grid_affine(orientation, voxel, shape)
    ijk = np.indices(shape, dtype=float).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    eu, ev, ew = _frame(tilt_deg)
    u, v, s = eu @ xyz, ev @ xyz, ew @ xyz
    cord = (u ** 2 + v ** 2 <= radius ** 2).reshape(shape)
    lesion = np.zeros(xyz.shape[1], bool)
    for les in lesions:
        lesion |= ((u - les.u) / les.a) ** 2 + ((v - les.v) / les.b) ** 2 + ((s - les.s) / les.c) ** 2 <= 1
    img = lambda data: nib.Nifti1Image(data.reshape(shape).astype(np.uint8), affine)  # noqa: E731
    return Tube(img(lesion), img(cord), lesions, radius, tilt_deg)


# ------------------------------------------------------------------------------------- two sessions
ANATOMY = Anatomy(ax=1.0, kx=2 * math.pi / 200, px=0.3, ay=3.0, ky=2 * math.pi / 160, py=1.0, rx=4.6,
                  ry=3.6, swell=0.04, z_swell=10.0, csf_margin=(2.5, 3.0, 2.0), vertebra_period=17.0,
                  vertebra_phase=0.3)
STABLE = (Lesion(u=0.3, v=0.3, z=-24.0, semi_axes=(1.6, 1.4, 4.0)),
          Lesion(u=-0.3, v=-0.2, z=20.0, semi_axes=(1.8, 1.4, 3.5)))
GROWING = Lesion(u=0.0, v=0.35, z=0.0, semi_axes=(1.2, 1.0, 2.5))
GROWN = replace(GROWING, semi_axes=(1.7, 1.5, 4.0))
NEW = Lesion(u=-0.2, v=-0.3, z=-10.0, semi_axes=(1.5, 1.3, 2.5))


def rigid_ras(rotation_deg: tuple[float, float, float], shift_mm: tuple[float, float, float]) -> np.ndarray:
    """4x4 rigid motion in RAS mm (rotations about x, y, z in that order, then the shift)."""
    rx, ry, rz = (math.radians(a) for a in rotation_deg)
    cx, sx, cy, sy = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry)
    cz, sz = math.cos(rz), math.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = mz @ my @ mx
    m[:3, 3] = shift_mm
    return m


@dataclass(frozen=True)
class Sessions:
    baseline_image: nib.Nifti1Image
    baseline_mask: nib.Nifti1Image
    baseline_cord: nib.Nifti1Image
    followup_image: nib.Nifti1Image
    followup_mask: nib.Nifti1Image
    followup_cord: nib.Nifti1Image
    motion: np.ndarray  # follow-up world = motion @ baseline world (same anatomy point)


def _moved(img: nib.Nifti1Image, motion: np.ndarray) -> nib.Nifti1Image:
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), motion @ img.affine)
    out.set_qform(out.affine, 1)
    out.set_sform(out.affine, 1)
    return out


@functools.lru_cache(maxsize=4)
def two_sessions(*, orientation: tuple[str, str, str] = ("R", "A", "S"),
                 voxel: tuple[float, float, float] = (0.8, 0.8, 0.8),
                 rotation_deg: tuple[float, float, float] = (6.0, 2.0, -3.0),
                 shift_mm: tuple[float, float, float] = (3.0, -2.0, 4.0), seed: int = 3) -> Sessions:
    """Baseline (P-S-R sagittal grid, 0.8 mm) and follow-up (``orientation``, ``voxel``), the follow-up
    with ``GROWING`` grown and ``NEW`` added, its grid moved by a rigid motion (cached: the tests share
    them; do not modify the images)."""
    motion = rigid_ras(rotation_deg, shift_mm)
    rng = np.random.default_rng(seed)
    look = Appearance(noise=0.01, bias=0.1, intensity_jitter=0.0)
    fov, centre = (36.0, 44.0, 80.0), (0.0, 2.0, 0.0)
    base = make_phantom("T2w", rng=rng, anatomy=replace(ANATOMY, lesions=STABLE + (GROWING,)), look=look,
                        grid=Grid(("P", "S", "R"), (0.8, 0.8, 0.8), fov, centre, tilt_deg=0.0))
    follow = make_phantom("T2w", rng=rng, anatomy=replace(ANATOMY, lesions=STABLE + (GROWN, NEW)), look=look,
                          grid=Grid(orientation, voxel, fov, centre, tilt_deg=3.0))
    return Sessions(base.image, base.lesion, base.cord, _moved(follow.image, motion),
                    _moved(follow.lesion, motion), _moved(follow.cord, motion), motion)
