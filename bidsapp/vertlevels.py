"""The vertebral levels of one image from the disc labels of ``--disc-labels`` (issue 25): which file serves
it, the checks, the cord's level map (SCT 7.3's ``sct_label_vertebrae -discfile`` rule,
``analysis.levels``), the level columns of its lesion table and its lesion load by level.

A disc label file that cannot give levels (:class:`~.analysis.levels.DiscLabelError`: not SCT values, off
the grid, not reaching the cord, ...) leaves the image's levels ``n/a`` with its one-line reason (log,
sidecar, QC record); the image's masks and other figures stand. Which files were found (by name and sha256)
is part of the up-to-date state of the image's figures: a changed label file redoes the figures only.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from . import __version__
from .analysis.lesions import lesion_labels
from .analysis.levels import (
    DISC_ENDINGS,
    DiscLabelError,
    DiscPlacement,
    DiscSource,
    LesionLevels,
    check_on_grid,
    checked_rule,
    disc_name,
    disc_points,
    disc_source,
    lesion_levels,
    level_name,
    level_value,
)
from .analysis.levels.discs import bounding_discs
from .analysis.levels.names import LANDMARK_VALUES
from .corrections import LabelKind, find_label_files
from .derivatives import sha256_file
from .imaging import like

#: disc label files beside an image in a labels folder (``analysis.levels.DISC_ENDINGS``)
DISCS = LabelKind("discs", "disc labels", DISC_ENDINGS)
RULE = "sct_label_vertebrae -discfile (SCT 7.3), ported"
Files = tuple[tuple[Path, str], ...]


def disc_files(root: str | Path | None, source_relpath: str) -> Files:
    """The disc label files of every image of the image's folder (same subject and session) in ``root``,
    hashed; () without ``--disc-labels``."""
    if root is None:
        return ()
    return tuple((p, sha256_file(p)) for p in find_label_files(root, source_relpath, DISCS, session=True))


def disc_state(root: str | Path | None, files: Files) -> list[list[str]] | None:
    """What the image's levels depend on (``FiguresState.Discs``): the files by path relative to ``root``
    and sha256; None without ``--disc-labels``."""
    if root is None:
        return None
    return [[p.relative_to(root).as_posix(), sha] for p, sha in files]


@dataclass(frozen=True)
class ImageLevels:
    """The levels of one image: its cord's level map, its lesions' level columns, its lesion load by level."""

    cord_map: nib.Nifti1Image | None = None
    """uint8 SCT level values on the cord's grid, 0 outside the cord (own discs: SCT's ``CORD_labeled``)."""
    lesions: tuple[LesionLevels, ...] = ()
    volume_mm3: Mapping[int, float] = field(default_factory=dict)
    """Level -> lesion volume at that level (every lesion voxel takes a level by SCT's rule)."""
    count: Mapping[int, int] = field(default_factory=dict)
    """Level -> lesions whose ``vert_level`` it is."""
    unlevelled_mm3: float = 0.0
    """Lesion volume with no level (above the top of C1)."""
    covered: tuple[int, ...] = ()
    """Levels with a cord voxel (the image's field of view), superior first."""
    source: DiscSource | None = None
    labels_path: str | None = None
    placement: DiscPlacement | None = None
    used: tuple[int, ...] = ()
    ignored: tuple[int, ...] = ()
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.cord_map is not None

    def rows(self, lesion_ids: Sequence[int]) -> list[dict[str, str]]:
        """The level cells of the lesion table's rows (``n/a`` without levels)."""
        by_id = {r.lesion_id: r for r in self.lesions}
        return [(by_id.get(i) or LesionLevels(i, None, (), (), None)).row() for i in lesion_ids]

    def record(self, names: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The QC record's ``levels`` block (``names``: the level map's files when written)."""
        return {"covered": [level_name(v) for v in self.covered],
                "source": self.labels_path, "drawn_on": self.source.drawn_on if self.source else None,
                "shared": bool(self.source.shared) if self.source else False, "error": self.error,
                "volume_mm3": {level_name(v): round(float(m), 3) for v, m in sorted(self.volume_mm3.items())},
                "count": {level_name(v): int(n) for v, n in sorted(self.count.items())},
                "unlevelled_mm3": round(float(self.unlevelled_mm3), 3), "files": dict(names or {})}


NO_LEVELS = ImageLevels()


def image_levels(image: nib.Nifti1Image, source_relpath: str, *, cord: nib.Nifti1Image | None,
                 mask: nib.Nifti1Image | None, files: Files, roots: tuple[Path, Path]) -> ImageLevels:
    """The levels of the image ``source_relpath`` from the disc ``files`` found for it in the labels folder
    ``roots[0]`` (``roots[1]``: the dataset, where a partner image's header is read), on its ``cord`` and
    lesion ``mask`` (both on the image's grid). A refused file gives :data:`NO_LEVELS` with its reason."""
    labels_root, bids_root = roots
    try:
        source = disc_source(source_relpath, [p.relative_to(labels_root).as_posix() for p, _ in files])
        if source is None:
            return NO_LEVELS
        path = labels_root / source.labels
        if cord is None or not np.asanyarray(cord.dataobj).any():
            raise DiscLabelError(f"{path}: no cord mask of {source_relpath} to carry the levels")
        return _levels(image, source_relpath, cord, mask, (source, path, bids_root))
    except DiscLabelError as exc:
        return ImageLevels(error=str(exc))


def _read_labels(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
        np.asanyarray(img.dataobj)
        return img
    except Exception as exc:  # nibabel raises many types for a broken file
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DiscLabelError(f"{path}: cannot read the NIfTI file ({reason})") from exc


def _partner(bids_root: Path, source: DiscSource, path: Path) -> nib.Nifti1Image:
    """The header of the image a shared label file was drawn on (its grid is checked)."""
    for ext in (".nii.gz", ".nii"):
        candidate = bids_root / (source.drawn_on + ext)
        if candidate.is_file():
            return nib.load(str(candidate))
    raise DiscLabelError(f"{path}: the image it was drawn on ({source.drawn_on}.nii[.gz]) is not in the "
                         "dataset: its grid cannot be checked")


def _levels(image: nib.Nifti1Image, relpath: str, cord: nib.Nifti1Image, mask: nib.Nifti1Image | None,
            where: tuple[DiscSource, Path, Path]) -> ImageLevels:
    source, path, bids_root = where
    labels = _read_labels(path)
    drawn_on = _partner(bids_root, source, path) if source.shared else image
    check_on_grid(labels, str(path), drawn_on, source.drawn_on if source.shared else relpath)
    discs = disc_points(labels, str(path))
    rule, place = checked_rule(cord, discs, relpath, bounding_only=source.shared)
    used = bounding_discs(discs, place) if source.shared else discs
    cord_data = np.asanyarray(cord.dataobj) > 0
    cord_levels = rule.voxel_levels(cord_data).level
    lesion = np.asanyarray(mask.dataobj) > 0 if mask is not None else np.zeros_like(cord_data)
    every = rule.voxel_levels(cord_data | lesion)
    rows = lesion_levels(lesion_labels(mask), every) if mask is not None and lesion.any() else []
    voxel_mm3 = float(np.prod(image.header.get_zooms()[:3]))
    values, counts = np.unique(every.level[lesion], return_counts=True)
    volume = {int(v): float(n) * voxel_mm3 for v, n in zip(values, counts, strict=True) if v > 0}
    count: dict[int, int] = {}
    for row in rows:
        if row.vert_level is not None:
            key = level_value(row.vert_level)
            count[key] = count.get(key, 0) + 1
    return ImageLevels(
        cord_map=like(cord, cord_levels.astype(np.uint8), np.uint8), lesions=tuple(rows), volume_mm3=volume,
        count=count, unlevelled_mm3=float(counts[values <= 0].sum()) * voxel_mm3,
        covered=tuple(int(v) for v in np.unique(cord_levels) if v > 0), source=source,
        labels_path=str(path), placement=place, used=tuple(int(v) for v in used.values),
        ignored=tuple(discs.ignored))


# ------------------------------------------------------------------------------------------ derivative
def dseg_tsv(levels: ImageLevels) -> str:
    """The level map's ``_dseg.tsv``: ``index`` and ``name`` of the levels present."""
    return "index\tname\n" + "".join(f"{v}\t{level_name(v)}\n" for v in levels.covered)


def dseg_sidecar(levels: ImageLevels, source_relpath: str) -> dict[str, Any]:
    """The level map's ``_dseg.json``: what it is, from which files, by which rule."""
    if levels.source is None or levels.placement is None:
        raise ValueError("no level map: the image has no levels")
    uri = f"bids:raw:{source_relpath}"
    place = levels.placement
    return {
        "Description": "Vertebral level of every cord voxel (SCT values: 1-7 = C1-C7, 8-19 = T1-T12, ...; 0 "
                       "outside the cord) from disc labels, by SCT 7.3's sct_label_vertebrae -discfile rule",
        "Sources": [uri], "SpatialReference": uri,
        "DiscLabels": levels.labels_path, "DiscLabelsDrawnOn": levels.source.drawn_on,
        "DiscLabelsShared": levels.source.shared,
        "DiscsUsed": {"which": "bounding" if levels.source.shared else "all", "values": list(levels.used)},
        "DiscPlacement": [{"value": v, "disc": disc_name(v), "where": w, "distance_mm": round(d, 2)}
                          for v, w, d in zip(place.values, place.where, place.distance_mm, strict=True)],
        "IgnoredLabels": [{"value": v, "what": LANDMARK_VALUES[v]} for v in levels.ignored],
        "Rule": RULE,
        "Notes": ("Labels of another image of the session, projected in scanner millimetres: assumes no "
                  "repositioning between the two scans; only the discs along this cord are used."
                  if levels.source.shared else "The image's own disc labels: SCT's map voxel for voxel."),
        "GeneratedBy": [{"Name": "cordlesion", "Version": __version__}],
    }

