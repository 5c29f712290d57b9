"""The vertebral level of every lesion: columns of the per-lesion table.

A lesion is one 18-connected component, with the ids of ``analysis.lesions`` (``lesion_labels``), so these
rows join the lesion table row for row. Its voxels' levels come from a :class:`~.sct_rule.VoxelLevels` of the
same grid: SCT's cord map (only the lesion's voxels inside the cord have a level), or the same rule applied
to the cord and the lesions (``LevelRule.voxel_levels(cord | lesion)``: every lesion voxel takes the level of
its nearest centreline point, as SCT labels a cord voxel).

- ``vert_level``: the level holding most of the lesion's levelled voxels (a tie goes to the superior one);
- ``vert_levels``: every level it touches, superior first; ``vert_level_fractions``: the fraction of its
  levelled voxels in each, same order (3 decimals);
- ``vert_level_extrapolated``: some of its voxels lie beyond the outermost labelled disc by more than one
  disc spacing, where SCT's rule only repeats the last level (above the top disc: its value minus one;
  below the bottom disc: its value), so their level is a guess;
- every column ``n/a`` without disc labels, or when none of the lesion's voxels has a level.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..lesions import lesion_labels
from .names import level_name
from .sct_rule import VoxelLevels

NA = "n/a"


@dataclass(frozen=True)
class LesionLevels:
    """The level columns of one lesion; ``None`` / empty is ``n/a``."""

    lesion_id: int
    vert_level: str | None
    vert_levels: tuple[str, ...]
    vert_level_fractions: tuple[float, ...]
    vert_level_extrapolated: bool | None

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)][1:]

    def row(self) -> dict[str, str]:
        """The TSV cells: names and fractions comma-separated, ``true``/``false``, ``n/a``."""
        if self.vert_level is None:
            return dict.fromkeys(self.columns(), NA)
        return {"vert_level": self.vert_level, "vert_levels": ",".join(self.vert_levels),
                "vert_level_fractions": ",".join(f"{f:.3f}" for f in self.vert_level_fractions),
                "vert_level_extrapolated": "true" if self.vert_level_extrapolated else "false"}


def lesion_levels(labels: np.ndarray, levels: VoxelLevels | None,
                  lesion_ids: Sequence[int] | None = None) -> list[LesionLevels]:
    """One :class:`LesionLevels` per lesion id (default: every id of ``labels``, in order); ``levels`` None
    (no disc labels) gives ``n/a`` rows. ``labels`` and ``levels`` share one grid."""
    ids = list(lesion_ids) if lesion_ids is not None else list(range(1, int(labels.max(initial=0)) + 1))
    if levels is None:
        return [LesionLevels(i, None, (), (), None) for i in ids]
    if levels.level.shape != labels.shape:
        raise ValueError(f"level map shape {levels.level.shape} differs from the lesion labels' "
                         f"{labels.shape}")
    boxes = ndimage.find_objects(labels)
    return [_one(i, labels, levels, boxes[i - 1] if i <= len(boxes) else None) for i in ids]


def _one(lesion_id: int, labels: np.ndarray, levels: VoxelLevels, box: tuple | None) -> LesionLevels:
    if box is None:
        return LesionLevels(lesion_id, None, (), (), None)
    inside = labels[box] == lesion_id
    values = levels.level[box][inside]
    levelled = values > 0
    if not levelled.any():
        return LesionLevels(lesion_id, None, (), (), None)
    found, counts = np.unique(values[levelled], return_counts=True)  # ascending value = superior first
    fractions = counts / counts.sum()
    majority = int(found[np.argmax(counts)])  # argmax: the first (superior) of equal counts
    extrapolated = bool(levels.beyond[box][inside][levelled].max() > 1.0)
    return LesionLevels(lesion_id, level_name(majority), tuple(level_name(int(v)) for v in found),
                        tuple(round(float(f), 3) for f in fractions), extrapolated)


def mask_lesion_levels(mask: nib.Nifti1Image, levels: VoxelLevels | None) -> list[LesionLevels]:
    """:func:`lesion_levels` of a binary lesion mask, labelled as the lesion table labels it (18-connected,
    SCT's order: ``analysis.lesions.lesion_labels``)."""
    return lesion_levels(lesion_labels(mask), levels)
