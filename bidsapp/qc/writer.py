"""Participant level: draw and write one image's QC pictures and record (atomic writes, record last)."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib

from ..derivatives import atomic_write_bytes, atomic_write_json
from ..metrics import lesion_stats
from .pictures import render_image_qc
from .record import build_record, qc_names

log = logging.getLogger(__name__)


def write_image_qc(output_dir: str | Path, *, source_relpath: str, task: str, model_release: str | None,
                   demo: bool, runtime_s: float | None, image: nib.Nifti1Image | None = None,
                   mask: nib.Nifti1Image | None = None, cord: nib.Nifti1Image | None = None,
                   outputs: Mapping[str, str] | None = None, error: str | None = None) -> dict[str, Any]:
    """Write the QC pictures (when there is a mask) and then the QC record of one image; return the record.

    ``error`` set means the image failed: only a ``failed`` record is written. A failure to DRAW the
    pictures does not fail the image: the record keeps the lesion figures and says why in ``qc_error``.
    The record is written last, so its presence means the pictures beside it are complete.
    """
    out = Path(output_dir)
    names = qc_names(source_relpath, task)
    # Only the derivative files that exist (a failed image has none; probseg may be switched off).
    outputs = {k: v for k, v in (outputs or {}).items() if (out / v).is_file()}
    common = {"source_relpath": source_relpath, "task": task, "model_release": model_release,
              "demo": demo, "runtime_s": runtime_s, "outputs": outputs}
    if error is not None or mask is None or image is None:
        record = build_record(status="failed", error=error or "no lesion mask produced", **common)
    else:
        stats = lesion_stats(mask)
        figures, qc_error = {}, None
        try:
            for view, png in render_image_qc(image, mask, cord).items():
                atomic_write_bytes(out / names[view], png)
                figures[view] = names[view]
        except Exception as exc:  # pictures are a convenience; the segmentation itself succeeded
            log.warning("%s: QC pictures not drawn (%s)", source_relpath, exc)
            qc_error = f"{type(exc).__name__}: {exc}"
        record = build_record(status="ok", stats=stats, figures=figures, qc_error=qc_error, **common)
    atomic_write_json(out / names["record"], record)
    return record
