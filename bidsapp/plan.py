"""Finding input images with pybids, entity filters, and the routing table (image -> tasks).

``index`` is the only function here that reads the file system; ``route`` is pure.
Indexing is kept fast on big datasets the way fMRIPrep does it: no validation, no metadata indexing,
and everything we never read (derivatives, sourcedata, code, dotfiles, non-anat folders, unselected
subjects and sessions) is ignored before pybids walks into it.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from . import tasks
from .derivatives import ImageNames, image_names, parse_name
from .errors import ConfigError

log = logging.getLogger(__name__)

# Built-in routing, from the task table's ``routes_from``: T2w, T2starw, T2star (deprecated, still in
# datasets) -> lesion_ms; UNIT1 -> lesion_ms_mp2rage.
DEFAULT_RULES: tuple[dict[str, Any], ...] = tasks.default_rules()
# Short BIDS keys accepted in configs and filters, mapped to pybids entity names.
SHORT_KEYS = {"sub": "subject", "ses": "session", "acq": "acquisition", "ce": "ceagent",
              "rec": "reconstruction", "dir": "direction", "trc": "tracer"}
# Every BIDS filename key pybids knows by another name (for parsing names without pybids' database).
_PYBIDS_NAMES = {**SHORT_KEYS, "nuc": "nucleus", "voi": "volume", "stain": "staining", "mod": "modality"}
_NII = (".nii", ".nii.gz")


@dataclass(frozen=True)
class SourceImage:
    """One input image: its path as found in the dataset (symlinks not resolved) and its BIDS entities."""

    path: Path
    relpath: str
    suffix: str
    entities: Mapping[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return str(self.entities["subject"])

    @property
    def session(self) -> str | None:
        ses = self.entities.get("session")
        return None if ses is None else str(ses)


@dataclass(frozen=True)
class Job:
    """One task on one image: every per-image name (``names``) and the derivative outputs this job
    writes (``outputs``: ``names.outputs()``, less a cord mask another job of the image writes), paths
    relative to output_dir."""

    source: SourceImage
    task: str
    names: ImageNames
    outputs: Mapping[str, str]

    @property
    def log(self) -> str:
        """Per-image log file."""
        return self.names.log

    @property
    def name(self) -> str:
        """Short human-readable name: ``sub-01_T2w.nii.gz:lesion_ms``."""
        return f"{Path(self.source.relpath).name}:{self.task}"


# ------------------------------------------------------------------------------------------- configs
def _load_schema(name: str) -> dict[str, Any]:
    return json.loads(resources.files("bidsapp.schemas").joinpath(name).read_text())


def validate_user_json(obj: Any, schema_name: str, origin: str) -> None:
    """Check a user JSON against ``bidsapp/schemas/<schema_name>``; ConfigError naming the file and key."""
    validator = jsonschema.Draft202012Validator(_load_schema(schema_name))
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is None:
        return
    path = list(error.absolute_path)
    message = error.message
    if "propertyNames" in error.absolute_schema_path:  # a bad key: name it, not its parent
        path.append(error.instance)
        message = f"unknown key {error.instance!r}"
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    raise ConfigError(f"{origin}: {where or '<top level>'}: {message}")


def read_json(path: str | Path, what: str) -> Any:
    """Parse a user JSON file; ConfigError naming the file on any problem."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: {what} is not valid JSON ({exc})") from exc


def load_config(obj: Any, origin: str = "--config") -> list[dict[str, Any]]:
    """Validate a routing config (``config.schema.json``) and return the full rule list, user rules first."""
    validate_user_json(obj, "config.schema.json", origin)
    rules = [_normalise_rule(rule) for rule in obj.get("rules", [])]
    if obj.get("use_default_rules", True):
        rules += [_normalise_rule(rule) for rule in DEFAULT_RULES]
    return rules


def default_rules() -> list[dict[str, Any]]:
    """The built-in routing table."""
    return [_normalise_rule(rule) for rule in DEFAULT_RULES]


def _normalise_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    match = {SHORT_KEYS.get(k, k): v for k, v in rule["match"].items()}
    names = [tasks.canonical(t) for t in rule["tasks"]]  # SCT aliases, from the task table
    return {"match": match, "tasks": list(dict.fromkeys(names))}


def load_filters(obj: Any, origin: str = "--bids-filter-file") -> dict[str, Any]:
    """Validate a BIDS filter object; returns ``{"*": global filters, "<suffix>": filters}``."""
    validate_user_json(obj, "bids_filter.schema.json", origin)
    out: dict[str, dict[str, Any]] = {"*": {}}
    for key, value in obj.items():
        if key[:1].isupper():
            out[key] = {SHORT_KEYS.get(k, k): v for k, v in value.items()}
        else:
            out["*"][SHORT_KEYS.get(key, key)] = value
    return out


def strip_prefix(labels: Iterable[str] | None, prefix: str) -> list[str] | None:
    """``["sub-01", "02"]`` -> ``["01", "02"]`` (labels accepted with or without their prefix)."""
    if not labels:
        return None
    return list(dict.fromkeys(lab[len(prefix):] if lab.startswith(prefix) else lab for lab in labels))


# ------------------------------------------------------------------------------------------- indexing
def ignore_patterns(participants: Sequence[str] | None, sessions: Sequence[str] | None,
                    suffixes: Iterable[str] | None = None) -> list[Any]:
    """pybids ignore list (paths are matched as ``/sub-01/...`` relative to the root).

    With ``suffixes``, every anat file that is not a NIfTI of those suffixes (sidecars, other contrasts)
    is ignored too: indexing a file costs far more than matching its name (most of pybids' time).
    """
    patterns: list[Any] = ["code", "sourcedata", "derivatives", "stimuli", "phenotype",
                           re.compile(r"/\."),  # dotfiles and dot-folders (.git, .datalad, temp files)
                           re.compile(r"^/sub-[^/]+/(ses-[^/]+/)?(?!anat(/|$)|ses-)[^/_]+(/|$)"),  # not anat
                           re.compile(r"^/(?!sub-)[^/]+(/|$)")]  # top-level non-subject entries
    if suffixes:
        alts = "|".join(re.escape(s) for s in suffixes)
        patterns.append(re.compile(rf"^/sub-[^/]+/(ses-[^/]+/)?anat/(?![^/]*_({alts})\.nii(\.gz)?$)[^/]+$"))
    if participants:
        alts = "|".join(re.escape(p) for p in participants)
        patterns.append(re.compile(rf"^/sub-(?!({alts})(/|$))"))
    if sessions:
        alts = "|".join(re.escape(s) for s in sessions)
        patterns.append(re.compile(rf"^/sub-[^/]+/ses-(?!({alts})(/|$))"))
    return patterns


def index(bids_dir: str | Path, *, participants: Sequence[str] | None = None,
          sessions: Sequence[str] | None = None, filters: Mapping[str, Any] | None = None,
          suffixes: Iterable[str] = ("T2w", "T2starw", "T2star", "UNIT1"),
          database_dir: str | Path | None = None) -> list[SourceImage]:
    """Anatomical NIfTI images of ``suffixes`` in ``bids_dir``, filtered; sorted by path.

    ``filters`` is the output of :func:`load_filters`. MP2RAGE inversions never match (UNIT1 only, no
    ``inv-``). Symlinks are followed; broken ones (git-annex files not fetched) are still returned so the
    runner can fail that image with a hint.
    """
    from bids.layout import BIDSLayout, BIDSLayoutIndexer  # heavy import: only when indexing

    bids_dir = Path(bids_dir).absolute()
    suffixes = list(dict.fromkeys(suffixes))
    indexer = BIDSLayoutIndexer(validate=False, index_metadata=False,
                                ignore=ignore_patterns(participants, sessions, suffixes))
    layout = BIDSLayout(bids_dir, validate=False, derivatives=False, indexer=indexer,
                        database_path=str(database_dir) if database_dir else None)
    filters = filters or {"*": {}}
    images: dict[str, SourceImage] = {}
    for suffix in suffixes:
        query = _query(filters, suffix, participants, sessions)
        # Filenames, not BIDSFile objects: reading each file's entities back is one SQL query per file.
        for path in layout.get(return_type="filename", datatype="anat", suffix=suffix, **query):
            image = _to_source(Path(path), bids_dir)
            if image is not None:
                images[image.relpath] = image
    return [images[k] for k in sorted(images)]


def parse_entities(filename: str) -> dict[str, Any]:
    """BIDS entities of a file name with pybids' names: ``sub-01_acq-sag_run-2_T2w.nii.gz`` ->
    ``{"subject": "01", "acquisition": "sag", "run": 2, "suffix": "T2w", "extension": ".nii.gz"}``."""
    parsed = parse_name(filename)
    entities: dict[str, Any] = {}
    for key, value in parsed.pairs:
        name = _PYBIDS_NAMES.get(key, key)
        entities[name] = int(value) if name == "run" and value.isdigit() else value
    entities.update(suffix=parsed.suffix, extension=parsed.extension)
    return entities


def _query(filters: Mapping[str, Any], suffix: str, participants: Sequence[str] | None,
           sessions: Sequence[str] | None) -> dict[str, Any]:
    from bids.layout import Query

    query: dict[str, Any] = {}
    for key, value in {**filters.get("*", {}), **filters.get(suffix, {})}.items():
        query[key] = Query.NONE if value is None else Query.ANY if value == "*" else value
    if participants:
        query["subject"] = _intersect(query.get("subject"), participants)
    if sessions:
        query["session"] = _intersect(query.get("session"), sessions)
    return query


def _intersect(existing: Any, labels: Sequence[str]) -> Any:
    if existing is None or not isinstance(existing, (str, int, list)):
        return list(labels)
    chosen = existing if isinstance(existing, list) else [existing]
    return [str(v) for v in chosen if str(v) in labels] or ["\0none"]


def _to_source(path: Path, bids_dir: Path) -> SourceImage | None:
    if not path.name.endswith(_NII):
        return None
    entities = {**parse_entities(path.name), "datatype": "anat"}
    if "inv" in entities:  # MP2RAGE inversions are never lesion-model inputs
        return None
    relpath = path.relative_to(bids_dir).as_posix()
    return SourceImage(path=path, relpath=relpath, suffix=str(entities["suffix"]), entities=entities)


def rule_suffixes(rules: Sequence[Mapping[str, Any]]) -> list[str]:
    """Suffixes any rule can route (what :func:`index` must look for)."""
    return list(dict.fromkeys(str(rule["match"]["suffix"]) for rule in rules if rule["tasks"]))


# -------------------------------------------------------------------------------------------- routing
def route(images: Sequence[SourceImage], rules: Sequence[Mapping[str, Any]]) -> list[Job]:
    """Jobs for ``images`` under ``rules`` (first matching rule wins; pure function).

    Names come from ``derivatives.image_names`` and never collide between two tasks of one image, but
    for one case: a task's cord mask that the image's ``spinalcord`` job writes as its own mask, or that
    an earlier job of the image writes as its cord, is left to that job. Any other clash (a bug) is a
    ConfigError.
    """
    jobs: list[Job] = []
    for image in images:
        rule = next((r for r in rules if _matches(image, r["match"])), None)
        if rule is not None:
            jobs += _image_jobs(image, rule["tasks"])
    return jobs


def _image_jobs(image: SourceImage, task_names: Sequence[str]) -> list[Job]:
    names = {task: image_names(image.relpath, task) for task in task_names}
    masks = {n.mask for n in names.values()}
    jobs, seen = [], {}
    for task, name in names.items():
        outputs = name.outputs()
        # another job of this image writes this cord mask as its mask, or (two lesion tasks on one image,
        # issue 17) as its own cord: the first one writes it
        if name.cord in masks or name.cord in seen:
            outputs = {k: v for k, v in outputs.items() if k not in ("cord", "cord_json")}
        for path in [*outputs.values(), *(p for p in name.paths() if p not in name.outputs().values())]:
            if path in seen:
                raise ConfigError(f"--config: tasks {seen[path]} and {task} on {image.relpath} would write "
                                  f"the same file {path}")
            seen[path] = task
        jobs.append(Job(source=image, task=task, names=name, outputs=outputs))
    return jobs


def _matches(image: SourceImage, match: Mapping[str, Any]) -> bool:
    for key, wanted in match.items():
        have = image.suffix if key == "suffix" else image.entities.get(key)
        if wanted is None:
            if have is not None:
                return False
        elif have is None or not _same_label(have, wanted):
            return False
    return True


def _same_label(have: Any, wanted: Any) -> bool:
    # run-01 and run 1 are the same run; other labels compare as text
    if str(have).isdigit() and str(wanted).isdigit():
        return int(have) == int(wanted)
    return str(have) == str(wanted)


# ------------------------------------------------------------------------------------- what is there
def describe_dataset(bids_dir: str | Path) -> str:
    """A one-line inventory (subjects, sessions, anat suffixes) for the "filters selected nothing" error,
    from a cheap directory walk (no pybids)."""
    bids_dir = Path(bids_dir)
    subjects = sorted(p.name for p in bids_dir.glob("sub-*") if p.is_dir())
    sessions = sorted({p.name for p in bids_dir.glob("sub-*/ses-*") if p.is_dir()})
    suffixes: set[str] = set()
    for anat in [*bids_dir.glob("sub-*/anat"), *bids_dir.glob("sub-*/ses-*/anat")]:
        for f in anat.iterdir():
            if f.name.endswith(_NII):
                suffixes.add(parse_name(f.name).suffix)
    return (f"subjects: {_shorten(subjects)}; sessions: {_shorten(sessions) or 'none'}; "
            f"anat NIfTI suffixes: {', '.join(sorted(suffixes)) or 'none'}")


def _shorten(items: Sequence[str], limit: int = 10) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items)} in all)"
