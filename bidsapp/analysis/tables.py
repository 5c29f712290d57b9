"""TSV tables and their JSON data dictionaries (BIDS style: LongName, Description, Units, Levels).

Every TSV is written with a JSON of the same name beside it; ``n/a`` marks a value that does not
apply (BIDS). Floats are written with up to 4 decimals.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..derivatives import atomic_write_bytes, atomic_write_json
from .change import ChangeRules, LesionChange, SessionChange
from .lesions import LesionAnalysis, LesionMeasures
from .levels.names import LEVEL_NAMES

NA = "n/a"
_WITH_CORD = " With a cord mask only (n/a without)."
_ANGLE = (" Corrected for the cord's angle per axial slice as SCT does (with a cord mask; without one the"
          " image's own S-I axis is used, uncorrected).")


def _col(long_name: str, description: str, units: str | None = None) -> dict[str, str]:
    entry = {"LongName": long_name, "Description": description}
    if units:
        entry["Units"] = units
    return entry


LESION_DICTIONARY: dict[str, dict[str, str]] = {
    "lesion_id": _col("Lesion identifier",
                      "Label of the lesion: one 18-connected component of the mask (SCT's connectivity), "
                      "numbered in SCT's order (RPI voxel scan order)."),
    "volume_mm3": _col("Lesion volume", "Voxel count x voxel volume (header zooms), the whole lesion.",
                       "mm^3"),
    "length_mm": _col("Lesion length along the cord",
                      "Sum over the axial slices the lesion spans of slice thickness / cos(angle_3d)."
                      + _ANGLE, "mm"),
    "width_mm": _col("Lesion A-P width",
                     "Largest A-P extent over the lesion's axial slices x A-P voxel size x "
                     "cos(angle_sagittal)." + _ANGLE, "mm"),
    "max_equivalent_diameter_mm": _col("Maximum equivalent diameter",
                                       "2 sqrt(A / pi), A the largest axial lesion area x cos(angle_3d)."
                                       + _ANGLE, "mm"),
    "max_axial_damage_ratio": _col("Maximum axial damage ratio",
                                   "Max over the lesion's axial slices of (lesion area inside the cord) / "
                                   "(cord area); slices without cord skipped." + _WITH_CORD),
    "inside_cord_fraction": _col("Fraction of the lesion inside the cord",
                                 "Lesion voxels inside the cord mask / lesion voxels." + _WITH_CORD),
    "centroid_x_mm": _col("Centroid x", "Lesion centre of mass, world x of the NIfTI affine (RAS+: increases "
                                        "towards the subject's right).", "mm"),
    "centroid_y_mm": _col("Centroid y", "Lesion centre of mass, world y (RAS+: anterior positive).", "mm"),
    "centroid_z_mm": _col("Centroid z", "Lesion centre of mass, world z (RAS+: superior positive).", "mm"),
    "slice_axis": _col("S-I array axis", "The image's own array axis (0, 1 or 2) closest to S-I: the axis of "
                                         "first_slice and last_slice."),
    "first_slice": _col("First slice", "Smallest index along slice_axis (the image's own grid) with lesion."),
    "last_slice": _col("Last slice", "Largest index along slice_axis (the image's own grid) with lesion."),
    "midsagittal_slice": _col("Interpolated midsagittal slice",
                              "Float index along the image's own R-L array axis of the interpolated"
                              " midsagittal slice (SCT: from the largest lesion, the same for all lesions)."
                              + _WITH_CORD),
    "dorsal_bridge_width_mm": _col("Midsagittal dorsal tissue bridge width",
                                   "SCT interpolated_dorsal_bridge_width: spared cord tissue dorsal to"
                                   " the lesion on the interpolated midsagittal slice, minimum over its"
                                   " axial slices (Huber et al. 2017)." + _WITH_CORD, "mm"),
    "ventral_bridge_width_mm": _col("Midsagittal ventral tissue bridge width",
                                    "SCT interpolated_ventral_bridge_width: as the dorsal bridge, ventral"
                                    " to the lesion." + _WITH_CORD, "mm"),
    "total_bridge_width_mm": _col("Midsagittal total tissue bridge width",
                                  "dorsal_bridge_width_mm + ventral_bridge_width_mm." + _WITH_CORD, "mm"),
}

_SOURCE_LEVELS = {"model": "the model's mask, as written beside the table",
                  "manual": "a corrected mask read from the --corrections folder (its path, sha256, author "
                            "and date: the mask sidecar's Provenance.MaskSource and the QC record)"}
#: what each per-image table's figures were computed from (issue 24), one value per image
SOURCE_DICTIONARY: dict[str, dict[str, Any]] = {
    "mask_source": {**_col("Lesion mask source", "Which lesion mask the figures were measured on."),
                    "Levels": dict(_SOURCE_LEVELS)},
    "cord_source": {**_col("Cord mask source", "Which cord mask the cord-relative figures used; n/a without "
                                               "a cord mask."), "Levels": dict(_SOURCE_LEVELS)},
}
_NO_LEVEL = (" n/a without disc labels for the image (--disc-labels), when they were refused (the reason: the"
             " QC record and the log), or when none of the lesion's voxels has a level.")
#: the vertebral level columns (issue 25, ``--disc-labels``; cells from ``analysis.levels.LesionLevels``)
_VERT_LEVEL = ("The level holding most of the lesion's voxels (a tie: the superior one). Every lesion voxel "
               "takes the level of its nearest point of the cord's centreline, by SCT 7.3's "
               "sct_label_vertebrae -discfile rule (level k runs from disc k down to disc k+1).")
_EXTRAPOLATED = ("Some of the lesion's voxels lie more than one disc spacing beyond the outermost disc used, "
                 "where the rule only repeats the last level: a guess there.")
LEVEL_DICTIONARY: dict[str, dict[str, Any]] = {
    "vert_level": {**_col("Vertebral level", _VERT_LEVEL + _NO_LEVEL),
                   "Levels": {name: f"vertebra {name}" for name in LEVEL_NAMES.values()}},
    "vert_levels": _col("Vertebral levels touched", "Every level the lesion's voxels lie at, superior first, "
                                                   "comma-separated." + _NO_LEVEL),
    "vert_level_fractions": _col("Fraction of the lesion at each level",
                                 "Fraction of the lesion's levelled voxels at each level of vert_levels, "
                                 "same order, comma-separated." + _NO_LEVEL),
    "vert_level_extrapolated": {**_col("Level extrapolated", _EXTRAPOLATED + _NO_LEVEL),
                                "Levels": {"true": "beyond the labelled discs",
                                           "false": "between the labelled discs or within one spacing"}},
}
CHANGE_SOURCE_DICTIONARY: dict[str, dict[str, Any]] = {
    "mask_source": {**_col("Follow-up lesion mask source", "Which follow-up lesion mask was compared."),
                    "Levels": dict(_SOURCE_LEVELS)},
    "baseline_mask_source": {**_col("Baseline lesion mask source", "Which baseline lesion mask was "
                                                                   "compared."),
                             "Levels": dict(_SOURCE_LEVELS)},
}

STATUS_LEVELS = {
    "new": "no baseline lesion overlaps it (and large enough)",
    "enlarged": "grew beyond both thresholds",
    "stable": "neither enlarged nor shrunk",
    "shrunk": "shrank beyond both thresholds",
    "disappeared": "baseline lesion with no follow-up overlap",
    "too_small": "no baseline overlap, below the minimum new-lesion volume (not counted as new)",
    "not_covered": "its centre lies outside the other session's field of view (no verdict)",
}


def _rule_text(rules: ChangeRules) -> str:
    d = ChangeRules()
    return (f"new: no overlap with a registered baseline lesion and volume >= {rules.min_new_volume_mm3} "
            f"mm^3 (default {d.min_new_volume_mm3}); enlarged: volume >= baseline x "
            f"(1 + {rules.enlarge_relative}) (default {d.enlarge_relative}) and increase >= "
            f"{rules.enlarge_absolute_mm3} mm^3 (default {d.enlarge_absolute_mm3}); shrunk: the mirror rule; "
            "otherwise stable. A merge/split group of lesions is compared as a whole.")


def change_dictionary(rules: ChangeRules, *, sources: bool = False) -> dict[str, Any]:
    """The change table's data dictionary, with the thresholds of this run and their defaults (``sources``:
    with the mask source columns of the group level's tables)."""
    status = _col("Change status", _rule_text(rules))
    status["Levels"] = dict(STATUS_LEVELS)  # type: ignore[assignment]
    d = ChangeRules()
    return {
        "lesion_id": _col("Follow-up lesion identifier",
                          "lesion_id in the follow-up's lesion table; n/a for a baseline-only row."),
        "baseline_lesion_ids": _col("Matched baseline lesions",
                                    "Comma-separated baseline lesion_ids overlapping this lesion after "
                                    "registration (for a baseline-only row: its own id)."),
        "status": status,
        "match_group": _col("Match group", "Smallest follow-up lesion_id of the connected set of overlapping "
                                           "lesions (shared by lesions that merged or split)."),
        "volume_mm3": _col("Follow-up volume", "This lesion's volume.", "mm^3"),
        "baseline_volume_mm3": _col("Matched baseline volume",
                                    "Sum of the matched baseline lesions' volumes, on the baseline grid.",
                                    "mm^3"),
        "group_volume_mm3": _col("Group follow-up volume", "Follow-up volume of the whole match group.",
                                 "mm^3"),
        "group_baseline_volume_mm3": _col("Group baseline volume",
                                          "Baseline volume of the whole match group.", "mm^3"),
        "volume_change_mm3": _col("Volume change", "group_volume_mm3 - group_baseline_volume_mm3.", "mm^3"),
        "volume_change_percent": _col("Relative volume change",
                                      "100 x volume_change_mm3 / group_baseline_volume_mm3.", "%"),
        "overlap_mm3": _col("Overlap with baseline lesions",
                            "Follow-up voxels of this lesion covered by registered baseline lesions.",
                            "mm^3"),
        "centroid_x_mm": _col("Centroid x", "Centre of mass in the follow-up's world (RAS+) mm; a"
                                            " baseline-only row's centre is mapped through the registration.",
                              "mm"),
        "centroid_y_mm": _col("Centroid y", "As centroid_x_mm, y.", "mm"),
        "centroid_z_mm": _col("Centroid z", "As centroid_x_mm, z.", "mm"),
        **(CHANGE_SOURCE_DICTIONARY if sources else {}),
        "Thresholds": {"min_new_volume_mm3": rules.min_new_volume_mm3,
                       "enlarge_relative": rules.enlarge_relative,
                       "enlarge_absolute_mm3": rules.enlarge_absolute_mm3,
                       "Defaults": {"min_new_volume_mm3": d.min_new_volume_mm3,
                                    "enlarge_relative": d.enlarge_relative,
                                    "enlarge_absolute_mm3": d.enlarge_absolute_mm3}},
    }


def format_value(value: Any) -> str:
    """One TSV cell: ``n/a`` for None/NaN, integers as such, floats with up to 4 decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = f"{round(value, 4):.4f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    if hasattr(value, "item"):  # numpy scalar
        return format_value(value.item())
    return str(value).replace("\t", " ")


def tsv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """A TSV text: header line, then one line per row (columns in ``columns`` order)."""
    lines = ["\t".join(columns)]
    lines += ["\t".join(format_value(row.get(c)) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


def lesion_rows(analysis: LesionAnalysis) -> list[dict[str, Any]]:
    return [asdict(r) for r in analysis.lesions]


def lesion_tsv(analysis: LesionAnalysis, sources: Mapping[str, str | None] | None = None) -> str:
    """The per-lesion table; ``sources``: the :data:`SOURCE_DICTIONARY` columns (the same on every row)."""
    if sources is None:
        return tsv(LesionMeasures.columns(), lesion_rows(analysis))
    return tsv([*LesionMeasures.columns(), *SOURCE_DICTIONARY],
               [{**row, **sources} for row in lesion_rows(analysis)])


def change_tsv(change: SessionChange, sources: Mapping[str, str | None] | None = None) -> str:
    """The change table; ``sources``: the :data:`CHANGE_SOURCE_DICTIONARY` columns."""
    rows = [asdict(c) for c in change.changes]
    if sources is None:
        return tsv(LesionChange.columns(), rows)
    return tsv([*LesionChange.columns(), *CHANGE_SOURCE_DICTIONARY], [{**row, **sources} for row in rows])


def add_columns(text: str, columns: Sequence[str], cells: Sequence[Mapping[str, str]]) -> str:
    """A TSV text with ``columns`` appended: ``cells`` holds one mapping per data row, in order."""
    lines = text.rstrip("\n").split("\n")
    if len(lines) - 1 != len(cells):
        raise ValueError(f"{len(cells)} rows of cells for a table of {len(lines) - 1} rows")
    out = ["\t".join([lines[0], *columns])]
    for line, row in zip(lines[1:], cells, strict=True):
        out.append("\t".join([line, *(format_value(row.get(c)) for c in columns)]))
    return "\n".join(out) + "\n"


def write_table(path: str | Path, text: str, dictionary: Mapping[str, Any]) -> Path:
    """Write ``text`` to ``path`` (.tsv) and the data dictionary beside it (.json), atomically."""
    path = Path(path)
    atomic_write_bytes(path, text.encode("utf-8"))
    atomic_write_json(path.with_suffix(".json"), dict(dictionary))
    return path.with_suffix(".json")


def read_tsv(text: str) -> list[dict[str, str]]:
    """Rows of a TSV text as dicts of strings (``n/a`` kept)."""
    lines = [line for line in text.splitlines() if line]
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]



def combine_tables(parts: Iterable[tuple[Sequence[str], str]], key_columns: Sequence[str]) -> str:
    """One TSV from many per-image tables, each row prefixed with its part's key values (e.g.
    participant_id, session_id, source file): the group-level per-lesion table. Text only: a part with
    the first part's header is copied line by line, so 2,000 per-image tables join in well under a
    second; a part with other columns (written by another release) is mapped onto the union of the
    columns, ``n/a`` where it has none."""
    columns: list[str] = []
    blocks: list[tuple[str, list[str], list[str]]] = []
    for keys, text in parts:
        rows = text.splitlines()
        if not rows:
            continue
        header = rows[0].split("\t")
        columns += [c for c in header if c not in columns]
        prefix = "\t".join(format_value(k) for k in keys) + "\t"
        blocks.append((prefix, header, [row for row in rows[1:] if row]))
    columns = columns or LesionMeasures.columns()
    lines = ["\t".join([*key_columns, *columns])]
    for prefix, header, rows in blocks:
        if header == columns:
            lines.extend(prefix + row for row in rows)
            continue
        for row in rows:
            values = dict(zip(header, row.split("\t"), strict=False))
            lines.append(prefix + "\t".join(values.get(c, NA) for c in columns))
    return "\n".join(lines) + "\n"
