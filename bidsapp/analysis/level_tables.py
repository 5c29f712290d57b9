"""The study's lesion load by vertebral level (issue 25, ``--disc-labels``): ``group/lesion_levels.tsv`` (one
row per image, task and level of the study) and ``group/levels_summary.tsv`` (one row per level), with their
data dictionaries, from the ``levels`` blocks of the QC records (``vertlevels.ImageLevels.record``).

A level outside an image's field of view (no cord voxel at it) is ``n/a``, not 0: the image says nothing
about it. An image without disc labels, or whose labels were refused, is ``n/a`` at every level. Per image,
the volumes sum to its total lesion volume (every lesion voxel takes the level of its nearest centreline
point, as SCT labels a cord voxel; only voxels above the top of C1 have none) and the counts to its lesion
count (each lesion counted at its ``vert_level``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .levels.names import LEVEL_NAMES, level_value
from .tables import NA, tsv, write_table

LEVELS_PATH, SUMMARY_PATH = "group/lesion_levels.tsv", "group/levels_summary.tsv"
KEYS = ("participant_id", "session_id", "acquisition", "run", "contrast", "task")
_LEVEL = {"Description": "Vertebral level (SCT's numbering: level k runs from disc k down to disc k+1).",
          "Levels": {name: f"vertebra {name}" for name in LEVEL_NAMES.values()}}
_KEY_DICT = {
    "participant_id": {"Description": "Participant label with the sub- prefix."},
    "session_id": {"Description": "Session label with the ses- prefix; n/a without sessions."},
    "acquisition": {"Description": "acq- entity of the source image; n/a when absent."},
    "run": {"Description": "run- entity of the source image; n/a when absent."},
    "contrast": {"Description": "BIDS suffix of the source image."},
    "task": {"Description": "Segmentation task run on the image (cordlesion task name)."},
}
LEVELS_DICTIONARY: dict[str, Any] = {
    **_KEY_DICT,
    "level": _LEVEL,
    "lesion_count": {"Description": "Lesions whose vert_level (the level holding most of their voxels) is "
                                    "this level; over an image's levels the counts sum to its lesion count. "
                                    "n/a: the level lies outside the image's field of view (no cord "
                                    "voxel at it), or no usable disc labels (its QC record)."},
    "lesion_volume_mm3": {"Description": "Lesion voxels at this level x voxel volume (every lesion voxel "
                                         "takes the level of its nearest cord centreline point, SCT 7.3's "
                                         "sct_label_vertebrae -discfile rule); over an image's levels the "
                                         "volumes sum to its total lesion volume. n/a as lesion_count.",
                          "Units": "mm^3"},
}
SUMMARY_DICTIONARY: dict[str, Any] = {
    "level": _LEVEL,
    "images_covering": {"Description": "Images whose cord covers this level (a cord voxel at it)."},
    "images_with_lesion": {"Description": "Covering images with lesion volume at this level."},
    "lesion_count": {"Description": "Sum of lesion_count over the covering images."},
    "lesion_volume_mm3": {"Description": "Sum of lesion_volume_mm3 over the covering images.",
                          "Units": "mm^3"},
    "volume_per_covering_image_mm3": {"Description": "lesion_volume_mm3 / images_covering: the lesion load "
                                                     "of an image at this level, comparable between levels "
                                                     "covered by different numbers of images.",
                                      "Units": "mm^3"},
}


def _levels_of(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    block = record.get("levels")
    return block if record.get("status") == "ok" and isinstance(block, Mapping) else None


def study_levels(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every level covered by an image of the study, superior first."""
    names = {n for r in records if (b := _levels_of(r)) for n in b.get("covered") or ()}
    return sorted(names, key=level_value)


def level_rows(images: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of ``lesion_levels.tsv``: ``images`` is (key columns, QC record) per image with levels."""
    levels = study_levels([rec for _, rec in images])
    rows = []
    for keys, rec in images:
        block = _levels_of(rec) or {}
        covered = set(block.get("covered") or ())
        volumes, counts = block.get("volume_mm3") or {}, block.get("count") or {}
        for name in levels:
            inside = name in covered
            rows.append({**{k: keys.get(k) for k in KEYS}, "level": name,
                         "lesion_count": int(counts.get(name, 0)) if inside else None,
                         "lesion_volume_mm3": float(volumes.get(name, 0.0)) if inside else None})
    return rows


def summary_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``levels_summary.tsv`` from :func:`level_rows`."""
    out = []
    for name in sorted({r["level"] for r in rows}, key=level_value):
        at = [r for r in rows if r["level"] == name and r["lesion_count"] is not None]
        volume = sum(float(r["lesion_volume_mm3"]) for r in at)
        out.append({"level": name, "images_covering": len(at),
                    "images_with_lesion": sum(float(r["lesion_volume_mm3"]) > 0 for r in at),
                    "lesion_count": sum(int(r["lesion_count"]) for r in at), "lesion_volume_mm3": volume,
                    "volume_per_covering_image_mm3": volume / len(at) if at else None})
    return out


def write_level_tables(root: Path,
                       images: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Write both tables (and dictionaries) when some image has a ``levels`` block (a run with
    ``--disc-labels``); returns the summary rows ([] and nothing written otherwise)."""
    with_levels = [(keys, rec) for keys, rec in images if "levels" in rec]
    if not with_levels:
        return []
    rows = level_rows(with_levels)
    summary = summary_rows(rows)
    write_table(root / LEVELS_PATH, tsv(list(LEVELS_DICTIONARY), rows), LEVELS_DICTIONARY)
    write_table(root / SUMMARY_PATH, tsv(list(SUMMARY_DICTIONARY), summary), SUMMARY_DICTIONARY)
    return summary


__all__ = ["LEVELS_PATH", "NA", "SUMMARY_PATH", "level_rows", "study_levels", "summary_rows",
           "write_level_tables"]
