"""An image's figures (its lesion table, lesion count and volume, what its QC pictures show) from its
masks: the model's, or the corrected ones of ``--corrections`` (issue 24).

The model's masks are written as they come (``--drop-outside-cord`` applied with the model's cord); the
figures are measured on the corrected lesion mask and cord mask where the labels folder holds valid ones
(``corrections``), on the model's otherwise, and say which (``mask_source``: ``model`` or ``manual``,
with the corrected file's path, sha256, author and date). Pure: images in, values out; the runner writes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import nibabel as nib

from . import tasks
from .analysis.participant import LesionOutputs, lesion_outputs
from .corrections import CORD, LESION, MODEL_SOURCE, NONE, Candidates, LabelKind, Loaded, source_of
from .metrics import LesionStats, lesion_stats

#: the ``Candidates`` entry of the disc label files (``--disc-labels``; ``vertlevels.DISCS``)
DISCS_KEY = "discs"
#: bumped when the figures of an unchanged mask would change: outputs recording another are refreshed
FIGURES_VERSION = 1


def kinds_for(task: str | tasks.Task, cord_used: bool) -> tuple[LabelKind | None, LabelKind | None]:
    """(kind of the job's own mask, kind of the cord mask its figures use): a lesion task's mask is a
    lesion mask, measured against the cord when ``cord_used``; ``spinalcord``'s mask is the cord."""
    spec = tasks.get(task)
    if spec.label == "SC":
        return CORD, None
    if spec.label == "lesion":
        return LESION, (CORD if cord_used and spec.lesion_table else None)
    return None, None


def figures_state(candidates: Candidates) -> dict[str, Any]:
    """What an image's figures depend on besides its model outputs (recorded in the mask sidecar as
    ``Provenance.FiguresState``): the corrected files found for it, by name and checksum, and with
    ``--disc-labels`` (a ``discs`` entry, possibly empty) the disc label files of its session (``Discs``)."""
    state = {kind: files for kind, files in candidates.state().items() if kind != DISCS_KEY}
    out: dict[str, Any] = {"Version": FIGURES_VERSION, "Corrections": state}
    if DISCS_KEY in candidates.files:
        out["Discs"] = [[p.name, sha] for p, sha in candidates.files[DISCS_KEY]]
    return out


@dataclass(frozen=True)
class Figures:
    """What an image's figures were measured on, and the figures."""

    mask: nib.Nifti1Image
    """The mask measured (corrected or the model's, after ``--drop-outside-cord``): the QC pictures'."""
    cord: nib.Nifti1Image | None
    """The cord mask the table and the pictures used (corrected or the model's)."""
    stats: LesionStats
    table: LesionOutputs | None
    """The per-lesion table (lesion tasks)."""
    source: dict[str, Any]
    """``mask_source`` of the QC record and the sidecar: ``mask``, ``cord``, ``refused``, ``notes``."""
    levels: Any = None
    """The image's vertebral levels (``vertlevels.ImageLevels``) with ``--disc-labels``, else None."""

    @property
    def manual(self) -> bool:
        return self.source["mask"]["source"] == "manual"


@dataclass(frozen=True)
class ModelMasks:
    """The model's masks as written, and the lesion table measured on them (lesion tasks)."""

    mask: nib.Nifti1Image
    cord: nib.Nifti1Image | None
    table: LesionOutputs | None = None


def _sources(mask_kind: LabelKind | None, cord_kind: LabelKind | None, loaded: Loaded) -> dict[str, Any]:
    return {"mask": source_of(loaded.get(mask_kind)),
            "cord": source_of(loaded.get(cord_kind)) if cord_kind is not None else None,
            "refused": list(loaded.refused), "notes": []}


def _columns(source: Mapping[str, Any]) -> dict[str, str | None]:
    """The tables' ``mask_source`` / ``cord_source`` values."""
    cord = source.get("cord")
    return {"mask_source": source["mask"]["source"], "cord_source": cord["source"] if cord else None}


def model_table(mask: nib.Nifti1Image, cord: nib.Nifti1Image | None, *, drop_outside_cord: bool,
                sources: Mapping[str, Any] | None = None) -> LesionOutputs:
    """The lesion table of the model's mask (``--drop-outside-cord`` applied with ``cord``): its
    ``mask`` is the mask to write. ``sources``: the table's source columns (the model's by default)."""
    model = {"mask": dict(MODEL_SOURCE), "cord": dict(MODEL_SOURCE) if cord is not None else None}
    columns = _columns(sources or model)
    return lesion_outputs(mask, cord, drop_outside_cord=drop_outside_cord, sources=columns)


def measure(model: ModelMasks, loaded: Loaded = NONE, *, mask_kind: LabelKind | None,
            cord_kind: LabelKind | None, drop_outside_cord: bool = False) -> Figures:
    """The figures of one image: measured on the corrections in ``loaded`` (of ``mask_kind`` and
    ``cord_kind``) where there are, else the model's (``model.table``, the model's own table of a lesion
    task, is then kept as it is). ``cord_kind`` None: the table uses no cord (``--no-cord``); the
    pictures still outline the model's cord when there is one."""
    source = _sources(mask_kind, cord_kind, loaded)
    mask_fix, cord_fix = loaded.get(mask_kind), loaded.get(cord_kind)
    mask = mask_fix.mask if mask_fix is not None else model.mask
    cord = cord_fix.mask if cord_fix is not None else model.cord
    table = model.table
    if table is not None and (mask_fix is not None or cord_fix is not None):
        table = model_table(mask, cord if cord_kind is not None else None,
                            drop_outside_cord=drop_outside_cord, sources=source)
    measured = table.mask if table is not None else mask
    stats = lesion_stats(measured)
    if mask_fix is not None and stats.count == 0:
        found = lesion_stats(model.mask).count
        if found:
            source["notes"].append(f"0 lesions after correction (the model found {found})")
    return Figures(measured, cord, stats, table, source)


def with_levels(figures: Figures, levels: Any) -> Figures:
    """The figures with the image's levels (``vertlevels.ImageLevels``): the lesion table gets the level
    columns (``n/a`` where there are none) and their data dictionary entries."""
    from .analysis.tables import LEVEL_DICTIONARY, add_columns

    table = figures.table
    if table is not None:
        ids = [int(r.lesion_id) for r in table.analysis.lesions]
        text = add_columns(table.table, list(LEVEL_DICTIONARY), levels.rows(ids))
        table = replace(table, table=text, dictionary={**table.dictionary, **LEVEL_DICTIONARY})
    return replace(figures, table=table, levels=levels)
