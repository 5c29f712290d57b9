"""The participant level's part of the lesion analysis: one image's lesion table, and dropping the
lesions that lie wholly outside the cord (``--drop-outside-cord``, SCT issue #4946) from its mask.

Pure: images in, images and text out; the runner writes the files. After a drop the table is measured
on the mask as written, so its ``lesion_id`` values are that mask's labels (and those of the change
tables, which re-label the written masks).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np

from ..imaging import like
from .lesions import LesionAnalysis, analyze_lesions, lesion_labels
from .tables import LESION_DICTIONARY, SOURCE_DICTIONARY, lesion_tsv


@dataclass(frozen=True)
class LesionOutputs:
    """The (possibly reduced) lesion mask, its analysis, the TSV text and what the sidecar records."""

    mask: nib.Nifti1Image
    analysis: LesionAnalysis
    table: str
    provenance: dict[str, Any]
    dictionary: dict[str, Any]


def lesion_outputs(mask: nib.Nifti1Image, cord: nib.Nifti1Image | None, *, drop_outside_cord: bool = False,
                   sources: Mapping[str, str | None] | None = None) -> LesionOutputs:
    """Measure the lesions of ``mask`` (with ``cord`` when given); with ``drop_outside_cord`` first remove
    from the mask every lesion with no voxel in the cord. ``sources``: the table's ``mask_source`` and
    ``cord_source`` columns (``model`` / ``manual``; the BIDS run gives them)."""
    if drop_outside_cord and cord is None:
        raise ValueError("dropping lesions outside the cord needs the cord mask")
    analysis = analyze_lesions(mask, cord)
    dropped = [r.lesion_id for r in analysis.lesions if drop_outside_cord and not r.inside_cord_fraction]
    if dropped:
        labels = lesion_labels(mask)
        kept = np.where(np.isin(labels, dropped), 0, labels > 0).astype(np.uint8)
        mask = like(mask, kept, np.uint8)
        analysis = analyze_lesions(mask, cord)  # ids of the mask as written
    provenance = {"LesionTable": {
        "Definitions": "SCT 7.3 sct_analyze_lesion (cordlesion bidsapp.analysis)",
        "Connectivity": analysis.connectivity, "CordMask": cord is not None,
        "DropOutsideCord": bool(drop_outside_cord), "DroppedLesions": len(dropped)}}
    dictionary = {**LESION_DICTIONARY, **(SOURCE_DICTIONARY if sources is not None else {})}
    return LesionOutputs(mask, analysis, lesion_tsv(analysis, sources), provenance, dictionary)
