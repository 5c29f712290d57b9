"""Per-lesion measures of one lesion mask, following SCT 7.3's ``sct_analyze_lesion``.

A lesion is one 18-connected component (faces and edges touch, corners do not): SCT labels with
``skimage.measure.label(connectivity=2)``, which in 3D is 18-connectivity. The arrays are reoriented
to SCT's RPI (nibabel ``("L", "A", "S")``: axis 0 R-L, axis 1 A-P pointing anterior, axis 2 S-I) with
``orientation.to_sct_orientation``; voxel sizes come from the header zooms, permuted the same way.

With a cord mask the measures are corrected for the cord's angle as SCT does: the centreline is the
cord's centre of mass per axial slice, fitted by a smoothing B-spline (SCT ``bspline``, smooth=20,
extrapolated to every slice), and per slice ``angle_3d`` (tangent vs S-I) and ``angle_sagittal``
(tangent projected on the sagittal plane vs S-I). Where we differ from SCT (and why) is in the
module docstring of :mod:`bidsapp.analysis` and in the data dictionary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import nibabel as nib
import numpy as np
from scipy import ndimage

from .. import metrics
from ..errors import InputImageError
from ..imaging import same_grid
from ..orientation import Reorientation, to_sct_orientation
from .angles import Angles, cord_angles
from .bridges import Bridges, Midsagittal, midsagittal, tissue_bridges

#: 18-connectivity, as SCT 7.3 (skimage ``label(connectivity=2)`` on a 3D array): the one structure of
#: ``metrics``, so the sidecar's lesion count and this table always agree
STRUCTURE_18 = metrics.STRUCTURE_18
#: SCT's working orientation.
SCT_WORKING = "RPI"


@dataclass(frozen=True)
class LesionMeasures:
    """One row of the lesion table. ``None`` is ``n/a`` (no cord mask, or not measurable)."""

    lesion_id: int
    volume_mm3: float
    length_mm: float
    width_mm: float
    max_equivalent_diameter_mm: float
    max_axial_damage_ratio: float | None
    inside_cord_fraction: float | None
    centroid_x_mm: float
    centroid_y_mm: float
    centroid_z_mm: float
    slice_axis: int
    first_slice: int
    last_slice: int
    midsagittal_slice: float | None
    dorsal_bridge_width_mm: float | None
    ventral_bridge_width_mm: float | None
    total_bridge_width_mm: float | None

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class LesionAnalysis:
    """All lesions of one mask: rows in label order, and the facts the table was measured with."""

    lesions: list[LesionMeasures]
    voxel_mm: tuple[float, float, float]  # R-L, A-P, S-I voxel sizes (RPI order)
    with_cord: bool
    connectivity: int = 18

    @property
    def count(self) -> int:
        return len(self.lesions)


@dataclass(frozen=True)
class _Grid:
    """Lesion labels and cord on the RPI grid, with what converts back to the image's own grid."""

    labels: np.ndarray
    cord: np.ndarray | None
    spacing: tuple[float, float, float]
    reo: Reorientation


def binary_data(img: nib.Nifti1Image, what: str) -> np.ndarray:
    """The 3D voxels of a mask as bool; ``InputImageError`` naming the file if it is not a 3D 0/1 mask."""
    name = img.get_filename() or what
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputImageError(f"{name}: expected a 3D {what}, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputImageError(f"{name}: {what} contains NaN or infinite values")
    if not _is_binary(data):
        shown = np.unique(data)[:5].tolist()
        raise InputImageError(f"{name}: {what} is not binary (values {shown}, expected 0 and 1)")
    return data != 0


def _is_binary(data: np.ndarray) -> bool:
    """Only 0 and 1 (cheap for integer masks: a min and a max instead of a sort)."""
    if data.size == 0:
        return True
    if np.issubdtype(data.dtype, np.integer) or data.dtype == bool:
        return bool(data.min() >= 0 and data.max() <= 1)
    return bool(((data == 0) | (data == 1)).all())


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """18-connected components of ``mask != 0`` (SCT's labelling); ``(labels int32, n)``."""
    labels, n = ndimage.label(np.asarray(mask) != 0, structure=STRUCTURE_18)
    return labels.astype(np.int32, copy=False), int(n)


def _prepare(mask: nib.Nifti1Image, cord: nib.Nifti1Image | None) -> _Grid:
    lesion = binary_data(mask, "lesion mask")
    cord_data = None
    if cord is not None:
        cord_data = binary_data(cord, "cord mask")
        if not same_grid(cord, mask):
            name = cord.get_filename() or "cord mask"
            raise InputImageError(f"{name}: cord mask is not on the lesion mask's grid "
                                  f"(shape {cord_data.shape} vs {lesion.shape}, or a different affine)")
    # labelled on the RPI grid, as SCT (orient2rpi, then label): lesion ids in SCT's order
    lesion_rpi, reo = to_sct_orientation(lesion, mask.affine, SCT_WORKING)
    labels, _ = label_lesions(lesion_rpi)
    cord_rpi = np.ascontiguousarray(reo.apply(cord_data)) if cord_data is not None else None
    return _Grid(labels, cord_rpi, reo.zooms(mask.header.get_zooms()[:3]), reo)


# ------------------------------------------------------------------------------------ shape measures
@dataclass(frozen=True)
class _Shape:
    length_mm: float
    width_mm: float
    max_equivalent_diameter_mm: float


def shape_measures(lesion: np.ndarray, spacing: tuple[float, float, float], angles: Angles) -> _Shape:
    """SCT ``_measure_length`` / ``_measure_width`` / ``_measure_diameter`` on one lesion (RPI bool)."""
    px, py, pz = spacing
    zs = np.flatnonzero(lesion.any(axis=(0, 1)))
    length = float(np.sum(pz / np.cos(angles.angle_3d[zs])))
    widths, areas = [], []
    for z in zs:
        ys = np.flatnonzero(lesion[:, :, z].any(axis=0))
        widths.append((ys[-1] - ys[0] + 1) * py * math.cos(angles.angle_sagittal[z]))
        areas.append(np.count_nonzero(lesion[:, :, z]) * math.cos(angles.angle_3d[z]) * px * py)
    diameter = 2.0 * math.sqrt(max(areas) / math.pi)
    return _Shape(length, float(max(widths)), diameter)


def damage_ratio(lesion: np.ndarray, cord: np.ndarray) -> float | None:
    """Max over axial slices of (lesion area inside the cord) / (cord area); slices without cord skipped."""
    best = None
    for z in np.flatnonzero(lesion.any(axis=(0, 1))):
        cord_area = np.count_nonzero(cord[:, :, z])
        if cord_area:
            ratio = np.count_nonzero(lesion[:, :, z] & cord[:, :, z]) / cord_area
            best = ratio if best is None else max(best, ratio)
    return None if best is None else float(best)


# ------------------------------------------------------------------------------------------ the table
def analyze_lesions(mask: nib.Nifti1Image, cord: nib.Nifti1Image | None = None) -> LesionAnalysis:
    """Measure every lesion of a binary lesion mask (optionally with the cord mask on the same grid).

    Without ``cord``: no angle correction (length/width/diameter along the image's own axes) and the
    cord-relative measures (damage ratio, inside-cord fraction, bridges) are ``None``.
    Raises :class:`InputImageError` naming the file for a non-binary, non-3D or mismatched mask.
    """
    grid = _prepare(mask, cord)
    n = int(grid.labels.max())
    if n == 0:
        return LesionAnalysis([], grid.spacing, cord is not None)
    angles = cord_angles(grid.cord, grid.spacing) if grid.cord is not None else None
    flat_angles = angles or Angles(np.zeros(grid.labels.shape[2]), np.zeros(grid.labels.shape[2]))
    boxes = ndimage.find_objects(grid.labels)
    mid = _image_midsagittal(grid, boxes) if grid.cord is not None else None
    rows = [_measure_one(grid, i + 1, boxes[i], flat_angles, mid) for i in range(n)]
    return LesionAnalysis(rows, grid.spacing, cord is not None)


def _image_midsagittal(grid: _Grid, boxes: list) -> Midsagittal | None:
    """SCT: the midsagittal position comes from the largest lesion (voxels inside the cord)."""
    inside = np.bincount(grid.labels[grid.cord].ravel(), minlength=len(boxes) + 1)[1:]
    if inside.max() == 0:
        return None
    largest = int(np.argmax(inside)) + 1  # first of equals, as pandas idxmax
    z = boxes[largest - 1][2]
    return midsagittal((grid.labels[:, :, z] == largest) & grid.cord[:, :, z], grid.cord, z.start)


def _measure_one(grid: _Grid, label: int, box: tuple, angles: Angles,
                 mid: Midsagittal | None) -> LesionMeasures:
    # Work on the lesion's slab of axial slices (whole R-L and A-P extent, so cord lines and the
    # midsagittal slices stay whole): every measure is per axial slice, and the slab is small.
    z = box[2]
    lesion = grid.labels[:, :, z] == label
    slab_angles = Angles(angles.angle_3d[z], angles.angle_sagittal[z])
    voxels = np.count_nonzero(lesion)
    shape = shape_measures(lesion, grid.spacing, slab_angles)
    ratio = inside = bridges = None
    if grid.cord is not None:
        cord = grid.cord[:, :, z]
        in_cord = lesion & cord
        inside = np.count_nonzero(in_cord) / voxels
        ratio = damage_ratio(lesion, cord)
        bridges = tissue_bridges(in_cord, cord, mid, grid.spacing, slab_angles) \
            if mid is not None and in_cord.any() else None
    centroid = _world_centroid(grid, lesion, z.start)
    first, last, axis = _slice_span(grid, box)
    return LesionMeasures(
        lesion_id=label, volume_mm3=voxels * float(np.prod(grid.spacing)),
        length_mm=shape.length_mm, width_mm=shape.width_mm,
        max_equivalent_diameter_mm=shape.max_equivalent_diameter_mm,
        max_axial_damage_ratio=ratio, inside_cord_fraction=inside,
        centroid_x_mm=centroid[0], centroid_y_mm=centroid[1], centroid_z_mm=centroid[2],
        slice_axis=axis, first_slice=first, last_slice=last,
        midsagittal_slice=_to_source_index(grid, mid.position, 0) if mid is not None else None,
        **_bridge_fields(bridges))


def _bridge_fields(bridges: Bridges | None) -> dict[str, float | None]:
    if bridges is None:
        return dict.fromkeys(("dorsal_bridge_width_mm", "ventral_bridge_width_mm", "total_bridge_width_mm"))
    return {"dorsal_bridge_width_mm": bridges.dorsal_mm, "ventral_bridge_width_mm": bridges.ventral_mm,
            "total_bridge_width_mm": bridges.total_mm}


def _source_axis(grid: _Grid, rpi_axis: int) -> tuple[int, bool]:
    """The image's own array axis that became RPI axis ``rpi_axis``, and whether it was flipped."""
    forward = grid.reo.forward
    source = int(np.flatnonzero(forward[:, 0] == rpi_axis)[0])
    return source, bool(forward[source, 1] == -1)


def _to_source_index(grid: _Grid, index: float, rpi_axis: int) -> float:
    """An index along RPI axis ``rpi_axis`` -> the index along the image's own axis (SCT
    ``rpi_slice_to_orig_orientation``)."""
    source, flipped = _source_axis(grid, rpi_axis)
    n = grid.reo.source_shape[source]
    return float(n - 1 - index) if flipped else float(index)


def _slice_span(grid: _Grid, box: tuple) -> tuple[int, int, int]:
    """First and last slice (inclusive, the image's own S-I axis and indices) the lesion spans."""
    z = box[2]
    a, b = _to_source_index(grid, z.start, 2), _to_source_index(grid, z.stop - 1, 2)
    return int(min(a, b)), int(max(a, b)), _source_axis(grid, 2)[0]


def _world_centroid(grid: _Grid, lesion: np.ndarray, z0: int) -> tuple[float, float, float]:
    """Centre of mass in scanner (RAS+) mm of a slab starting at axial slice ``z0`` (RPI grid)."""
    ijk = np.array(ndimage.center_of_mass(lesion)) + np.array([0.0, 0.0, z0])
    xyz = grid.reo.affine[:3, :3] @ ijk + grid.reo.affine[:3, 3]
    return float(xyz[0]), float(xyz[1]), float(xyz[2])


def lesion_labels(mask: nib.Nifti1Image) -> np.ndarray:
    """The lesion ids of :func:`analyze_lesions` on the mask's OWN grid (int32, 0 = background)."""
    lesion_rpi, reo = to_sct_orientation(binary_data(mask, "lesion mask"), mask.affine, SCT_WORKING)
    labels, _ = label_lesions(lesion_rpi)
    return np.ascontiguousarray(reo.undo(labels))


def drop_outside_cord(analysis: LesionAnalysis) -> LesionAnalysis:
    """The analysis without the lesions that lie wholly outside the cord (``inside_cord_fraction`` 0;
    SCT issue #4946). Ids are kept, so the rows still name the labels of the mask."""
    if not analysis.with_cord:
        raise ValueError("dropping lesions outside the cord needs a cord mask")
    kept = [r for r in analysis.lesions if r.inside_cord_fraction]
    return LesionAnalysis(kept, analysis.voxel_mm, analysis.with_cord, analysis.connectivity)
