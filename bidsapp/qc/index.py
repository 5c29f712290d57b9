"""The group QC page: ONE static ``qc/index.html`` that works from the file system.

No server, no CDN, no fetch(): browsers refuse fetch() of file:// URLs, so the data are embedded as a
JSON script block (Jinja's ``tojson`` escapes ``<``, ``>``, ``&`` and ``'``, so a ``</script>`` in a
label cannot end the block), CSS and JS are inlined, and a Content-Security-Policy with a per-build
nonce stops any injected script from running. Every dataset string reaches the DOM through
``textContent``; links are relative (``../sub-01/figures/...``), so the folder can be moved or zipped.
"""
from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup

from .. import __version__, tasks
from ..analysis.series import natural_key
from ..derivatives import atomic_write_bytes
from ..errors import ConfigError

PAGE_SIZE = 50          # table rows per page: the DOM and the thumbnails stay small with 10^4 images
INDEX_PATH = "qc/index.html"


@dataclass(frozen=True)
class Entry:
    """One QC record and where it was found (relative to output_dir)."""

    path: str
    record: Mapping[str, Any]


def _url(relpath: str) -> str:
    """Link from ``qc/index.html`` to a file of output_dir, percent-encoded per path segment."""
    return "../" + quote(relpath, safe="/")


def _figures(output_dir: Path, figures: Mapping[str, str]) -> dict[str, str]:
    # A picture listed but missing (deleted, copied without figures/) is left out: the page says so.
    return {view: _url(rel) for view, rel in figures.items() if (output_dir / rel).is_file()}


def _image_name(source: Any) -> str | None:
    """The image's file name as manual_correction.py's config lists it (None: not an image path)."""
    name = PurePosixPath(str(source or "")).name
    return name if name.endswith((".nii", ".nii.gz")) and name.startswith("sub-") else None


def _config_key(task: Any) -> str:
    """manual_correction.py's config key of a task's mask: ``FILES_SEG`` for the cord task's."""
    try:
        return "FILES_SEG" if tasks.get(str(task)).label == "SC" else "FILES_LESION"
    except ConfigError:
        return "FILES_LESION"


def _sources(rec: Mapping[str, Any]) -> dict[str, Any]:
    """Mask source (``model``/``manual``; None for a failed image) and what a rater should read of it."""
    block = rec.get("mask_source")
    if rec.get("status") != "ok":
        return {"ms": None, "cs": None, "fix": []}
    if not isinstance(block, Mapping):
        return {"ms": "model", "cs": None, "fix": []}
    cord = block.get("cord") or {}
    return {"ms": (block.get("mask") or {}).get("source"), "cs": cord.get("source"),
            "fix": [*block.get("notes", []), *block.get("refused", [])]}


def page_row(output_dir: Path, entry: Entry, lesions: Sequence[Mapping[str, Any]] | None = None
             ) -> dict[str, Any]:
    """What the page needs of one record (short keys keep 10^4 rows small); ``lesions``: its per-lesion
    figures (``analysis.study.page_lesions``: id, vol, len, wid, dia, dmg, in, st = change status)."""
    rec = entry.record
    ent = rec.get("entities", {})
    les = rec.get("lesions") or {}
    model = rec.get("model") or {}
    return {**_sources(rec), "img": _image_name(rec.get("source")), "key": _config_key(rec.get("task")),
        "rec": entry.path, "src": rec.get("source", entry.path),
        "sub": ent.get("sub"), "ses": ent.get("ses"), "acq": ent.get("acq"), "run": ent.get("run"),
        "con": ent.get("suffix"), "task": rec.get("task"),
        "n": les.get("count"), "tot": les.get("total_mm3"), "max": les.get("largest_mm3"),
        "vols": les.get("volumes_mm3", []),
        "st": rec.get("status", "failed"), "err": rec.get("error") or rec.get("qc_error"),
        "rel": model.get("release"), "demo": bool(model.get("demo", False)), "rt": rec.get("runtime_s"),
        "fig": _figures(output_dir, rec.get("figures") or {}),
        "les": list(lesions or []),
        "new": _new_count(lesions),
        **_levels(rec),
    }


def _levels(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The image's level span (``C2-C7``) and why its disc labels were refused (``--disc-labels``)."""
    block = rec.get("levels") if rec.get("status") == "ok" else None
    if not isinstance(block, Mapping):
        return {"lv": None, "lverr": None}
    covered = list(block.get("covered") or [])
    span = (covered[0] if len(covered) == 1 else f"{covered[0]}-{covered[-1]}") if covered else None
    return {"lv": span, "lverr": block.get("error")}


def level_load(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """The study's lesion load by level for the page's plot (``analysis.level_tables``'s summary)."""
    from ..analysis.level_tables import level_rows, summary_rows

    rows = level_rows([({}, e.record) for e in entries if "levels" in e.record])
    return [{"level": r["level"], "cov": r["images_covering"], "n": r["lesion_count"],
             "vol": r["lesion_volume_mm3"], "per": r["volume_per_covering_image_mm3"]}
            for r in summary_rows(rows)]


def _new_count(lesions: Sequence[Mapping[str, Any]] | None) -> int | None:
    """New lesions at this follow-up; None where the image is no follow-up (no change status)."""
    if not lesions or not any(le.get("st") for le in lesions):
        return None
    return sum(le.get("st") == "new" for le in lesions)


def _asset(name: str) -> str:
    return resources.files("bidsapp.qc.templates").joinpath(name).read_text(encoding="utf-8")


def _environment() -> jinja2.Environment:
    # autoescape on for every template: dataset strings in the HTML become text, never markup.
    return jinja2.Environment(loader=jinja2.FunctionLoader(_asset), autoescape=True,
                              undefined=jinja2.StrictUndefined)


def trajectories(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The sessions in natural order (``M2`` before ``M12``) and each series' points (row indices, in
    session order): one series per subject, contrast, acq, run and task, of the images segmented."""
    sessions = sorted({str(r["ses"]) for r in rows if r.get("ses")}, key=natural_key)
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("ses") and row.get("st") == "ok" and row.get("tot") is not None:
            key = tuple(str(row.get(k) or "") for k in ("sub", "con", "acq", "run", "task"))
            groups.setdefault(key, []).append(i)
    series = []
    for key in sorted(groups, key=lambda k: tuple(natural_key(part) for part in k)):
        points = sorted(groups[key], key=lambda i: natural_key(str(rows[i]["ses"])))
        label = " ".join(p for p in (f"sub-{key[0]}", key[1], key[2] and f"acq-{key[2]}",
                                     key[3] and f"run-{key[3]}", key[4]) if p)
        series.append({"label": label, "sub": key[0], "points": points})
    return sessions, series


def render_index(output_dir: Path, entries: Sequence[Entry], *, study: str,
                 lesions: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                 paths: Mapping[str, str] | None = None) -> str:
    """The HTML of the QC page for these records (``lesions``: record path -> its per-lesion figures;
    ``paths``: ``bids_dir`` / ``output_dir`` for the correction commands the export writes)."""
    lesions = lesions or {}
    rows = [page_row(Path(output_dir), e, lesions.get(e.path)) for e in entries]
    n_subjects = len({r["sub"] for r in rows})
    n_failed = sum(r["st"] == "failed" for r in rows)
    sessions, series = trajectories(rows)
    data = {"study": study, "page_size": PAGE_SIZE, "n_subjects": n_subjects, "n_failed": n_failed,
            "rows": rows, "sessions": sessions, "series": series, "paths": dict(paths or {}),
            "levels": level_load(entries)}
    js, css = _asset("plots.js") + "\n" + _asset("index.js"), _asset("index.css")
    if "</" in js or "</" in css:  # our own files: a closing tag would end the inline block
        raise ValueError("index.js / index.css must not contain '</'")
    return _environment().get_template("index.html.j2").render(
        study=study, data=data, js=Markup(js), css=Markup(css), nonce=secrets.token_urlsafe(18),
        n_images=len(rows), n_subjects=n_subjects, n_failed=n_failed, version=__version__,
        built=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def write_index(output_dir: str | Path, entries: Sequence[Entry], *, study: str,
                lesions: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                paths: Mapping[str, str] | None = None) -> Path:
    """Write ``output_dir/qc/index.html`` atomically; returns its path."""
    path = Path(output_dir) / INDEX_PATH
    html = render_index(Path(output_dir), entries, study=study, lesions=lesions, paths=paths)
    atomic_write_bytes(path, html.encode("utf-8"))
    return path
