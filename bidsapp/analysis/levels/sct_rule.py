"""SCT 7.3's ``sct_label_vertebrae -discfile`` rule, ported: a cord mask and disc labels -> the cord's levels.

What SCT does (``scripts/sct_label_vertebrae.py`` with ``-discfile``: ``labels.project_centerline``, then
``labels.label_regions_from_reference``, both on ``centerline.core.get_centerline``), step by step:

1. **Centreline.** The cord mask reoriented to RPI; on each axial slice holding cord, the mean voxel index
   (``find_and_sort_coord``); x(z) and y(z) fitted by SCT's smoothing B-spline (``smooth=20``) on every slice
   from the cord's first to its last (``minmax``); the points taken back to the image's own voxel axes.
2. **Projection.** Each disc label, on any grid (in millimetres), goes to the nearest centreline point
   (KDTree), rounded to a voxel of the cord's grid; two discs on one voxel: the later one (C order of the disc
   image) stays.
3. **Regions.** The centreline points truncated to whole voxels (``astype(int)``), in millimetres; each
   projected disc and each cord voxel takes its nearest such point; the projected discs sorted along the
   centreline (inferior first) cut it into regions: a voxel takes the value of the first disc at or above its
   point (``searchsorted``), above the top disc that disc's value minus one. Level k therefore runs from
   disc k down to disc k + 1, and below the lowest disc the level is that disc's value.

Floating point is reproduced operation by operation (affines as the NIfTI header stores them, i.e. float32,
the header's round trip through RPI, homogeneous ``matmul``), so that ties in distance fall as in SCT.
Beyond SCT, :class:`LevelRule` also says how far a voxel lies beyond the outermost disc (``beyond``), in
disc spacings, which flags extrapolated levels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from nibabel import orientations as nio
from scipy.spatial import KDTree

from ...engine.spacing import sct_zoom
from ...errors import InputImageError
from ...imaging import like
from ...orientation import Reorientation, to_sct_orientation
from ..angles import slice_centres, smoothing_bspline
from ..lesions import binary_data

#: SCT's working orientation for the centreline (nibabel ("L", "A", "S"))
RPI = "RPI"


@dataclass(frozen=True)
class DiscPoints:
    """Disc labels as SCT reads a ``-discfile``: the labelled voxels in C order of the disc image, their SCT
    values, and that image's header affine (its grid may differ from the cord's: projection is in mm)."""

    values: np.ndarray  # (L,) int
    voxels: np.ndarray  # (L, 3) int, np.argwhere order
    affine: np.ndarray  # 4x4, the disc image's affine as SCT reads it (sct_affine)
    shape: tuple[int, int, int]
    name: str  # the file, for messages
    ignored: tuple[int, ...] = ()  # landmark values read but left out (49, 50)

    @property
    def mm(self) -> np.ndarray:
        """(L, 3) scanner coordinates of the labels (SCT ``transfo_pix2phys``)."""
        return pix2phys(self.affine, self.voxels)


@dataclass(frozen=True)
class Centreline:
    """SCT ``get_centerline`` of a cord mask: one point per axial slice from the cord's lowest to its highest,
    inferior first. ``native``: voxel coordinates on the cord image's own axes (``space='pix'``); ``mm``: the
    same points in scanner mm as ``space='phys'`` gives them (what ``project_centerline`` uses)."""

    native: np.ndarray  # (N, 3) float
    mm: np.ndarray  # (N, 3) float

    @property
    def arc_mm(self) -> np.ndarray:
        """(N,) distance along the centreline from its inferior end, mm."""
        steps = np.linalg.norm(np.diff(self.mm, axis=0), axis=1)
        return np.concatenate([[0.0], np.cumsum(steps)])


@dataclass(frozen=True)
class VoxelLevels:
    """Levels of some voxels of one grid: ``level`` (int16, 0 = no level) and ``beyond`` (float32: how far the
    voxel lies beyond the outermost disc, in disc spacings; 0 between the discs, inf without a spacing)."""

    level: np.ndarray
    beyond: np.ndarray


def sct_affine(header: nib.Nifti1Header) -> np.ndarray:
    """The affine SCT's ``Image`` uses: ``header.get_best_affine()`` (the sform when its code is set, as
    stored: float32) with SCT's permissive quaternion threshold for a qform-only header."""
    header = header.copy()
    header.quaternion_threshold = -1e-6
    return header.get_best_affine()


def pix2phys(affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """SCT ``Image.transfo_pix2phys(mode='absolute')``: homogeneous ``matmul``, the same operations."""
    coords = np.asarray(voxels, dtype=np.float64).reshape(-1, 3)
    augmented = np.hstack([coords, np.ones((len(coords), 1), dtype=np.float64)])
    return np.matmul(affine, augmented.T).T[:, :3]


def _phys2pix_rounded(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """SCT ``Image.transfo_phys2pix(real=True)``: inverse affine point by point, rounded (half to even)."""
    inverse = np.linalg.inv(affine)
    augmented = np.hstack((np.asarray(points), np.ones((len(points), 1))))
    out = np.empty((len(points), 3), dtype=np.float64)
    for i, coord in enumerate(augmented):
        out[i] = np.matmul(inverse, coord)[:3]
    return np.int32(np.round(out))


def _stored(header: nib.Nifti1Header, affine: np.ndarray, shape: tuple[int, ...]) -> nib.Nifti1Header:
    """The header SCT's ``change_orientation`` leaves: qform and sform set to ``affine`` (stored float32)."""
    out = header.copy()
    out.set_qform(affine)
    out.set_sform(affine)
    out.set_data_shape(shape)
    return out


def _cord_mask(cord: nib.Nifti1Image) -> np.ndarray:
    return binary_data(cord, "cord mask")


def centreline(cord: nib.Nifti1Image) -> Centreline:
    """SCT 7.3 ``get_centerline(cord, ParamCenterline())`` (B-spline, smooth 20, minmax).
    ``InputImageError`` naming the file when the cord covers fewer than two axial slices."""
    affine = sct_affine(cord.header)
    rpi, reo = to_sct_orientation(_cord_mask(cord), affine, RPI)
    rpi_header = _stored(cord.header, reo.affine, rpi.shape)
    pz = sct_zoom(rpi_header.get_zooms()[2])
    zs = np.flatnonzero(rpi.any(axis=(0, 1)))
    if zs.size < 2:
        name = cord.get_filename() or "cord mask"
        raise InputImageError(f"{name}: the cord mask covers {zs.size} axial slice(s); a centreline needs "
                              "two")
    centres = slice_centres(rpi)[zs]
    z_mean, z_ref = zs.astype(float), np.arange(zs[0], zs[-1] + 1)
    x = smoothing_bspline(z_mean, centres[:, 0], z_ref, pz, der=0)
    y = smoothing_bspline(z_mean, centres[:, 1], z_ref, pz, der=0)
    native = _to_native(np.array([x, y, z_ref]).T, reo, rpi.shape)
    # space='phys' uses the RPI copy turned back to the native orientation: the header round trip
    back = sct_affine(rpi_header) @ nio.inv_ornt_aff(reo.inverse, rpi.shape)
    back_affine = sct_affine(_stored(rpi_header, back, cord.shape[:3]))
    return Centreline(native=native, mm=pix2phys(back_affine, native))


def _to_native(points: np.ndarray, reo: Reorientation, rpi_shape: tuple[int, ...]) -> np.ndarray:
    """SCT ``Coordinate.permute(..., mode='absolute')`` from RPI back to the image's own axes."""
    out = np.empty_like(points)
    for axis, (rpi_axis, flip) in enumerate(reo.forward):
        j = int(rpi_axis)
        out[:, axis] = (rpi_shape[j] - 1) - points[:, j] if flip == -1 else points[:, j]
    return out


def project_discs(cord: nib.Nifti1Image, line: Centreline, discs: DiscPoints) -> dict[tuple[int, ...], int]:
    """SCT ``project_centerline``: each disc on the nearest centreline point, as a voxel of the cord's grid
    (clipped to it); ``{voxel: value}``, a later disc replacing an earlier one on the same voxel."""
    _, nearest = KDTree(line.mm).query(discs.mm)
    voxels = _phys2pix_rounded(sct_affine(cord.header), line.mm[nearest])
    voxels = voxels.clip(0, np.array(cord.shape[:3]) - 1)
    projected: dict[tuple[int, ...], int] = {}
    for voxel, value in zip(map(tuple, voxels.tolist()), discs.values.tolist(), strict=True):
        projected[voxel] = int(value)
    return projected


@dataclass(frozen=True)
class LevelRule:
    """SCT's regions for one cord: the truncated centreline (mm) and the projected discs along it."""

    points_mm: np.ndarray  # (N, 3) centreline truncated to voxels, in mm
    arc_mm: np.ndarray  # (N,) position along the centreline, mm
    region_indices: np.ndarray  # (L,) centreline index of each projected disc, inferior first
    region_values: np.ndarray  # (L + 1,) value below/at each disc, then above the top one
    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing_mm: float | None  # one disc spacing (median over the labelled discs), None with one disc
    tree: KDTree = field(repr=False, compare=False)

    def nearest(self, voxels: np.ndarray) -> np.ndarray:
        """Index of the nearest centreline point of each voxel (K, 3) of the cord's grid."""
        return self.tree.query(pix2phys(self.affine, voxels))[1]

    def voxel_levels(self, mask: np.ndarray) -> VoxelLevels:
        """Levels (and distance beyond the discs) of the voxels of ``mask`` (the cord: SCT's map; the cord
        and the lesions: a level for every lesion voxel by the same rule)."""
        voxels = np.argwhere(mask)
        nearest = self.nearest(voxels)
        level = np.zeros(self.shape, np.int16)
        level[tuple(voxels.T)] = self.region_values[np.searchsorted(self.region_indices, nearest)]
        low, high = self.arc_mm[self.region_indices[0]], self.arc_mm[self.region_indices[-1]]
        arc = self.arc_mm[nearest]
        beyond_mm = np.maximum(np.maximum(low - arc, arc - high), 0.0)
        beyond = np.zeros(self.shape, np.float32)
        # without a spacing (one disc) anything beyond the disc counts as extrapolated
        spacing = self.spacing_mm or 0.0
        beyond[tuple(voxels.T)] = beyond_mm / spacing if spacing else np.where(beyond_mm > 0, np.inf, 0.0)
        return VoxelLevels(level=level, beyond=beyond)


def level_rule(cord: nib.Nifti1Image, discs: DiscPoints, *, line: Centreline | None = None) -> LevelRule:
    """SCT's ``-discfile`` rule for this cord and these discs (``line``: the cord's :func:`centreline`, when
    already computed); ``ValueError`` without any disc."""
    if len(discs.values) == 0:
        raise ValueError(f"{discs.name}: no disc label")
    line = line if line is not None else centreline(cord)
    affine = sct_affine(cord.header)
    projected = project_discs(cord, line, discs)
    points = pix2phys(affine, line.native.astype(int))  # SCT: get_centerline(space='pix') -> astype(int)
    tree = KDTree(points)
    voxels = np.array(sorted(projected))  # np.argwhere order of the projected label image
    values = np.array([projected[v] for v in sorted(projected)], dtype=np.int64)
    indices = tree.query(pix2phys(affine, voxels))[1]
    order = np.argsort(indices, kind="stable")
    region_values = np.append(values[order], values[order][-1] - 1)
    return LevelRule(points_mm=points, arc_mm=line.arc_mm, region_indices=indices[order],
                     region_values=region_values, affine=affine, shape=tuple(cord.shape[:3]),
                     spacing_mm=disc_spacing_mm(discs), tree=tree)


def disc_spacing_mm(discs: DiscPoints) -> float | None:
    """One disc spacing: the median over consecutive labelled discs of their distance (mm) divided by the
    difference of their values; None with fewer than two distinct values."""
    values, points = discs.values, discs.mm
    distinct = np.unique(values)
    if distinct.size < 2:
        return None
    centre = np.array([points[values == v].mean(axis=0) for v in distinct])
    per_level = np.linalg.norm(np.diff(centre, axis=0), axis=1) / np.diff(distinct)
    return float(np.median(per_level))


def level_map(cord: nib.Nifti1Image, discs: DiscPoints) -> nib.Nifti1Image:
    """The cord's vertebral levels exactly as ``sct_label_vertebrae -i IMG -s CORD -discfile DISCS`` writes
    them (``CORD_labeled``), uint8 on the cord's grid (0 outside the cord)."""
    rule = level_rule(cord, discs)
    levels = rule.voxel_levels(_cord_mask(cord)).level
    return like(cord, levels.astype(np.uint8), np.uint8)
