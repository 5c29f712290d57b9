"""What a job writes besides the model's masks: its figures (the per-lesion table, the lesion figures and
mask sources in the sidecars, the QC pictures and record), after a model run, or without one when only the
corrected masks of ``--corrections`` changed (:func:`refresh`: the written masks are read back).

What an image's figures depend on besides its model outputs is the corrected files found for it
(``figures.figures_state``, recorded as the sidecar's ``Provenance.FiguresState``): a re-run whose
corrected files are the same recomputes nothing; a new or changed one redoes that image's figures only.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib

from . import derivatives, tasks, vertlevels
from .corrections import NONE, Candidates, LabelKind, find_candidates, load_corrections
from .figures import (
    DISCS_KEY,
    Figures,
    ModelMasks,
    figures_state,
    kinds_for,
    measure,
    model_table,
    with_levels,
)

__all__ = ["Figures", "NO_CANDIDATES", "candidates", "figure_provenance", "figures_fresh", "job_kinds",
           "measure_job", "model_masks", "refresh", "write_qc", "write_table"]
from .plan import Job
from .settings import Settings

log = logging.getLogger(__name__)

NO_CANDIDATES = Candidates({})


def job_kinds(job: Job, settings: Settings) -> tuple[LabelKind | None, LabelKind | None]:
    """(kind of the job's own mask, kind of the cord its table uses) under the run's ``--cord``."""
    return kinds_for(job.task, cord_used=settings.cord)


def candidates(job: Job, settings: Settings) -> Candidates:
    """The corrected files of the job's image in ``--corrections`` (none without it), hashed; with
    ``--disc-labels``, for a lesion task, the disc label files of its session too (``DISCS_KEY``)."""
    kinds = [k for k in job_kinds(job, settings) if k is not None]
    files = dict(find_candidates(settings.corrections, job.source.relpath, kinds).files) \
        if settings.corrections is not None and kinds else {}
    if settings.disc_labels is not None and tasks.get(job.task).lesion_table:
        files[DISCS_KEY] = vertlevels.disc_files(settings.disc_labels, job.source.relpath)
    return Candidates(files) if files else NO_CANDIDATES


def figures_fresh(output_dir: Path, job: Job, found: Candidates) -> bool:
    """Whether the job's figures were measured on exactly these corrected files (its mask sidecar's
    ``FiguresState``; outputs of a release before corrections have none: their figures are redone once)."""
    prov = derivatives.read_provenance(Path(output_dir) / job.outputs["mask_json"]) or {}
    return prov.get("FiguresState") == figures_state(found)


def model_masks(job: Job, settings: Settings, mask: nib.Nifti1Image,
                cord: nib.Nifti1Image | None) -> ModelMasks:
    """The model's masks to write and, for a lesion task, its table (``--drop-outside-cord`` with the
    model's cord): the table's ``mask`` is the lesion mask to write; its cord, written unless
    ``--no-cord`` (then only the cord a task's own crop box came from)."""
    spec = tasks.get(job.task)
    if not spec.lesion_table:
        return ModelMasks(mask, cord)
    cord = cord if settings.cord or tasks.CORD_MODEL in spec.models else None
    table = model_table(mask, cord if settings.cord else None, drop_outside_cord=settings.drop_outside_cord)
    return ModelMasks(table.mask, cord, table)


def measure_job(img: nib.Nifti1Image, job: Job, settings: Settings, model: ModelMasks,
                found: Candidates) -> Figures:
    """The job's figures on its corrected masks (checked against ``img``; a refused one is logged and the
    model's stands) or on the model's."""
    mask_kind, cord_kind = job_kinds(job, settings)
    kinds = [k for k in (mask_kind, cord_kind) if k is not None]
    loaded = load_corrections(found, img, job.source.relpath, kinds) if found.files else NONE
    for reason in loaded.refused:
        log.warning("%s: corrected mask refused, the model's figures stand: %s", job.name, reason)
    figures = measure(model, loaded, mask_kind=mask_kind, cord_kind=cord_kind,
                      drop_outside_cord=settings.drop_outside_cord)
    for note in figures.source["notes"]:
        log.info("%s: %s", job.name, note)
    if DISCS_KEY in found.files and settings.disc_labels is not None and figures.table is not None:
        levels = vertlevels.image_levels(img, job.source.relpath, cord=figures.cord, mask=figures.mask,
                                         files=found.files[DISCS_KEY],
                                         roots=(settings.disc_labels, settings.bids_dir))
        if levels.error:
            log.warning("%s: disc labels refused, its levels are n/a: %s", job.name, levels.error)
        elif levels.available:
            log.info("%s: vertebral levels %s from %s", job.name, _span(levels), levels.labels_path)
        figures = with_levels(figures, levels)
    return figures


def _span(levels: vertlevels.ImageLevels) -> str:
    names = levels.record()["covered"]
    return f"{names[0]}-{names[-1]}" if names else "none"


def figure_provenance(figures: Figures, found: Candidates) -> dict[str, Any]:
    """The sidecar's figures: lesion count and volume of the mask measured, where it came from, and what
    they depend on (``FiguresState``)."""
    source = dict(figures.source)
    if figures.manual and figures.table is not None:  # the table of the corrected mask (its drop)
        source["LesionTable"] = figures.table.provenance["LesionTable"]
    out = {"LesionCount": int(figures.stats.count),
           "LesionVolumeMm3": round(float(figures.stats.total_mm3), 3),
           "MaskSource": source, "FiguresState": figures_state(found)}
    if figures.levels is not None:
        record = figures.levels.record()
        out["VertebralLevels"] = {k: record[k] for k in ("covered", "source", "drawn_on", "shared", "error")}
    return out


def write_table(settings: Settings, job: Job, figures: Figures) -> None:
    """The per-lesion table of the mask measured, and its data dictionary (lesion tasks); the cord's
    level map with ``--disc-labels`` (:func:`write_levels`)."""
    if figures.table is None:
        return
    out = settings.output_dir
    derivatives.atomic_write_bytes(out / job.names.lesions_tsv, figures.table.table.encode("utf-8"))
    derivatives.atomic_write_json(out / job.names.lesions_json, figures.table.dictionary)
    write_levels(settings, job, figures)


def level_files(job: Job) -> dict[str, str]:
    """The level map's files this job writes: those of the job that writes the image's cord mask."""
    names = job.names
    if "cord" not in job.outputs or not (names.levels and names.levels_tsv and names.levels_json):
        return {}
    return {"levels": names.levels, "levels_tsv": names.levels_tsv, "levels_json": names.levels_json}


def write_levels(settings: Settings, job: Job, figures: Figures) -> None:
    """The cord's level map (``_dseg.nii.gz``, ``.tsv``, ``.json``) when the image has levels; a map of
    an earlier run whose labels are now gone or refused is removed (it would not match the tables)."""
    files, levels, out = level_files(job), figures.levels, settings.output_dir
    if not files:
        return
    if levels is None or not levels.available:
        for rel in files.values():
            (out / rel).unlink(missing_ok=True)
        return
    derivatives.atomic_save_nifti(levels.cord_map, out / files["levels"])
    derivatives.atomic_write_bytes(out / files["levels_tsv"], vertlevels.dseg_tsv(levels).encode("utf-8"))
    sidecar = vertlevels.dseg_sidecar(levels, job.source.relpath)
    derivatives.atomic_write_json(out / files["levels_json"], sidecar)


def write_qc(settings: Settings, job: Job, models: Mapping[str, Any], runtime_s: float, *,
             shown: tuple[nib.Nifti1Image, Figures] | None = None, error: str | None = None) -> None:
    """The job's QC pictures and record (``shown``: the image and its figures), or the record of its
    failure (``error``; writing it must not raise: the failure is what gets reported)."""
    from .qc import QcJob, write_image_qc

    model = models.get(tasks.get(job.task).main_model)
    qc_job = QcJob(source_relpath=job.source.relpath, task=job.task,
                   model_release=getattr(model, "release", None), demo=bool(getattr(model, "demo", False)),
                   runtime_s=runtime_s, outputs=job.outputs,
                   mask_source=shown[1].source if shown is not None else None,
                   levels=_levels_record(job, shown[1] if shown is not None else None))
    if error is None and shown is not None:
        img, figures = shown
        level_map = figures.levels.cord_map if figures.levels is not None else None
        write_image_qc(settings.output_dir, qc_job, image=img, mask=figures.mask, cord=figures.cord,
                       stats=figures.stats, levels=level_map)
        return
    try:
        write_image_qc(settings.output_dir, qc_job, error=error)
    except Exception as exc:  # the image's own failure is what gets reported
        log.warning("%s: QC record of the failure not written (%s)", job.name, exc)


def _levels_record(job: Job, figures: Figures | None) -> dict[str, Any] | None:
    """The QC record's ``levels`` block (None without ``--disc-labels``)."""
    if figures is None or figures.levels is None:
        return None
    return figures.levels.record(level_files(job) if figures.levels.available else None)


# ----------------------------------------------------------------------------------- figures only
def _read_mask(path: Path) -> nib.Nifti1Image:
    from .analysis.io import load_mask

    return load_mask(path)


def refresh(job: Job, settings: Settings, models: Mapping[str, Any], found: Candidates) -> Figures:
    """Redo the job's figures on the masks it wrote (its model outputs are up to date) and the corrected
    files ``found``: table, QC, then the sidecars' figures (the mask sidecar last: until it is written,
    the figures stay out of date and a re-run redoes them). No model runs; no mask is rewritten."""
    from .imaging import load_image

    start, out = time.perf_counter(), settings.output_dir
    img = load_image(job.source.path)
    cord_file = job.names.cord and out / job.names.cord    # also when another job of the image wrote it
    used = settings.cord or tasks.CORD_MODEL in tasks.get(job.task).models  # --no-cord: a crop's cord only
    cord = _read_mask(cord_file) if cord_file and used and cord_file.is_file() else None
    model = model_masks(job, settings, _read_mask(out / job.outputs["mask"]), cord)
    figures = measure_job(img, job, settings, model, found)
    write_table(settings, job, figures)
    previous = derivatives.read_provenance(out / job.outputs["mask_json"]) or {}
    write_qc(settings, job, models, float(previous.get("RunTimeSeconds") or 0.0), shown=(img, figures))
    kept = {k: v for k, v in previous.items() if k != "VertebralLevels"}  # redone, or gone without levels
    provenance = {**kept, **figure_provenance(figures, found)}
    for key in sorted(k for k in job.outputs if k.endswith("_json") and k != "mask_json") + ["mask_json"]:
        path = out / job.outputs[key]
        sidecar = derivatives.read_json_quietly(path)
        if sidecar:
            derivatives.atomic_write_json(path, {**sidecar, derivatives.PROVENANCE_KEY: provenance})
    log.info("%s: figures redone on %s masks in %.1f s (the model's outputs are up to date)", job.name,
             "corrected" if figures.manual else "the model's", time.perf_counter() - start)
    return figures
