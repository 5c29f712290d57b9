"""Study-level lesion analysis (the group level's part): one per-lesion table for the whole dataset, and
for every longitudinal series the change between consecutive sessions with per-pair counts.

Reads the participant level's outputs (per-image lesion tables, lesion and cord masks, named by
``derivatives.image_names``) and, for the registration, the source images in the BIDS folder. Writes
under ``output_dir/group/``:

- ``lesions_per_lesion.tsv`` (+ ``.json``): every lesion of every image, keyed by its image;
- ``changes/<pair>_change.tsv`` (+ ``.json``, ``_registration.json``, ``.tfm``): one per consecutive pair;
- ``new_enlarging.tsv`` (+ ``.json``): per subject and pair, the counts of new, enlarged, ... lesions.

A pair whose change table is up to date (same inputs by checksum, same rules and registration
settings, recorded in its ``_registration.json``) is not registered again. A pair that fails (missing
source image, registration error) gets a row with its error; the others go on.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..derivatives import atomic_write_bytes, atomic_write_json, image_names, read_json_quietly, sha256_file
from ..errors import CordlesionError
from .change import ChangeRules, SessionChange, SessionInputs, analyze_change
from .io import load_mask
from .registration import RegistrationSettings, tfm_text
from .series import COUNT_COLUMNS, SessionImage, consecutive_pairs, counts_row, pair_name
from .tables import (
    LESION_DICTIONARY,
    LEVEL_DICTIONARY,
    SOURCE_DICTIONARY,
    change_dictionary,
    change_tsv,
    combine_tables,
    read_tsv,
    tsv,
    write_table,
)

log = logging.getLogger(__name__)

PER_LESION_PATH = "group/lesions_per_lesion.tsv"
COUNTS_PATH = "group/new_enlarging.tsv"
CHANGES_DIR = "group/changes"
KEY_COLUMNS = ("participant_id", "session_id", "acquisition", "run", "contrast", "task", "source")
COUNTED = ("new", "enlarged", "stable", "shrunk", "disappeared")

_KEY_DICTIONARY = {
    "participant_id": {"LongName": "Participant", "Description": "Participant label with the sub- prefix."},
    "session_id": {"LongName": "Session", "Description": "Session label with the ses- prefix; n/a without."},
    "acquisition": {"LongName": "Acquisition",
                    "Description": "acq- entity of the source image; n/a when absent."},
    "run": {"LongName": "Run", "Description": "run- entity of the source image; n/a when absent."},
    "contrast": {"LongName": "Contrast", "Description": "BIDS suffix of the source image."},
    "task": {"LongName": "Task", "Description": "Segmentation task that made the lesion mask."},
    "source": {"LongName": "Source image", "Description": "Source image, relative to the BIDS dataset root."},
}


@dataclass(frozen=True)
class StudySettings:
    """The change rules and the registration settings of the group level (recorded with each pair)."""

    rules: ChangeRules = ChangeRules()
    registration: RegistrationSettings = RegistrationSettings()


@dataclass
class StudyResult:
    """What the study tables hold: lesion rows, pairs compared, pairs that failed, new-lesion marks."""

    lesion_rows: int = 0
    pairs: int = 0
    failed_pairs: list[str] = field(default_factory=list)
    statuses: dict[tuple[str, str], dict[int, str]] = field(default_factory=dict)
    """(follow-up source, task) -> {lesion_id: status} (for the QC page)."""


def study_images(records: Iterable[Mapping[str, Any]]) -> list[SessionImage]:
    """The segmented lesion images of the QC records (status ok, a lesion task), record as payload."""
    out = []
    for rec in records:
        if rec.get("status") != "ok" or not rec.get("task") or rec.get("lesions") is None:
            continue
        ent = dict(rec.get("entities") or {})
        if ent.get("sub") and ent.get("suffix"):
            out.append(SessionImage(ent, str(rec["task"]), str(rec["source"]), rec))
    return out


def _keys(image: SessionImage) -> tuple[str | None, ...]:
    e = image.entities
    return (f"sub-{e['sub']}", f"ses-{e['ses']}" if e.get("ses") else None, e.get("acq"), e.get("run"),
            e.get("suffix"), image.task, image.source)


def per_lesion_table(output_dir: Path, images: Sequence[SessionImage]) -> tuple[str, int]:
    """The whole dataset's per-lesion TSV and its row count (images without a table are skipped)."""
    parts = []
    for image in sorted(images, key=lambda im: im.order_key() + (im.session,)):
        path = output_dir / image_names(image.source, image.task).lesions_tsv
        if path.is_file():
            parts.append((_keys(image), path.read_text(encoding="utf-8")))
    text = combine_tables(parts, KEY_COLUMNS)
    return text, text.count("\n") - 1


# ------------------------------------------------------------------------------------------ pairs
@dataclass(frozen=True)
class _PairFiles:
    followup_mask: Path
    followup_image: Path
    baseline_mask: Path
    baseline_image: Path
    followup_cord: Path | None
    baseline_cord: Path | None

    def checksums(self) -> dict[str, str | None]:
        return {f.name: (sha256_file(getattr(self, f.name)) if getattr(self, f.name) else None)
                for f in dataclasses.fields(self)}


def mask_source(image: SessionImage, key: str = "mask") -> dict[str, Any] | None:
    """What an image's figures were measured on (its QC record's ``mask_source``; ``key``: ``mask`` or
    ``cord``): ``{"source": "model"}`` for records written before corrections existed."""
    recorded = (image.payload or {}).get("mask_source") if isinstance(image.payload, Mapping) else None
    if not isinstance(recorded, Mapping):
        return {"source": "model"}
    entry = recorded.get(key)
    return dict(entry) if isinstance(entry, Mapping) else None


def _measured(output_dir: Path, image: SessionImage, key: str) -> Path | None:
    """The mask the image's figures were measured on: the corrected file it records (checked to be the
    same file still: its sha256), else the model's in output_dir (the cord: None when it has none)."""
    source = mask_source(image, key)
    if source is not None and source.get("source") == "manual":
        path = Path(str(source.get("path")))
        if not path.is_file() or sha256_file(path) != source.get("sha256"):
            what = "lesion" if key == "mask" else "cord"
            raise CordlesionError(f"{path}: corrected {what} mask changed or missing since the participant "
                                  "level: re-run the participant level with --corrections")
        return path
    names = image_names(image.source, image.task)
    if key == "mask":
        return output_dir / names.mask
    return output_dir / names.cord if names.cord and (output_dir / names.cord).is_file() else None


def _files(output_dir: Path, bids_dir: Path, baseline: SessionImage, followup: SessionImage) -> _PairFiles:
    return _PairFiles(_measured(output_dir, followup, "mask"), bids_dir / followup.source,
                      _measured(output_dir, baseline, "mask"), bids_dir / baseline.source,
                      _measured(output_dir, followup, "cord"), _measured(output_dir, baseline, "cord"))


def _sources(baseline: SessionImage, followup: SessionImage) -> dict[str, str]:
    """The change table's source columns."""
    return {"mask_source": (mask_source(followup) or {}).get("source", "model"),
            "baseline_mask_source": (mask_source(baseline) or {}).get("source", "model")}


def _inputs(files: _PairFiles) -> SessionInputs:
    from ..imaging import load_image

    return SessionInputs(load_mask(files.followup_mask), load_image(files.followup_image),
                         load_mask(files.baseline_mask), load_image(files.baseline_image),
                         load_mask(files.followup_cord) if files.followup_cord else None,
                         load_mask(files.baseline_cord) if files.baseline_cord else None)


def _record(change: SessionChange, state: Mapping[str, Any]) -> dict[str, Any]:
    record = change.registration.summary()
    record.update(CordDice=change.cord_dice, Counts={s: change.count(s) for s in COUNTED}, State=dict(state),
                  Statuses={str(c.lesion_id): c.status for c in change.changes if c.lesion_id is not None})
    return record


def _state(files: _PairFiles, settings: StudySettings, sources: Mapping[str, str]) -> dict[str, Any]:
    return {"Inputs": files.checksums(), "Sources": dict(sources),
            "Rules": dataclasses.asdict(settings.rules),
            "Registration": {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in dataclasses.asdict(settings.registration).items()}}


def compare_pair(output_dir: Path, bids_dir: Path, pair: tuple[SessionImage, SessionImage],
                 settings: StudySettings) -> dict[str, Any]:
    """Change table of one pair (reused when up to date); returns its registration record."""
    baseline, followup = pair
    stem = f"{CHANGES_DIR}/{pair_name(baseline, followup)}"
    files, sources = _files(output_dir, bids_dir, baseline, followup), _sources(baseline, followup)
    state = _state(files, settings, sources)
    record_path = output_dir / f"{stem}_registration.json"
    previous = read_json_quietly(record_path)
    if previous.get("State") == state and (output_dir / f"{stem}_change.tsv").is_file():
        return previous
    change = analyze_change(_inputs(files), settings.rules, settings.registration)
    write_table(output_dir / f"{stem}_change.tsv", change_tsv(change, sources),
                change_dictionary(settings.rules, sources=True))
    atomic_write_bytes(output_dir / f"{stem}.tfm", tfm_text(change.registration.transform))
    record = _record(change, state)
    atomic_write_json(record_path, record)  # last: its presence means the pair's files are complete
    return record


# ------------------------------------------------------------------------------------------ study
def write_study(output_dir: str | Path, bids_dir: str | Path | None, records: Iterable[Mapping[str, Any]],
                settings: StudySettings | None = None) -> StudyResult:
    """Write the per-lesion table, the change tables and the counts; return what they hold."""
    root, settings = Path(output_dir), settings or StudySettings()
    images = study_images(records)
    result = StudyResult()
    text, result.lesion_rows = per_lesion_table(root, images)
    levels = LEVEL_DICTIONARY if "vert_level" in text.split("\n", 1)[0].split("\t") else {}  # --disc-labels
    write_table(root / PER_LESION_PATH, text, {**_KEY_DICTIONARY, **LESION_DICTIONARY, **SOURCE_DICTIONARY,
                                               **levels})
    pairs = consecutive_pairs(images)
    rows = []
    for pair in pairs:
        rows.append(_pair_row(root, bids_dir, pair, settings, result))
    result.pairs = len(pairs) - len(result.failed_pairs)
    write_table(root / COUNTS_PATH, tsv(COUNT_COLUMNS, rows), counts_dictionary(settings.rules))
    return result


def _pair_row(root: Path, bids_dir: str | Path | None, pair: tuple[SessionImage, SessionImage],
              settings: StudySettings, result: StudyResult) -> dict[str, Any]:
    baseline, followup = pair
    stem = f"{CHANGES_DIR}/{pair_name(baseline, followup)}"
    try:
        if bids_dir is None:
            raise CordlesionError("no BIDS folder given: the source images are needed to register sessions")
        record = compare_pair(root, Path(bids_dir), pair, settings)
    except (CordlesionError, OSError, RuntimeError, ValueError) as exc:
        message = " ".join(str(exc).split())[:300]
        log.warning("%s -> %s: change not computed (%s)", baseline.source, followup.source, message)
        result.failed_pairs.append(f"{followup.source}: {message}")
        return counts_row(baseline, followup, dict.fromkeys(COUNTED),
                          {"error": message, **_pair_sources(pair)})
    statuses = record.get("Statuses", {})
    result.statuses[(followup.source, followup.task)] = {int(k): v for k, v in statuses.items()}
    quality = {"registration_ncc": record.get("NormalizedCrossCorrelation"),
               "cord_dice": record.get("CordDice"), "change_table": f"{stem}_change.tsv",
               **_pair_sources(pair)}
    return counts_row(baseline, followup, record.get("Counts", {}), quality)


def _pair_sources(pair: tuple[SessionImage, SessionImage]) -> dict[str, str]:
    sources = _sources(*pair)
    return {"followup_mask_source": sources["mask_source"],
            "baseline_mask_source": sources["baseline_mask_source"]}


def counts_dictionary(rules: ChangeRules) -> dict[str, Any]:
    """Data dictionary of ``new_enlarging.tsv``."""
    status = change_dictionary(rules)["status"]
    count = {s: {"LongName": f"{s.capitalize()} lesions",
                 "Description": f"Follow-up lesions (for 'disappeared': baseline lesions) with status {s!r}: "
                                + status["Levels"][s] + "."} for s in COUNTED}
    return {
        "participant_id": _KEY_DICTIONARY["participant_id"], "contrast": _KEY_DICTIONARY["contrast"],
        "acquisition": _KEY_DICTIONARY["acquisition"], "run": _KEY_DICTIONARY["run"],
        "task": _KEY_DICTIONARY["task"],
        "baseline_session": {"LongName": "Baseline session",
                             "Description": "The earlier session of the pair (natural label order)."},
        "followup_session": {"LongName": "Follow-up session",
                             "Description": "The next session of the series."},
        **count,
        "registration_ncc": {"LongName": "Registration quality",
                             "Description": "Normalised cross-correlation of the follow-up image and the "
                                            "registered baseline image."},
        "cord_dice": {"LongName": "Cord overlap after registration",
                      "Description": "Dice of the two sessions' cord masks after registration; n/a without "
                                     "cord masks."},
        "change_table": {"LongName": "Change table",
                         "Description": "The pair's per-lesion change table, relative to output_dir."},
        "followup_mask_source": {**SOURCE_DICTIONARY["mask_source"],
                                 "LongName": "Follow-up lesion mask source"},
        "baseline_mask_source": {**SOURCE_DICTIONARY["mask_source"],
                                 "LongName": "Baseline lesion mask source"},
        "error": {"LongName": "Error", "Description": "Why the change was not computed; n/a when it was."},
        "Rule": status["Description"],
    }


def read_counts(output_dir: str | Path) -> list[dict[str, str]]:
    """Rows of ``new_enlarging.tsv`` (tests, QC page)."""
    return read_tsv((Path(output_dir) / COUNTS_PATH).read_text(encoding="utf-8"))


#: per-lesion columns the QC page shows, with their short keys
PAGE_COLUMNS = {"lesion_id": "id", "volume_mm3": "vol", "length_mm": "len", "width_mm": "wid",
                "max_equivalent_diameter_mm": "dia", "max_axial_damage_ratio": "dmg",
                "inside_cord_fraction": "in"}


def page_lesions(output_dir: str | Path, records: Iterable[tuple[str, Mapping[str, Any]]],
                 result: StudyResult) -> dict[str, list[dict[str, Any]]]:
    """Per image (key: the caller's, e.g. the QC record path) its lesions for the QC page: the table's
    main figures and, on a follow-up, each lesion's change status."""
    root, out = Path(output_dir), {}
    for key, rec in records:
        if rec.get("status") != "ok" or not rec.get("task"):
            continue
        path = root / image_names(str(rec["source"]), str(rec["task"])).lesions_tsv
        try:
            rows = read_tsv(path.read_text(encoding="utf-8"))
        except OSError:
            continue
        statuses = result.statuses.get((str(rec["source"]), str(rec["task"])), {})
        out[key] = [{**{short: _number(row.get(col)) for col, short in PAGE_COLUMNS.items()},
                     "st": statuses.get(int(row["lesion_id"]))} for row in rows]
    return out


def _number(text: str | None) -> float | int | None:
    if text is None or text == "n/a":
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value
