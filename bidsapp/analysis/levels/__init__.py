"""Vertebral levels from disc labels: SCT 7.3's ``sct_label_vertebrae -discfile`` rule, ported.

- :mod:`.names`: SCT values -> names (``level_name(3) == "C3"``, ``disc_name(3) == "C2/C3"``), the one place.
- :mod:`.sct_rule`: ``level_map(cord, discs)`` = SCT's ``CORD_labeled`` voxel for voxel; ``level_rule`` (the
  centreline and the projected discs) labels any voxels by the same rule (``LevelRule.voxel_levels``).
- :mod:`.discs`: ``disc_points(img)`` reads and checks a disc label image; ``check_on_grid``,
  ``checked_rule`` (reach, order); ``DiscLabelError`` (one line naming the file and the reason).
- :mod:`.sources`: which label file serves an image (its own, else another image's of the same session).
- :mod:`.per_lesion`: ``lesion_levels(labels, voxel_levels)``: ``vert_level``, ``vert_levels``, fractions,
  ``vert_level_extrapolated`` per lesion, rows matching the lesion table.

Example::

    discs = disc_points(nib.load("sub-01_T2w_label-discs_dlabel.nii.gz"))
    rule, placement = checked_rule(cord, discs, "sub-01_T2w.nii.gz")
    levels = rule.voxel_levels(np.asanyarray(cord.dataobj) > 0)     # SCT's map: levels.level
    rows = lesion_levels(lesion_labels(mask), rule.voxel_levels(cord_or_lesion))
"""
from __future__ import annotations

from .discs import DiscLabelError, DiscPlacement, check_on_grid, checked_rule, disc_points
from .names import LEVEL_NAMES, disc_name, level_name, level_value
from .per_lesion import LesionLevels, lesion_levels, mask_lesion_levels
from .sct_rule import DiscPoints, LevelRule, VoxelLevels, centreline, level_map, level_rule
from .sources import DISC_ENDINGS, DiscSource, disc_source, drawn_on

__all__ = [
    "DiscLabelError", "DiscPlacement", "check_on_grid", "checked_rule", "disc_points",
    "LEVEL_NAMES", "disc_name", "level_name", "level_value",
    "LesionLevels", "lesion_levels", "mask_lesion_levels",
    "DiscPoints", "LevelRule", "VoxelLevels", "centreline", "level_map", "level_rule",
    "DISC_ENDINGS", "DiscSource", "disc_source", "drawn_on",
]
