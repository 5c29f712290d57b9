"""Per-image QC record (JSON, schema ``bidsapp/schemas/qc_record.schema.json``) and QC file names.

One record per (source image, task), written by the job that produced it: no file is shared between
parallel jobs, so no lock is ever needed (SCT's shared ``datasets.js`` under a lock breaks with many
jobs, spinalcordtoolbox#5275). The group level builds the index from these records once.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

import jsonschema

from .. import __version__
from ..metrics import LesionStats
from .pictures import VIEWS

RECORD_VERSION = 1
_ENTITY = re.compile(r"^([a-zA-Z]+)-(.+)$")  # values kept verbatim (escaped where shown)


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
    name = PurePosixPath(source_relpath).name
    stem = name.split(".", 1)[0]
    *pairs, suffix = stem.split("_")
    out: dict[str, str] = {}
    for pair in pairs:
        match = _ENTITY.match(pair)
        if match:
            out[match.group(1)] = match.group(2)
    out["suffix"] = suffix
    return out


def model_label(task: str) -> str:
    """``desc-`` label of a task's QC files: alphanumerics only (``lesion_ms`` -> ``lesionms``)."""
    return re.sub(r"[^A-Za-z0-9]", "", task)


def qc_names(source_relpath: str, task: str) -> dict[str, str]:
    """QC file paths relative to output_dir: one PNG per view and ``record`` (the JSON).

    ``sub-01/figures/<source stem>_desc-<model>_<view>.png`` and ``..._qc.json``.
    """
    src = PurePosixPath(source_relpath)
    stem = src.name.split(".", 1)[0]
    base = f"{src.parts[0]}/figures/{stem}_desc-{model_label(task)}"
    names = {view: f"{base}_{view}.png" for view in VIEWS}
    names["record"] = f"{base}_qc.json"
    return names


def _lesions(stats: LesionStats) -> dict[str, Any]:
    return {"count": int(stats.count), "total_mm3": float(stats.total_mm3),
            "largest_mm3": float(stats.largest_mm3), "volumes_mm3": [float(v) for v in stats.volumes_mm3]}


def build_record(*, source_relpath: str, task: str, model_release: str | None, demo: bool,
                 status: str = "ok", error: str | None = None, stats: LesionStats | None = None,
                 outputs: Mapping[str, str] | None = None, figures: Mapping[str, str] | None = None,
                 runtime_s: float | None = None, qc_error: str | None = None) -> dict[str, Any]:
    """The QC record of one image, validated against the schema.

    ``status`` is ``"ok"`` (then ``stats`` is required) or ``"failed"`` (then ``error`` is required
    and ``stats`` ignored). Paths are relative: ``source_relpath`` to the BIDS root, ``outputs`` and
    ``figures`` to output_dir. Raises ``jsonschema.ValidationError`` on an inconsistent record.
    """
    failed = status == "failed"
    record = {
        "record_version": RECORD_VERSION,
        "app": {"name": "cordlesion", "version": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": str(source_relpath),
        "entities": parse_entities(source_relpath),
        "task": task,
        "model": {"release": model_release, "demo": bool(demo)},
        "status": status,
        "error": error if failed else None,
        "runtime_s": None if runtime_s is None else round(float(runtime_s), 3),
        "outputs": dict(outputs or {}),
        "figures": dict(figures or {}),
        "lesions": None if failed or stats is None else _lesions(stats),
        "qc_error": qc_error,
    }
    record_validator().validate(record)
    return record
