"""Participant level: draw and write one image's QC pictures and record (atomic writes, record last)."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib

from ..derivatives import atomic_write_bytes, atomic_write_json
from ..metrics import LesionStats, lesion_stats
from .pictures import render_image_qc
from .record import QcJob, build_record, qc_names

log = logging.getLogger(__name__)


def write_image_qc(output_dir: str | Path, job: QcJob, *, image: nib.Nifti1Image | None = None,
                   mask: nib.Nifti1Image | None = None, cord: nib.Nifti1Image | None = None,
                   stats: LesionStats | None = None, error: str | None = None,
                   levels: nib.Nifti1Image | None = None) -> dict[str, Any]:
    """Write the QC pictures (when there is a mask) and then the QC record of one image; return the record.

    ``error`` set means the image failed: only a ``failed`` record is written. ``stats``: the mask's
    lesion figures when the caller has them (computed here otherwise). A failure to DRAW the pictures
    does not fail the image: the record keeps the lesion figures and says why in ``qc_error``. The
    record is written last, so its presence means the pictures beside it are complete. ``levels``: the
    cord's level map (``--disc-labels``), named beside the cord on the sagittal views.
    """
    out = Path(output_dir)
    names = qc_names(job.source_relpath, job.task)
    # Only the derivative files that exist (a failed image has none; probseg may be switched off).
    job = replace(job, outputs={k: v for k, v in job.outputs.items() if (out / v).is_file()})
    if error is not None or mask is None or image is None:
        record = build_record(job, status="failed", error=error or "no lesion mask produced")
    else:
        stats = lesion_stats(mask) if stats is None else stats
        figures, qc_error = {}, None
        try:
            for view, png in render_image_qc(image, mask, cord, levels=levels).items():
                atomic_write_bytes(out / names[view], png)
                figures[view] = names[view]
        except Exception as exc:  # pictures are a convenience; the segmentation itself succeeded
            log.warning("%s: QC pictures not drawn (%s)", job.source_relpath, exc)
            qc_error = f"{type(exc).__name__}: {exc}"
        record = build_record(job, status="ok", stats=stats, figures=figures, qc_error=qc_error)
    atomic_write_json(out / names["record"], record)
    return record
