"""Group level: ``run.py bids_dir output_dir group`` reads output_dir (and, to register sessions, the
source images in bids_dir; nothing is written there).

From the per-image QC records the participant level wrote (``sub-*/figures/*_qc.json``, one file per
job, so parallel jobs never share a file), it writes ``group/lesions.tsv`` with its data dictionary
``group/lesions.json``, the study's lesion analysis (``analysis.study``: ``group/lesions_per_lesion.tsv``,
the change tables of consecutive sessions in ``group/changes/`` and ``group/new_enlarging.tsv``) and the
QC page ``qc/index.html``. A record that cannot be read is listed as a failed image with the reason,
never silently dropped.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema

from . import tasks
from .derivatives import atomic_write_bytes, atomic_write_json
from .errors import EXIT, OutputError
from .qc.index import Entry, write_index
from .qc.record import parse_entities, record_validator

log = logging.getLogger(__name__)

RECORD_GLOB = "sub-*/figures/*_qc.json"
TABLE_PATH, DICTIONARY_PATH = "group/lesions.tsv", "group/lesions.json"

COLUMNS = ("participant_id", "session_id", "acquisition", "run", "contrast", "task", "lesion_count",
           "total_lesion_volume_mm3", "largest_lesion_mm3", "status", "model_release", "demo_model",
           "mask_source", "cord_source", "manual_mask", "manual_mask_sha256", "manual_mask_author",
           "manual_mask_date", "manual_cord", "source", "error")
_SOURCES = {"model": "the model's mask (written in output_dir)",
            "manual": "a corrected mask from the --corrections folder (manual_* columns)"}

DATA_DICTIONARY: dict[str, dict[str, Any]] = {
    "participant_id": {"Description": "Participant label with the sub- prefix."},
    "session_id": {"Description": "Session label with the ses- prefix; n/a without sessions."},
    "acquisition": {"Description": "acq- entity of the source image (without prefix); n/a when absent."},
    "run": {"Description": "run- entity of the source image, spelled as in the file name; n/a when absent."},
    "contrast": {"Description": "BIDS suffix of the source image (T2w, T2starw, T2star, UNIT1, ...)."},
    "task": {"Description": "Segmentation task run on the image (cordlesion task name).",
             "Levels": {t.name: t.summary for t in map(tasks.get, tasks.names(routable=True))}},
    "lesion_count": {"Description": "Number of lesions: 18-connected components of the lesion mask (SCT); "
                                    "n/a when the image failed."},
    "total_lesion_volume_mm3": {"Description": "Sum of lesion voxel volumes (voxel count x voxel volume from "
                                               "the header zooms).", "Units": "mm^3"},
    "largest_lesion_mm3": {"Description": "Volume of the largest lesion; 0 when there is none.",
                           "Units": "mm^3"},
    "status": {"Description": "Outcome of the participant-level job.",
               "Levels": {"ok": "segmented", "failed": "not segmented: see error"}},
    "model_release": {"Description": "Release of the model that segmented the image."},
    "demo_model": {"Description": "Whether an embedded DEMO model (phantom-trained, not for real data) "
                                  "was used.",
                   "Levels": {"true": "demo model", "false": "official model"}},
    "mask_source": {"Description": "The mask the figures were measured on (for the spinalcord task: its cord "
                                   "mask); n/a when the image failed.", "Levels": _SOURCES},
    "cord_source": {"Description": "The cord mask the lesion table used; n/a without one.",
                    "Levels": _SOURCES},
    "manual_mask": {"Description": "The corrected mask read (mask_source manual), as found; n/a otherwise."},
    "manual_mask_sha256": {"Description": "SHA-256 of the corrected mask file read."},
    "manual_mask_author": {"Description": "Author of the correction (its JSON sidecar's GeneratedBy Manual "
                                          "entry, as manual_correction.py writes it); n/a when not given."},
    "manual_mask_date": {"Description": "Date of the correction (GeneratedBy Manual Date); n/a when not "
                                        "given."},
    "manual_cord": {"Description": "The corrected cord mask read (cord_source manual); n/a otherwise."},
    "source": {"Description": "Source image, relative to the BIDS dataset root."},
    "error": {"Description": "Why the image failed (one line); n/a when it did not."},
}

_QC_NAME = re.compile(r"^(?P<stem>.+)_desc-[A-Za-z0-9]+_qc\.json$")


def _unreadable(path: str, reason: str) -> Entry:
    """A failed entry standing in for a record that cannot be used, so it is listed, not lost."""
    match = _QC_NAME.match(Path(path).name)
    entities = parse_entities((match.group("stem") if match else Path(path).stem) + ".nii.gz")
    entities.setdefault("sub", Path(path).parts[0].removeprefix("sub-"))
    return Entry(path=path, record={"source": path, "entities": entities, "task": None, "status": "failed",
                                    "error": f"{path}: unusable QC record ({reason})", "lesions": None,
                                    "figures": {}, "model": {}})


def _load(output_dir: Path, path: Path) -> Entry:
    rel = path.relative_to(output_dir).as_posix()
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _unreadable(rel, f"cannot read JSON: {exc}")
    try:
        record_validator().validate(record)
    except jsonschema.ValidationError as exc:
        return _unreadable(rel, f"not a cordlesion QC record: {exc.message}")
    return Entry(path=rel, record=record)


def _sort_key(entry: Entry) -> tuple:
    ent = entry.record.get("entities", {})
    return tuple(str(ent.get(k) or "") for k in ("sub", "ses", "acq", "run", "suffix")) + \
        (str(entry.record.get("task") or ""), entry.path)


def collect_records(output_dir: str | Path) -> list[Entry]:
    """Every per-image QC record under output_dir, sorted by subject, session, acq, run, contrast, task."""
    root = Path(output_dir)
    found = (p for p in root.glob(RECORD_GLOB) if not p.name.startswith("."))  # "." = temp of a live writer
    return sorted((_load(root, p) for p in found), key=_sort_key)


def table_row(entry: Entry) -> dict[str, Any]:
    """One lesions.tsv row (None = n/a)."""
    rec, ent = entry.record, entry.record.get("entities", {})
    les = rec.get("lesions") or {}
    model = rec.get("model") or {}
    return {**_row_sources(rec),
        "participant_id": f"sub-{ent['sub']}" if ent.get("sub") else None,
        "session_id": f"ses-{ent['ses']}" if ent.get("ses") else None,
        "acquisition": ent.get("acq"), "run": ent.get("run"), "contrast": ent.get("suffix"),
        "task": rec.get("task"), "lesion_count": les.get("count"),
        "total_lesion_volume_mm3": les.get("total_mm3"), "largest_lesion_mm3": les.get("largest_mm3"),
        "status": rec.get("status"), "model_release": model.get("release"),
        "demo_model": None if "demo" not in model else bool(model["demo"]),
        "source": rec.get("source"), "error": rec.get("error"),
    }


def _row_sources(record: Mapping[str, Any]) -> dict[str, Any]:
    """The mask_source columns of one record (records written before corrections: the model's masks)."""
    if record.get("status") != "ok":
        return {}
    recorded = record.get("mask_source")
    if not isinstance(recorded, Mapping):
        return {"mask_source": "model"}
    mask, cord = recorded.get("mask") or {}, recorded.get("cord") or {}
    return {"mask_source": mask.get("source"), "cord_source": cord.get("source"),
            "manual_mask": mask.get("path"), "manual_mask_sha256": mask.get("sha256"),
            "manual_mask_author": mask.get("author"), "manual_mask_date": mask.get("date"),
            "manual_cord": cord.get("path")}


def _tsv_value(value: Any) -> str:
    if value is None or value == "":
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    # A tab or newline inside a value would shift or split the row.
    return re.sub(r"[\t\r\n]+", " ", str(value))


def lesion_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The TSV text: header then one line per image, ``n/a`` for missing values (BIDS convention)."""
    lines = ["\t".join(COLUMNS)] + ["\t".join(_tsv_value(row.get(c)) for c in COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


def _study_name(output_dir: Path) -> str:
    try:
        name = json.loads((output_dir / "dataset_description.json").read_text(encoding="utf-8")).get("Name")
    except (OSError, ValueError, AttributeError):
        name = None
    return str(name) if name else output_dir.resolve().name


def stale_corrections(output_dir: Path, records: Sequence[Mapping[str, Any]], corrections: Path) -> list[str]:
    """The images whose corrected files in ``corrections`` are not those their figures were measured on
    (new, changed or removed since the participant level): ``"<source> (<task>)"``."""
    from .corrections import find_candidates
    from .derivatives import read_provenance
    from .figures import figures_state, kinds_for

    stale = []
    for rec in records:
        mask_json = (rec.get("outputs") or {}).get("mask_json")
        if rec.get("status") != "ok" or not rec.get("task") or not mask_json:
            continue
        block = rec.get("mask_source") if isinstance(rec.get("mask_source"), Mapping) else {}
        kinds = [k for k in kinds_for(str(rec["task"]), cord_used=bool(block.get("cord"))) if k is not None]
        found = figures_state(find_candidates(corrections, str(rec["source"]), kinds))["Corrections"]
        recorded = (read_provenance(output_dir / mask_json) or {}).get("FiguresState") or {}
        if recorded.get("Corrections") != found:
            stale.append(f"{rec['source']} ({rec['task']})")
    return stale


def stale_discs(output_dir: Path, records: Sequence[Mapping[str, Any]], disc_labels: Path) -> list[str]:
    """The images whose session's disc label files in ``disc_labels`` are not those their levels were
    computed from (or that have none computed): ``"<source> (<task>)"``."""
    from .derivatives import read_provenance
    from .vertlevels import disc_files

    stale = []
    for rec in records:
        mask_json = (rec.get("outputs") or {}).get("mask_json")
        if rec.get("status") != "ok" or not mask_json or not tasks.get(str(rec.get("task"))).lesion_table:
            continue
        files = [[p.name, sha] for p, sha in disc_files(disc_labels, str(rec["source"]))]
        recorded = (read_provenance(output_dir / mask_json) or {}).get("FiguresState") or {}
        if recorded.get("Discs") != files:
            stale.append(f"{rec['source']} ({rec['task']})")
    return stale


def _warn_stale_discs(root: Path, records: Sequence[Mapping[str, Any]],
                      disc_labels: str | Path | None) -> None:
    stale = stale_discs(root, records, Path(disc_labels)) if disc_labels else []
    if stale:
        log.warning("%d image(s) have disc labels in %s that their levels were not computed from: re-run the "
                    "participant level with --disc-labels %s (it redoes their figures only, no model): %s",
                    len(stale), disc_labels, disc_labels,
                    "; ".join(stale[:5]) + (" ..." if len(stale) > 5 else ""))


def run_group(output_dir: str | Path, bids_dir: str | Path | None = None,
              corrections: str | Path | None = None, disc_labels: str | Path | None = None) -> int:
    """Build ``group/lesions.tsv`` + ``lesions.json``, the study's lesion tables, the model masks to correct
    (``corrections.LABELS_DIR``) and ``qc/index.html`` from output_dir (``bids_dir``: the source images, for
    the change between sessions; ``corrections``: the labels folder the participant level read, checked
    against what each image's figures were measured on); exit code."""
    from .analysis.level_tables import write_level_tables
    from .analysis.study import page_lesions, write_study
    from .corrections import write_correction_labels

    root = Path(output_dir)
    entries = collect_records(root)
    if not entries:
        log.error("%s: no QC records (%s): run the participant level into this folder first",
                  root, RECORD_GLOB)
        return EXIT["no_input"]
    try:
        atomic_write_bytes(root / TABLE_PATH, lesion_table([table_row(e) for e in entries]).encode("utf-8"))
        atomic_write_json(root / DICTIONARY_PATH, DATA_DICTIONARY)
        analysis = write_study(root, bids_dir, [e.record for e in entries])
        write_correction_labels(root, [e.record for e in entries])
        write_level_tables(root, [(table_row(e), e.record) for e in entries])
        paths = {"output_dir": str(root.absolute()), **({"bids_dir": str(bids_dir)} if bids_dir else {}),
                 **({"corrections": str(corrections)} if corrections else {})}
        index = write_index(root, entries, study=_study_name(root), paths=paths,
                            lesions=page_lesions(root, [(e.path, e.record) for e in entries], analysis))
    except OutputError as exc:
        log.error("%s", exc)
        return EXIT["cant_create"]
    failed = sum(e.record.get("status") != "ok" for e in entries)
    if failed:
        log.warning("%d of %d images failed at the participant level: listed in %s and %s",
                    failed, len(entries), TABLE_PATH, index.relative_to(root).as_posix())
    stale = stale_corrections(root, [e.record for e in entries], Path(corrections)) if corrections else []
    if stale:
        log.warning("%d image(s) have corrected masks in %s that their figures were not measured on (new, "
                    "changed or removed since the participant level): re-run the participant level with "
                    "--corrections %s (it redoes their figures only, no model): %s", len(stale), corrections,
                    corrections, "; ".join(stale[:5]) + (" ..." if len(stale) > 5 else ""))
    _warn_stale_discs(root, [e.record for e in entries], disc_labels)
    if analysis.failed_pairs:
        log.warning("%d session pair(s) without a change table (see group/new_enlarging.tsv): %s",
                    len(analysis.failed_pairs), "; ".join(analysis.failed_pairs[:3]))
    log.info("group level: %d images, %d lesions, %d session pairs -> %s, %s", len(entries),
             analysis.lesion_rows, analysis.pairs, root / TABLE_PATH, index)
    return EXIT["ok"]
