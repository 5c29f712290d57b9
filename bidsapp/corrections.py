"""Label files that come back from manual correction: find them for an image in a labels folder, check
them against the image, hash them, read who made them.

A labels folder is a BIDS derivative laid out like the dataset (``sub-XX[/ses-YY]/anat/``), as
spinalcordtoolbox/manual-correction's ``manual_correction.py -path-out`` writes it: a file is found by
its name beside the image's relative path. A :class:`LabelKind` says how its files are named, so the one
finder serves every kind (corrected lesion and cord masks here; disc labels can be another kind):

- ``<image stem><suffix>.nii[.gz]``: manual-correction's ``-suffix-files-*`` (``_lesion-manual``,
  ``_seg-manual``), or the image's stem with BIDS entities after it (``_label-lesion_desc-manual_mask``);
- ``<source entities>_<bids>.nii[.gz]``: the BIDS-Derivatives form without the contrast
  (``sub-01_ses-M0_acq-sag_label-lesion_desc-manual_mask.nii.gz``).

No pybids here: the folder's layout is the dataset's, so one listing of the image's own folder finds its
files without indexing the whole folder; pybids parses neither ``_lesion-manual`` (not an entity) nor,
without a derivatives config, ``label-``/``desc-``; and a labels folder need not have a
``dataset_description.json`` (manual_correction.py writes none), so none is required.

A corrected mask is refused (:class:`~bidsapp.errors.CorrectionError`, one line naming the file) when it
is not on the image's grid (shape or affine), not binary (a soft map or a label map: the values found are
named), or when two files claim one image. An empty mask is a valid correction ("0 lesions after
correction"). Corrected files are only ever read.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import nibabel as nib
import numpy as np

from . import __version__, tasks
from .derivatives import (
    atomic_write_bytes,
    atomic_write_json,
    nifti_stem,
    read_json_quietly,
    sha256_file,
    source_entities,
)
from .errors import ConfigError, CorrectionError
from .imaging import grid_mismatch, like

_EXTENSIONS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class LabelKind:
    """How the label files of one kind are named beside an image in a labels folder."""

    name: str
    """Short key (``lesion``, ``cord``): the key of the kind in states, records and sidecars."""
    what: str
    """What a file of this kind is, for messages (``corrected lesion mask``)."""
    suffixes: tuple[str, ...]
    """Appended to the image's stem: ``<stem><suffix>.nii[.gz]``."""
    bids: tuple[str, ...] = ()
    """After the image's source entities (no contrast): ``<entities>_<bids>.nii[.gz]``."""

    def names(self, source_relpath: str) -> set[str]:
        """Every file name this kind may have for the image ``source_relpath``."""
        name = PurePosixPath(source_relpath).name
        stem, entities = nifti_stem(name), source_entities(name)
        bases = [stem + s for s in self.suffixes] + [f"{entities}_{b}" for b in self.bids]
        return {base + ext for base in bases for ext in _EXTENSIONS}

    def matches_session(self, filename: str) -> bool:
        """Whether ``filename`` is of this kind for some image (any image of a session's folder)."""
        base = nifti_stem(filename)
        return filename.endswith(_EXTENSIONS) and (base.endswith(self.suffixes)
                                                   or base.endswith(tuple(f"_{b}" for b in self.bids)))


#: corrected lesion masks: manual-correction's ``-suffix-files-lesion _lesion-manual`` and the BIDS forms
LESION = LabelKind("lesion", "corrected lesion mask", ("_lesion-manual", "_label-lesion_desc-manual_mask"),
                   ("label-lesion_desc-manual_mask",))
#: corrected cord masks: ``-suffix-files-seg _seg-manual`` and the BIDS forms (``label-SC``)
CORD = LabelKind("cord", "corrected cord mask", ("_seg-manual", "_label-SC_desc-manual_mask"),
                 ("label-SC_desc-manual_mask",))
KINDS = (LESION, CORD)


def find_label_files(root: str | Path, source_relpath: str, kind: LabelKind, *,
                     session: bool = False) -> list[Path]:
    """The files of ``kind`` for the image ``source_relpath`` (relative to the dataset) in the labels
    folder ``root``, sorted: in ``root/<the image's folder>``, named after the image (``session``: named
    after any image of that folder, i.e. of the same subject and session)."""
    folder = Path(root) / PurePosixPath(source_relpath).parent
    try:
        listing = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    wanted = kind.names(source_relpath)
    found = [n for n in listing if (kind.matches_session(n) if session else n in wanted)
             and not n.startswith(".")]
    return sorted(folder / n for n in found)


# ------------------------------------------------------------------------------------------ candidates
@dataclass(frozen=True)
class Candidates:
    """The files of each kind found for one image, with their checksums (what the up-to-date state of
    the image's figures records: a new, changed or removed file changes it)."""

    files: Mapping[str, tuple[tuple[Path, str], ...]]
    """Kind name -> ((path, sha256), ...)."""

    def state(self) -> dict[str, list[list[str]]]:
        """``{kind: [[file name, sha256], ...]}`` for every kind with a file (JSON, path-free)."""
        return {kind: [[p.name, sha] for p, sha in files] for kind, files in self.files.items() if files}


def find_candidates(root: str | Path, source_relpath: str, kinds: Sequence[LabelKind]) -> Candidates:
    """The files of ``kinds`` for one image, hashed (a few small masks: cheap enough for every re-run)."""
    return Candidates({kind.name: tuple((p, sha256_file(p)) for p in find_label_files(root, source_relpath,
                                                                                       kind))
                       for kind in kinds})


# ------------------------------------------------------------------------------------------ checking
@dataclass(frozen=True)
class Correction:
    """A corrected mask that passed the checks: on the image's grid, uint8 0/1."""

    kind: str
    path: Path
    sha256: str
    mask: nib.Nifti1Image
    author: str | None = None
    date: str | None = None

    def source(self) -> dict[str, Any]:
        """What the sidecar, the QC record and the tables say it was computed from."""
        return {"source": "manual", "path": str(self.path), "sha256": self.sha256, "author": self.author,
                "date": self.date}


MODEL_SOURCE: dict[str, Any] = {"source": "model"}


def _values(data: np.ndarray) -> str:
    """What a non-binary mask holds, in words: a soft map, a label map, or other values."""
    if not np.issubdtype(data.dtype, np.number) or np.isnan(data).any():
        return "it holds NaN (not a binary mask)"
    soft = data[(data != np.round(data))]
    if soft.size:
        return (f"not binary: a soft map ({soft.size} voxels with values between whole numbers, "
                f"{float(soft.min()):.3g} to {float(soft.max()):.3g}); threshold it to 0/1")
    values = np.unique(data)
    shown = ", ".join(f"{v:g}" for v in values[:8])
    shown += f", ... ({values.size} values)" if values.size > 8 else ""
    if values.min() >= 0 and values.size > 2:
        return f"not binary: a label map (values {shown}); keep one label as 1, the rest 0"
    return f"not binary: values {shown} (a binary mask holds 0 and 1 only)"


def check_mask(path: Path, image: nib.Nifti1Image) -> nib.Nifti1Image:
    """The corrected mask at ``path`` as uint8 0/1 on the exact grid of ``image``; raises
    :class:`CorrectionError` naming the file when it cannot be read, is not on the grid or not binary."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for a broken file
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CorrectionError(f"{path}: cannot read the NIfTI file ({reason})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:  # a 4D file of one volume
        data = data[..., 0]
    if data.ndim != 3:
        raise CorrectionError(f"{path}: not a 3D mask (shape {'x'.join(map(str, data.shape))})")
    reason = grid_mismatch(tuple(data.shape), img.affine, image)
    if reason is None and not ((data == 0) | (data == 1)).all():
        reason = _values(data)
    if reason is not None:
        raise CorrectionError(f"{path}: {reason}")
    return like(image, (data == 1).astype(np.uint8), np.uint8)


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of a label file (``x_lesion-manual.nii.gz`` -> ``x_lesion-manual.json``)."""
    return path.with_name(nifti_stem(path.name) + ".json")


def generated_by(path: Path) -> list[dict[str, Any]]:
    """The ``GeneratedBy`` entries of the file's JSON sidecar ([] without a readable one)."""
    try:
        data = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    entries = data.get("GeneratedBy") if isinstance(data, dict) else None
    entries = [entries] if isinstance(entries, dict) else entries
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def manual_entry(entries: Sequence[Mapping[str, Any]], path: Path) -> tuple[str | None, str | None]:
    """(author, date) of the last ``{"Name": "Manual", ...}`` entry; refuses a file whose sidecar says
    it was written by cordlesion and never corrected (the masks prepared for correction)."""
    manual = [e for e in entries if str(e.get("Name", "")).lower() == "manual"]
    if manual:
        last = manual[-1]
        return (str(last["Author"]) if last.get("Author") else None,
                str(last["Date"]) if last.get("Date") else None)
    if entries and str(entries[-1].get("Name", "")).lower() == "cordlesion":
        raise CorrectionError(f"{path}: written by cordlesion (a model mask prepared for correction), not "
                              "corrected: its sidecar's GeneratedBy has no Manual entry")
    return None, None


def load_correction(kind: LabelKind, files: Sequence[tuple[Path, str]], image: nib.Nifti1Image,
                    source_relpath: str) -> Correction | None:
    """The one corrected file of ``kind`` among ``files`` (from :func:`find_candidates`) checked against
    ``image``; None without any; :class:`CorrectionError` for two candidates or a bad file."""
    if not files:
        return None
    if len(files) > 1:
        names = ", ".join(p.name for p, _ in files)
        raise CorrectionError(f"{files[0][0].parent}: {len(files)} {kind.what}s for "
                              f"{PurePosixPath(source_relpath).name} ({names}): keep one")
    path, sha = files[0]
    author, date = manual_entry(generated_by(path), path)
    return Correction(kind.name, path, sha, check_mask(path, image), author, date)


# ------------------------------------------------------------------------------------------ one image
@dataclass(frozen=True)
class Loaded:
    """The corrections of one image that passed the checks, by kind, and the reasons of those refused."""

    corrections: Mapping[str, Correction]
    refused: tuple[str, ...] = ()

    def get(self, kind: LabelKind | None) -> Correction | None:
        return self.corrections.get(kind.name) if kind is not None else None


NONE = Loaded({})


def load_corrections(candidates: Candidates, image: nib.Nifti1Image, source_relpath: str,
                     kinds: Sequence[LabelKind]) -> Loaded:
    """Check every kind's candidates against ``image``; a refused file is reported (its reason), never
    raised: the model's figures then stand for that kind."""
    found: dict[str, Correction] = {}
    refused: list[str] = []
    for kind in kinds:
        try:
            correction = load_correction(kind, candidates.files.get(kind.name, ()), image, source_relpath)
        except CorrectionError as exc:
            refused.append(str(exc))
            continue
        if correction is not None:
            found[kind.name] = correction
    return Loaded(found, tuple(refused))


def source_of(correction: Correction | None) -> dict[str, Any]:
    """The ``mask_source`` entry of one mask: the correction's, or the model's."""
    return correction.source() if correction is not None else dict(MODEL_SOURCE)


# ------------------------------------------------------------------------------ masks to correct
#: where the group level puts the model's masks under the names manual_correction.py reads with
#: ``-path-label`` (``-suffix-files-lesion _lesion-manual -suffix-files-seg _seg-manual``)
LABELS_DIR = "group/labels"


def _to_correct(record: Mapping[str, Any]) -> list[tuple[str, LabelKind]]:
    """(output key, kind) of the masks of one QC record that a rater may correct."""
    outputs = record.get("outputs") or {}
    try:
        spec = tasks.get(str(record.get("task")))
    except ConfigError:  # a record of an unknown task: nothing to offer
        return []
    if spec.label == "SC":
        return [("mask", CORD)] if "mask" in outputs else []
    keys = [("mask", LESION)] if spec.label == "lesion" and "mask" in outputs else []
    return keys + ([("cord", CORD)] if "cord" in outputs else [])


def write_correction_labels(output_dir: str | Path, records: Sequence[Mapping[str, Any]]) -> int:
    """Copy each image's model masks to ``LABELS_DIR`` under manual-correction's names (``<image
    stem>_lesion-manual.nii.gz``, ``_seg-manual``), with a sidecar whose ``GeneratedBy`` names cordlesion:
    manual_correction.py starts from them and adds its ``Manual`` entry. One image with two lesion tasks
    offers the first task of the task table's. A file already holding the bytes is left as it is.
    Returns the number of files written."""
    root, order = Path(output_dir), {name: i for i, name in enumerate(tasks.names())}
    chosen: dict[Path, tuple[Path, Mapping[str, Any]]] = {}
    ok = [r for r in records if r.get("status") == "ok" and isinstance(r.get("source"), str)]
    for record in sorted(ok, key=lambda r: order.get(str(r.get("task")), len(order))):
        source = PurePosixPath(str(record["source"]))
        for key, kind in _to_correct(record):
            target = root / LABELS_DIR / source.parent / f"{nifti_stem(source.name)}{kind.suffixes[0]}.nii.gz"
            chosen.setdefault(target, (root / str(record["outputs"][key]), record))
    written = 0
    for target, (mask, record) in chosen.items():
        data = mask.read_bytes() if mask.is_file() else None
        if data is None:
            continue
        if not target.is_file() or target.read_bytes() != data:
            atomic_write_bytes(target, data)
            written += 1
        what = f"{record['task']} mask of {record['source']}, to correct"
        sidecar = {"GeneratedBy": [{"Name": "cordlesion", "Version": __version__, "Description": what}],
                   "SpatialReference": f"bids:raw:{record['source']}"}
        if read_json_quietly(sidecar_path(target)) != sidecar:
            atomic_write_json(sidecar_path(target), sidecar)
    return written
