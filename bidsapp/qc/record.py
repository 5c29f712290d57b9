"""Per-image QC record (JSON, schema ``bidsapp/schemas/qc_record.schema.json``) and QC file names.

One record per (source image, task), written by the job that produced it: no file is shared between
parallel jobs, so no lock is ever needed (SCT's shared ``datasets.js`` under a lock breaks with many
jobs, spinalcordtoolbox#5275). The group level builds the index from these records once.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema

from .. import __version__
from ..derivatives import image_names, parse_name
from ..metrics import LesionStats

RECORD_VERSION = 1


@lru_cache(maxsize=1)
def record_validator() -> jsonschema.protocols.Validator:
    """The JSON Schema validator of QC records (loaded once)."""
    text = resources.files("bidsapp.schemas").joinpath("qc_record.schema.json").read_text()
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def parse_entities(source_relpath: str) -> dict[str, str]:
    """BIDS entities of a file name, spelled as in the name: ``sub-01_run-01_T2w.nii.gz`` ->
    ``{"sub": "01", "run": "01", "suffix": "T2w"}``."""
    parsed = parse_name(source_relpath)
    return {**parsed.entities, "suffix": parsed.suffix}


def qc_names(source_relpath: str, task: str) -> dict[str, str]:
    """QC file paths relative to output_dir (from ``derivatives.image_names``): one PNG per view and
    ``record`` (the JSON): ``sub-01/figures/<source stem>_desc-<task>_<view>.png`` and ``..._qc.json``."""
    names = image_names(source_relpath, task)
    return {**names.figures, "record": names.qc_record}


def _lesions(stats: LesionStats) -> dict[str, Any]:
    return {"count": int(stats.count), "total_mm3": float(stats.total_mm3),
            "largest_mm3": float(stats.largest_mm3), "volumes_mm3": [float(v) for v in stats.volumes_mm3]}


@dataclass(frozen=True)
class QcJob:
    """What a QC record says about the job that made it. Paths are relative: ``source_relpath`` to the
    BIDS root, ``outputs`` to output_dir."""

    source_relpath: str
    task: str
    model_release: str | None
    demo: bool
    runtime_s: float | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    mask_source: Mapping[str, Any] | None = None
    """What the figures were computed from (``corrections.mask_source_block``); None: no record of it
    (a failed image)."""
    levels: Mapping[str, Any] | None = None
    """The image's vertebral levels (``vertlevels.ImageLevels.record``) with ``--disc-labels``."""


def build_record(job: QcJob, *, status: str = "ok", error: str | None = None,
                 stats: LesionStats | None = None, figures: Mapping[str, str] | None = None,
                 qc_error: str | None = None) -> dict[str, Any]:
    """The QC record of one image, validated against the schema.

    ``status`` is ``"ok"`` (then ``stats`` is required) or ``"failed"`` (then ``error`` is required
    and ``stats`` ignored); ``figures`` are relative to output_dir. Raises
    ``jsonschema.ValidationError`` on an inconsistent record.
    """
    failed = status == "failed"
    record = {
        "record_version": RECORD_VERSION,
        "app": {"name": "cordlesion", "version": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": str(job.source_relpath),
        "entities": parse_entities(job.source_relpath),
        "task": job.task,
        "model": {"release": job.model_release, "demo": bool(job.demo)},
        "status": status,
        "error": error if failed else None,
        "runtime_s": None if job.runtime_s is None else round(float(job.runtime_s), 3),
        "outputs": dict(job.outputs),
        "figures": dict(figures or {}),
        "lesions": None if failed or stats is None else _lesions(stats),
        "qc_error": qc_error,
    }
    if job.mask_source is not None:
        record["mask_source"] = dict(job.mask_source)
    if job.levels is not None and not failed:
        record["levels"] = dict(job.levels)
    record_validator().validate(record)
    return record
