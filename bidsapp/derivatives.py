"""BIDS-Derivatives outputs: names, sidecars, dataset_description, .bidsignore, atomic writes,
up-to-date checks.

Every file is written atomically: a temporary file in the same folder (so ``os.replace`` is a rename on one
file system), then ``os.replace``. A reader, or another process writing the same file at the same time
(SLURM array tasks sharing one output_dir), sees either the old or the new complete file, never a mix.
Per image, the mask sidecar is written LAST: its presence means the image's outputs are complete.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import nibabel as nib

from . import __version__, tasks
from .errors import OutputError

log = logging.getLogger(__name__)

APP_NAME = "cordlesion"
CODE_URL = "https://github.com/cordlesion/cordlesion"
BIDS_VERSION = "1.10.0"
# Non-BIDS folders of the output dataset (QC pictures, logs, group tables, QC index). bids-validator-deno
# matches "figures/" only at the top level: "**/figures" (no trailing slash) also covers sub-*/figures/.
# A trailing slash does not match top-level folders either ("qc/" left /qc/ and /group/ NOT_INCLUDED).
#: not BIDS (per-image lesion tables have no BIDS suffix): kept out of the validator's way
BIDSIGNORE_LINES = ("**/figures", "logs", "qc", "group", "**/*_lesions.tsv", "**/*_lesions.json")
PROVENANCE_KEY = "Provenance"

#: the QC pictures drawn per image (``bidsapp.qc.pictures`` draws them; their names are made here)
QC_VIEWS = ("axial", "axialoverlay", "sagittal", "sagittaloverlay", "thumb")
_NIFTI_EXTENSIONS = (".nii.gz", ".nii")


# ----------------------------------------------------------------------------------------------- names
def nifti_stem(filename: str) -> str:
    """A file name without its NIfTI extension: ``sub-01_T2w.nii.gz`` -> ``sub-01_T2w`` (any other
    extension is dropped too: ``x.json`` -> ``x``)."""
    name = PurePosixPath(filename).name
    for ext in _NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name.rsplit(".", 1)[0] if "." in name else name


@dataclass(frozen=True)
class BidsName:
    """A BIDS file name taken apart: ``(key, value)`` pairs spelled as in the name, suffix, extension."""

    pairs: tuple[tuple[str, str], ...]
    suffix: str
    extension: str

    @property
    def entities(self) -> dict[str, str]:
        """``{"sub": "01", "run": "01"}``: keys and values verbatim."""
        return dict(self.pairs)


def parse_name(filename: str) -> BidsName:
    """``sub-01_acq-sag_run-01_T2w.nii.gz`` -> pairs (sub, 01), (acq, sag), (run, 01), suffix ``T2w``,
    extension ``.nii.gz``. The one BIDS file-name parser (pybids spellings: ``plan.parse_entities``)."""
    name = PurePosixPath(filename).name
    stem, dot, ext = name.partition(".")
    *parts, suffix = stem.split("_")
    pairs = tuple((key, value) for key, sep, value in (p.partition("-") for p in parts) if sep and key)
    return BidsName(pairs, suffix, dot + ext)


def source_entities(filename: str) -> str:
    """The source file name without its suffix and extension: ``sub-01_ses-M0_acq-sag_T2w.nii.gz`` ->
    ``sub-01_ses-M0_acq-sag`` (BIDS-Derivatives: "source entities")."""
    return nifti_stem(filename).rsplit("_", 1)[0]


def qc_label(task: str) -> str:
    """``desc-`` label of a task's QC files: alphanumerics only (``lesion_ms`` -> ``lesionms``)."""
    return re.sub(r"[^A-Za-z0-9]", "", task)


@dataclass(frozen=True)
class ImageNames:
    """Every per-image path of one (source image, task), relative to output_dir."""

    mask: str
    mask_json: str
    probseg: str
    probseg_json: str
    cord: str | None
    """The cord mask the task used (tasks that write it), else None."""
    cord_json: str | None
    lesions_tsv: str
    """Per-image lesion table (``..._lesions.tsv``) and its data dictionary (``.json``)."""
    lesions_json: str
    log: str
    settings: str
    qc_record: str
    figures: dict[str, str]
    """QC view -> PNG path."""
    levels: str | None = None
    """The cord's vertebral level map (``--disc-labels``; tasks that write the cord, written with it):
    ``<folder>/<source entities>_desc-<suffix>Levels_dseg.nii.gz``; ``levels_tsv``, ``levels_json`` beside."""
    levels_tsv: str | None = None
    levels_json: str | None = None

    def outputs(self) -> dict[str, str]:
        """The derivative images and sidecars: ``mask``, ``mask_json``, ``probseg``, ``probseg_json``
        and, when the task writes the cord it used, ``cord``, ``cord_json``."""
        out = {"mask": self.mask, "mask_json": self.mask_json, "probseg": self.probseg,
               "probseg_json": self.probseg_json}
        if self.cord is not None and self.cord_json is not None:
            out.update(cord=self.cord, cord_json=self.cord_json)
        return out

    def paths(self) -> list[str]:
        """Every path above (for collision checks)."""
        return [*self.outputs().values(), self.lesions_tsv, self.lesions_json, self.log, self.settings,
                self.qc_record, *self.figures.values()]


def image_names(source_relpath: str, task: str | tasks.Task) -> ImageNames:
    """The one naming rule: every per-image path of ``task`` on ``source_relpath`` (BIDS-relative).

    Outputs: ``<folder>/<source entities>_label-<label>_desc-<suffix><tag>_{mask,probseg}.nii.gz``;
    the cord a task used: ``..._label-SC_desc-<suffix>_mask.nii.gz``; logs:
    ``logs/<sub>/<source stem>[_label-<label>]_desc-<desc>.log`` (the label only when not ``lesion``)
    and ``..._settings.json``; QC: ``<sub>/figures/<source stem>_desc-<task>_{<view>.png,qc.json}``.
    Two tasks on one image get distinct names for everything except a cord mask another task of the
    image writes as its own mask (``plan.route`` then keeps only that one).
    """
    spec = tasks.get(task)
    src = PurePosixPath(source_relpath)
    folder, subject, stem = src.parent.as_posix(), src.parts[0], nifti_stem(src.name)
    entities, suffix = source_entities(src.name), parse_name(src.name).suffix
    desc = spec.desc(suffix)
    base = f"{folder}/{entities}_label-{spec.label}_desc-{desc}"
    cord = f"{folder}/{entities}_label-SC_desc-{suffix}" if spec.writes_cord else None
    label = "" if spec.label == "lesion" else f"_label-{spec.label}"
    logs = f"logs/{subject}/{stem}{label}_desc-{desc}"
    qc = f"{subject}/figures/{stem}_desc-{qc_label(spec.name)}"
    return ImageNames(
        mask=f"{base}_mask.nii.gz", mask_json=f"{base}_mask.json", probseg=f"{base}_probseg.nii.gz",
        probseg_json=f"{base}_probseg.json", cord=cord and f"{cord}_mask.nii.gz",
        cord_json=cord and f"{cord}_mask.json", lesions_tsv=f"{base}_lesions.tsv",
        lesions_json=f"{base}_lesions.json", log=f"{logs}.log", settings=f"{logs}_settings.json",
        qc_record=f"{qc}_qc.json", figures={view: f"{qc}_{view}.png" for view in QC_VIEWS},
        **_level_names(f"{folder}/{entities}_desc-{suffix}Levels_dseg" if spec.writes_cord else None))


def _level_names(stem: str | None) -> dict[str, str | None]:
    return {"levels": stem and f"{stem}.nii.gz", "levels_tsv": stem and f"{stem}.tsv",
            "levels_json": stem and f"{stem}.json"}


# ----------------------------------------------------------------------------------------- atomic I/O
def _temp_in(folder: Path, name: str) -> tuple[int, str]:
    folder.mkdir(parents=True, exist_ok=True)
    # A dot-prefixed temp name: validators and globs ignore it if a killed process leaves it behind.
    return tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)


def _publish(tmp: str, path: Path) -> None:
    # mkstemp creates 0600; give outputs the usual permissions, honouring the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    path = Path(path)
    try:
        fd, tmp = _temp_in(path.parent, path.name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            _publish(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_nifti(img: nib.Nifti1Image, path: str | Path) -> None:
    """Save a NIfTI image atomically (same path as every other file: temp, fsync, rename).

    ``.nii.gz`` is gzip-compressed with a zero timestamp, so the same image always gives the same bytes.
    """
    data = img.to_bytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(path, data)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------------- dataset-level files
def container_info() -> dict[str, str] | None:
    """``{"Type": "docker"|"singularity", "Tag": ...}`` when running inside our container image, else None.

    The image sets ``CORDLESION_CONTAINER_TAG`` (Dockerfile); Apptainer/Singularity add their own variables.
    Not ``/.dockerenv``: that file also exists on plain hosts that happen to be containers themselves.
    """
    tag = os.environ.get("CORDLESION_CONTAINER_TAG")
    image = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    if image:
        return {"Type": "singularity", "Tag": Path(image).name or tag or f"{APP_NAME}:{__version__}"}
    if tag:
        return {"Type": "docker", "Tag": tag}
    return None


def dataset_description(bids_dir: Path) -> dict[str, Any]:
    """The derivative ``dataset_description.json`` for outputs computed from ``bids_dir``."""
    generated = {"Name": APP_NAME, "Version": __version__, "CodeURL": CODE_URL}
    container = container_info()
    if container:
        generated["Container"] = container
    source = {"URL": Path(bids_dir).resolve().as_uri()}
    raw_doi = read_json_quietly(Path(bids_dir) / "dataset_description.json").get("DatasetDOI")
    if isinstance(raw_doi, str) and raw_doi:
        source["DOI"] = raw_doi
    return {
        "Name": f"{APP_NAME} spinal cord lesion segmentations",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": source["URL"]},
    }


def write_dataset_files(output_dir: Path, bids_dir: Path) -> None:
    """Write ``dataset_description.json``, ``.bidsignore`` and ``README.md`` unless already identical.

    Safe when several processes start at once: each writes the same content atomically, and a file that
    already holds that content is left untouched (no byte changes on re-runs).
    """
    output_dir = Path(output_dir)
    desc = dataset_description(bids_dir)
    if read_json_quietly(output_dir / "dataset_description.json") != desc:
        atomic_write_json(output_dir / "dataset_description.json", desc)
    ignore = output_dir / ".bidsignore"
    wanted = _merge_lines(ignore, BIDSIGNORE_LINES)
    if wanted is not None:
        atomic_write_bytes(ignore, wanted.encode())
    readme = output_dir / "README.md"
    if not readme.exists():
        text = _README.format(version=__version__, source=Path(bids_dir).resolve())
        atomic_write_bytes(readme, text.encode())


def _merge_lines(path: Path, lines: tuple[str, ...]) -> str | None:
    """New content for a line-list file holding ``lines`` (keeping user lines), or None if nothing to add."""
    try:
        existing = path.read_text().splitlines()
    except OSError:
        existing = []
    missing = [line for line in lines if line not in existing]
    if not missing:
        return None
    return "\n".join([*existing, *missing]) + "\n"


_README = """# cordlesion derivatives

Spinal cord multiple sclerosis lesion segmentations computed by cordlesion {version} from `{source}`.
Per input image: `*_label-lesion_desc-<Suffix>_mask.nii.gz` (binary, on the input grid),
`*_label-lesion_desc-<Suffix>_probseg.nii.gz` (lesion probability) and JSON sidecars with provenance.
Non-BIDS folders (`sub-*/figures/`, `logs/`, `qc/`, `group/`) are listed in `.bidsignore`.
"""


# -------------------------------------------------------------------------------------- sidecars & state
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (symlinks followed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class SidecarInfo:
    """What the sidecars of one job say besides the file names: the source, the task's description and
    mask type (from the task table), and the provenance (completed here with ``Outputs``)."""

    source_uri: str
    description: str
    mask_type: str
    provenance: Mapping[str, Any]


def sidecar(*, source_uri: str, description: str, provenance: Mapping[str, Any],
            mask_type: str = "Lesion") -> dict[str, Any]:
    """A mask/probseg sidecar: BIDS fields, then our provenance under ``Provenance``."""
    return {
        "Type": mask_type,
        "Sources": [source_uri],
        "Description": description,
        "Manual": False,
        # The mask lies on the source image's exact grid: that image is its spatial reference.
        "SpatialReference": source_uri,
        PROVENANCE_KEY: dict(provenance),
    }


def read_provenance(mask_json: str | Path) -> dict[str, Any] | None:
    """The provenance recorded in an existing mask sidecar, or None when absent/unreadable."""
    prov = read_json_quietly(Path(mask_json)).get(PROVENANCE_KEY)
    return prov if isinstance(prov, dict) else None


def is_up_to_date(output_dir: Path, mask_json: str, state: Mapping[str, Any]) -> bool:
    """True when the mask sidecar records the same ``state`` (input checksum, models, parameters) and every
    file it lists under ``Outputs`` exists. The sidecar is written last: it implies the rest is complete."""
    output_dir = Path(output_dir)
    prov = read_provenance(output_dir / mask_json)
    if prov is None or _with_added_parameters(prov.get("State")) != _with_added_parameters(dict(state)):
        return False
    outputs = prov.get("Outputs")
    if not isinstance(outputs, list):
        return False
    return all(isinstance(rel, str) and (output_dir / rel).is_file() for rel in outputs)


#: parameters recorded since a version, with the value every output written before had: sidecars without
#: them stay up to date when the run asks for that value (fp32 is byte for byte what ran before issue 16;
#: torch was the only backend before issue 23: an openvino run recomputes them, its float32 differs)
ADDED_PARAMETERS = {"precision": "fp32", "backend": "torch"}


def _with_added_parameters(state: Any) -> Any:
    """A ``State`` with the :data:`ADDED_PARAMETERS` it lacks filled in (the recorded one and the run's
    alike, so a caller that does not know a parameter yet compares as before)."""
    if not isinstance(state, dict) or not isinstance(state.get("Parameters"), dict):
        return state
    return {**state, "Parameters": {**ADDED_PARAMETERS, **state["Parameters"]}}


def read_json_quietly(path: Path) -> dict[str, Any]:
    """A JSON object written by us, or {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_CORD_DESCRIPTION = "Spinal cord mask used to crop the image before lesions"


def write_segmentation(output_dir: Path, outputs: Mapping[str, str],
                       images: Mapping[str, nib.Nifti1Image | None], info: SidecarInfo) -> list[str]:
    """Write one job's NIfTIs (``images``: ``mask``, ``probseg``, ``cord``, each possibly None; only those
    ``outputs`` names are written), then their sidecars, the mask sidecar LAST; returns the written paths.

    The provenance is completed with ``Outputs`` (what was written), which :func:`is_up_to_date` checks.
    """
    output_dir = Path(output_dir)
    try:
        return _write_segmentation(output_dir, outputs, images, info)
    except BaseException:
        # Disk full, Ctrl-C: leave no half set of this image's outputs (a mask without its sidecar);
        # the image is then simply "not done" and the next run recomputes it.
        for rel in outputs.values():
            _unlink_quietly(str(output_dir / rel))
        raise


def _write_segmentation(output_dir: Path, outputs: Mapping[str, str],
                        images: Mapping[str, nib.Nifti1Image | None], info: SidecarInfo) -> list[str]:
    present = [(key, img) for key in ("mask", "probseg", "cord")
               if (img := images.get(key)) is not None and key in outputs]
    written = [outputs[key] for key, _ in present]
    prov = {**info.provenance, "Outputs": written}
    for key, img in present:
        atomic_save_nifti(img, output_dir / outputs[key])
    descriptions = {"probseg": (f"{info.description} (probability)", info.mask_type),
                    "cord": (_CORD_DESCRIPTION, "ROI"), "mask": (info.description, info.mask_type)}
    sidecars = [key for key, _ in present if key != "mask"] + ["mask"]  # the mask sidecar last
    for key in sidecars:
        description, mask_type = descriptions[key]
        atomic_write_json(output_dir / outputs[f"{key}_json"],
                          sidecar(source_uri=info.source_uri, description=description, provenance=prov,
                                  mask_type=mask_type))
    return [*written, *(outputs[f"{key}_json"] for key in sidecars)]
