"""Disc label images checked before they give levels: each refusal is one line naming the file and the reason.

A disc label image holds one voxel per intervertebral disc at its posterior tip, valued by SCT's convention
(:mod:`.names`). What is refused, and why:

- **not SCT disc values**: anything but whole numbers 1-25 (SCT's brainstem landmarks 49 and 50 are left out
  and reported). Raw TotalSpineSeg labels (63-100) number discs another way and would give wrong levels.
- **not points**: a value marking more than :data:`MAX_VOXELS_PER_DISC` voxels is a segmentation (vertebrae,
  disc masks), not disc points.
- **off the image's grid**: a label file drawn for an image must have that image's shape and affine (the
  convention of spine-generic and manual-correction: labels are drawn on the image itself).
- **not reaching the cord**: a disc whose nearest point of the cord's centreline (in mm, SCT's projection)
  lies strictly between the centreline's ends must lie within :data:`MAX_DISC_TO_CORD_MM` of it. A posterior
  disc tip sits in front of the cord, a few mm of CSF plus the cord's radius from its centre (5-12 mm);
  farther means labels of another image, session or subject, or a cord mask that missed the cord. A disc
  whose nearest point is an END of the centreline lies beyond the cord's extent in this image (a disc above or
  below the field of view): allowed, the level boundary falls at the cord's end. If every disc lies beyond
  the same end, no level of this image is bounded by a disc: refused.
- **out of order**: along the cord, from inferior to superior, disc values must not increase.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import nibabel as nib
import numpy as np
from scipy.spatial import KDTree

from ...errors import CordlesionError
from ...imaging import grid_mismatch
from .names import DISC_VALUES, LANDMARK_VALUES, disc_name
from .sct_rule import Centreline, DiscPoints, LevelRule, centreline, level_rule, sct_affine

#: a disc is labelled by one voxel; a few more (a brush stroke, 3x3x3) still project as SCT does
MAX_VOXELS_PER_DISC = 27
#: farthest a disc's posterior tip may lie from the cord's centreline (see the module docstring)
MAX_DISC_TO_CORD_MM = 20.0
_TOTALSPINESEG_RAW = range(63, 101)


class DiscLabelError(CordlesionError):
    """A disc label file that cannot give levels; the message is one line naming the file and the reason."""


def disc_points(img: nib.Nifti1Image, name: str | None = None) -> DiscPoints:
    """The disc labels of ``img`` as SCT reads a ``-discfile`` (C order), checked: 3D, finite, whole SCT disc
    values, one voxel (or a few) per disc; landmarks 49/50 left out. ``DiscLabelError`` otherwise."""
    name = name or img.get_filename() or "disc labels"
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DiscLabelError(f"{name}: expected a 3D label image, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise DiscLabelError(f"{name}: the label image holds NaN or infinite values")
    voxels = np.argwhere(data != 0)
    values = data[tuple(voxels.T)]
    if values.size == 0:
        raise DiscLabelError(f"{name}: no disc label (every voxel is 0)")
    if np.any(values != np.round(values)):
        shown = sorted({float(v) for v in values[values != np.round(values)]})[:4]
        raise DiscLabelError(f"{name}: labels are not whole numbers ({shown}): disc labels are SCT values "
                             "(a label file resampled with interpolation? use nearest neighbour)")
    values = np.round(values).astype(np.int64)
    _check_values(name, values)
    landmark = np.isin(values, list(LANDMARK_VALUES))
    if landmark.all():
        raise DiscLabelError(f"{name}: only SCT's brainstem landmarks (49, 50), no disc label")
    return DiscPoints(values=values[~landmark], voxels=voxels[~landmark],
                      affine=sct_affine(img.header), shape=tuple(data.shape), name=name,
                      ignored=tuple(sorted(set(values[landmark].tolist()))))


def _check_values(name: str, values: np.ndarray) -> None:
    bad = sorted(set(values.tolist()) - set(DISC_VALUES) - set(LANDMARK_VALUES))
    if bad and all(v in _TOTALSPINESEG_RAW for v in bad):
        raise DiscLabelError(f"{name}: values {bad} are TotalSpineSeg's raw disc labels, not SCT disc "
                             "values: use its step1_levels output (SCT's _totalspineseg_discs), one voxel "
                             "per disc")
    if bad:
        raise DiscLabelError(f"{name}: values {bad[:6]} are not SCT disc values (1 = C1 top, 2 = C1/C2, "
                             "3 = C2/C3, ..., 8 = C7/T1, ..., 25 = L5/S1)")
    found, counts = np.unique(values, return_counts=True)
    if counts.max() > MAX_VOXELS_PER_DISC:
        worst = int(found[np.argmax(counts)])
        raise DiscLabelError(f"{name}: value {worst} marks {int(counts.max())} voxels: a segmentation, not "
                             "disc labels (one voxel per disc at its posterior tip)")


def check_on_grid(labels: nib.Nifti1Image, labels_name: str, image: nib.Nifti1Image, image_name: str) -> None:
    """A label file drawn for ``image`` must be on its grid (``imaging.grid_mismatch``: shape and affine);
    ``DiscLabelError`` if not."""
    reason = grid_mismatch(tuple(labels.shape[:3]), labels.affine, image)
    if reason is not None:
        raise DiscLabelError(f"{labels_name}: {reason}; the image: {image_name} (disc labels are drawn on "
                             "the image itself)")


@dataclass(frozen=True)
class DiscPlacement:
    """Where each disc of a file sits against one cord: its distance to the nearest centreline point (mm) and
    whether that point is inside the centreline (``along``) or one of its ends (``above``, ``below``)."""

    values: tuple[int, ...]
    distance_mm: tuple[float, ...]
    where: tuple[str, ...]

    def count(self, where: str) -> int:
        return sum(w == where for w in self.where)


def placement(discs: DiscPoints, line: Centreline) -> DiscPlacement:
    """Each disc's nearest centreline point, as SCT's projection finds it (KDTree, mm)."""
    distance, nearest = KDTree(line.mm).query(discs.mm)
    last = len(line.mm) - 1
    where = tuple("below" if i == 0 else "above" if i == last else "along" for i in nearest.tolist())
    return DiscPlacement(tuple(int(v) for v in discs.values), tuple(float(d) for d in distance), where)


def check_reach(discs: DiscPoints, place: DiscPlacement, image_name: str) -> None:
    """``DiscLabelError`` when a disc along the cord lies farther than :data:`MAX_DISC_TO_CORD_MM` from it, or
    when every disc lies beyond the same end of the cord (see the module docstring)."""
    far = [(d, v) for d, v, w in zip(place.distance_mm, place.values, place.where, strict=True)
           if w == "along" and d > MAX_DISC_TO_CORD_MM]
    if far:
        d, v = max(far)
        raise DiscLabelError(f"{discs.name}: disc {disc_name(v)} ({v}) lies {d:.1f} mm from the cord of "
                             f"{image_name} (at most {MAX_DISC_TO_CORD_MM:g} mm: labels of another image, "
                             "session or subject, or a cord mask that missed the cord?)")
    for end in ("above", "below"):
        if place.count(end) == len(place.where):
            raise DiscLabelError(f"{discs.name}: every disc label lies {end} the cord of {image_name}: no "
                                 "level of this image lies between two labelled discs")


def check_order(discs: DiscPoints, rule: LevelRule) -> None:
    """Along the cord, inferior to superior, disc values must not increase (``DiscLabelError``)."""
    values = rule.region_values[:-1]
    rising = np.flatnonzero(np.diff(values) > 0)
    if rising.size:
        low, high = int(values[rising[0]]), int(values[rising[0] + 1])
        raise DiscLabelError(f"{discs.name}: discs out of order along the cord: {disc_name(high)} ({high}) "
                             f"lies above {disc_name(low)} ({low})")


def bounding_discs(discs: DiscPoints, place: DiscPlacement) -> DiscPoints:
    """The discs that bound this cord: those along it; when none is, the nearest one above it (the largest
    value above), so a cord between two discs takes the upper one's level.

    Why: SCT 7.3 projects every disc beyond an end of the cord onto the end's voxel. There (a) several discs
    collapse and the last one in the disc image's voxel order wins: with C2/C3 and C1/C2 above an axial
    image's cord, the cord above its highest disc takes C1/C2's value (C2) where C3 is right; (b) a disc below
    the cord gives the bottom slice the level BELOW that disc, though the slice lies above it. Without the
    discs beyond the ends, the rule gives the level above the highest disc (its value minus one) and below the
    lowest one (its value), right within one disc spacing and flagged beyond it. On discs that all lie along
    the cord (a sagittal image's own labels, usually) nothing changes: SCT's map exactly."""
    where, values = np.array(place.where), np.array(place.values)
    keep = where == "along"
    if not keep.any() and (where == "above").any():
        keep = (where == "above") & (values == values[where == "above"].max())
    return replace(discs, values=discs.values[keep], voxels=discs.voxels[keep])


def checked_rule(cord: nib.Nifti1Image, discs: DiscPoints, image_name: str, *,
                 bounding_only: bool = False) -> tuple[LevelRule, DiscPlacement]:
    """SCT's level rule for ``cord`` from ``discs`` after the cord checks (reach, order), with where each disc
    sits; ``DiscLabelError`` naming the disc file otherwise. ``bounding_only``: the rule from
    :func:`bounding_discs` (default False: every disc, exactly as SCT 7.3 is given the file)."""
    line = centreline(cord)
    place = placement(discs, line)
    check_reach(discs, place, image_name)
    used = bounding_discs(discs, place) if bounding_only else discs
    rule = level_rule(cord, used, line=line)
    check_order(discs, rule)
    return rule, place
