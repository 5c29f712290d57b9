"""Which images of a dataset form a longitudinal series, and which sessions follow each other.

A series is the images of one subject with the same contrast (BIDS suffix), acquisition, run and
task, in different sessions; every other entity but ``ses`` must agree too. Sessions are ordered by
their labels compared "naturally" (digit runs as numbers: ``M2`` < ``M12``, ``01`` < ``2``; ISO dates
sort as such), since the group level reads only the output folder, not ``scans.tsv`` acquisition times.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class SessionImage:
    """One segmented image of a series (paths relative to the output or BIDS folder, as given)."""

    entities: Mapping[str, str]       # BIDS entities incl. "sub", "ses", "suffix"
    task: str
    source: str
    payload: Any = None               # whatever the caller needs back (e.g. its QC record)

    @property
    def session(self) -> str:
        return str(self.entities.get("ses") or "")

    def order_key(self) -> tuple:
        """Subject, contrast, acquisition, run, task, then the rest: the order of the group tables."""
        e = self.entities
        return (*(str(e.get(k) or "") for k in ("sub", "suffix", "acq", "run")), self.task, self.series_key())

    def series_key(self) -> tuple:
        others = tuple(sorted((k, str(v)) for k, v in self.entities.items() if k != "ses"))
        return (self.task, *others)


def natural_key(label: str) -> tuple:
    """Sort key comparing digit runs as numbers: ``natural_key("M12") > natural_key("M2")``."""
    return tuple((0, int(part), part) if part.isdigit() else (1, 0, part.lower())
                 for part in _DIGITS.split(label) if part)


def series(images: Iterable[SessionImage]) -> list[list[SessionImage]]:
    """Series of two or more sessions, each sorted by session; images without a session are left out.
    Two images of one series in the same session (should not happen in BIDS) keep only the first."""
    groups: dict[tuple, dict[str, SessionImage]] = defaultdict(dict)
    for image in images:
        if image.session:
            groups[image.series_key()].setdefault(image.session, image)
    out = [sorted(by_session.values(), key=lambda im: natural_key(im.session))
           for by_session in groups.values() if len(by_session) >= 2]
    return sorted(out, key=lambda s: s[0].order_key())


def consecutive_pairs(images: Iterable[SessionImage]) -> list[tuple[SessionImage, SessionImage]]:
    """(baseline, follow-up) for every two consecutive sessions of every series."""
    return [(a, b) for s in series(images) for a, b in zip(s, s[1:], strict=False)]


def pair_name(baseline: SessionImage, followup: SessionImage) -> str:
    """File stem of a pair's change table: the follow-up's entities with ``ses-<from>to<to>``
    (``sub-01_ses-M0toM12_acq-sag_desc-lesionms_T2w``: one name per series and pair)."""
    ent = dict(followup.entities)
    parts = [f"sub-{ent.pop('sub')}", f"ses-{baseline.session}to{followup.session}"]
    ent.pop("ses", None)
    suffix = ent.pop("suffix")
    parts += [f"{k}-{v}" for k, v in ent.items()]
    parts.append(f"desc-{followup.task.replace('_', '')}")
    return "_".join(parts + [suffix])


def counts_row(baseline: SessionImage, followup: SessionImage, counts: Mapping[str, int],
               quality: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the per-subject new/enlarging table."""
    ent = followup.entities
    return {"participant_id": f"sub-{ent['sub']}", "contrast": ent.get("suffix"),
            "acquisition": ent.get("acq"), "run": ent.get("run"), "task": followup.task,
            "baseline_session": f"ses-{baseline.session}", "followup_session": f"ses-{followup.session}",
            **counts, **quality}


COUNT_COLUMNS: Sequence[str] = (
    "participant_id", "contrast", "acquisition", "run", "task", "baseline_session", "followup_session",
    "new", "enlarged", "stable", "shrunk", "disappeared", "registration_ncc", "cord_dice", "change_table",
    "followup_mask_source", "baseline_mask_source", "error")
