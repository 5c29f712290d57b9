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
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib

from . import __version__
from .errors import OutputError

log = logging.getLogger(__name__)

APP_NAME = "cordlesion"
CODE_URL = "https://github.com/cordlesion/cordlesion"
BIDS_VERSION = "1.10.0"
# Non-BIDS folders of the output dataset (QC pictures, logs, group tables, QC index). bids-validator-deno
# matches "figures/" only at the top level: "**/figures" (no trailing slash) also covers sub-*/figures/.
# A trailing slash does not match top-level folders either ("qc/" left /qc/ and /group/ NOT_INCLUDED).
BIDSIGNORE_LINES = ("**/figures", "logs", "qc", "group")
PROVENANCE_KEY = "Provenance"

# Legacy tasks get their own desc so two models on one image have distinct, BIDS-valid names.
_DESC_SUFFIX = {"t2": "Legacy", "t2s": "Legacy", "t2_ax": "LegacyAx"}
_LABEL = {"spinalcord": "SC"}


# ----------------------------------------------------------------------------------------------- names
def source_entities(filename: str) -> str:
    """The source file name without its suffix and extension: ``sub-01_ses-M0_acq-sag_T2w.nii.gz`` ->
    ``sub-01_ses-M0_acq-sag`` (BIDS-Derivatives: "source entities")."""
    stem = filename[: -len(".nii.gz")] if filename.endswith(".nii.gz") else filename.rsplit(".", 1)[0]
    return stem.rsplit("_", 1)[0]


def desc_for(task: str, suffix: str) -> str:
    """``desc-`` of a task's outputs for a source suffix (``T2w`` for lesion_ms, ``T2wLegacy`` for t2)."""
    return suffix + _DESC_SUFFIX.get(task, "")


def label_for(task: str) -> str:
    """``label-`` value of a task's outputs: ``SC`` for the cord model, ``lesion`` for the lesion models."""
    return _LABEL.get(task, "lesion")


def output_names(source_relpath: str, suffix: str, task: str) -> dict[str, str]:
    """Output paths (relative to output_dir) of one (image, task) job.

    Keys: ``mask``, ``mask_json``, ``probseg``, ``probseg_json``, and for ``lesion_ms_mp2rage`` also
    ``cord``, ``cord_json`` (the cord mask used for the crop).
    """
    src = Path(source_relpath)
    base = f"{source_entities(src.name)}_label-{label_for(task)}_desc-{desc_for(task, suffix)}"
    folder = src.parent.as_posix()
    names = {
        "mask": f"{folder}/{base}_mask.nii.gz",
        "mask_json": f"{folder}/{base}_mask.json",
        "probseg": f"{folder}/{base}_probseg.nii.gz",
        "probseg_json": f"{folder}/{base}_probseg.json",
    }
    if task == "lesion_ms_mp2rage":
        cord = f"{folder}/{source_entities(src.name)}_label-SC_desc-{suffix}"
        names.update(cord=f"{cord}_mask.nii.gz", cord_json=f"{cord}_mask.json")
    return names


def log_name(source_relpath: str, suffix: str, task: str) -> str:
    """Per-image log path (relative to output_dir): ``logs/sub-01/<source stem>_desc-<Desc>.log``."""
    src = Path(source_relpath)
    subject = src.parts[0]
    return f"logs/{subject}/{source_entities(src.name)}_{suffix}_desc-{desc_for(task, suffix)}.log"


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
    raw_doi = _read_json_quietly(Path(bids_dir) / "dataset_description.json").get("DatasetDOI")
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
    if _read_json_quietly(output_dir / "dataset_description.json") != desc:
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


def sidecar(*, source_uri: str, description: str, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """A mask/probseg sidecar: BIDS fields, then our provenance under ``Provenance``."""
    return {
        "Type": "Lesion",
        "Sources": [source_uri],
        "Description": description,
        "Manual": False,
        # The mask lies on the source image's exact grid: that image is its spatial reference.
        "SpatialReference": source_uri,
        PROVENANCE_KEY: dict(provenance),
    }


def read_provenance(mask_json: str | Path) -> dict[str, Any] | None:
    """The provenance recorded in an existing mask sidecar, or None when absent/unreadable."""
    prov = _read_json_quietly(Path(mask_json)).get(PROVENANCE_KEY)
    return prov if isinstance(prov, dict) else None


def is_up_to_date(output_dir: Path, mask_json: str, state: Mapping[str, Any]) -> bool:
    """True when the mask sidecar records the same ``state`` (input checksum, models, parameters) and every
    file it lists under ``Outputs`` exists. The sidecar is written last: it implies the rest is complete."""
    output_dir = Path(output_dir)
    prov = read_provenance(output_dir / mask_json)
    if prov is None or prov.get("State") != dict(state):
        return False
    outputs = prov.get("Outputs")
    if not isinstance(outputs, list):
        return False
    return all(isinstance(rel, str) and (output_dir / rel).is_file() for rel in outputs)


def _read_json_quietly(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_segmentation(output_dir: Path, outputs: Mapping[str, str], *, mask: nib.Nifti1Image,
                       probseg: nib.Nifti1Image | None, cord: nib.Nifti1Image | None, source_uri: str,
                       description: str, provenance: Mapping[str, Any]) -> list[str]:
    """Write one job's NIfTIs, then their sidecars, the mask sidecar LAST; returns the written paths.

    ``provenance`` is completed with ``Outputs`` (what was written), which :func:`is_up_to_date` checks.
    """
    output_dir = Path(output_dir)
    try:
        return _write_segmentation(output_dir, outputs, mask=mask, probseg=probseg, cord=cord,
                                   source_uri=source_uri, description=description, provenance=provenance)
    except BaseException:
        # Disk full, Ctrl-C: leave no half set of this image's outputs (a mask without its sidecar);
        # the image is then simply "not done" and the next run recomputes it.
        for rel in outputs.values():
            _unlink_quietly(str(output_dir / rel))
        raise


def _write_segmentation(output_dir: Path, outputs: Mapping[str, str], *, mask: nib.Nifti1Image,
                        probseg: nib.Nifti1Image | None, cord: nib.Nifti1Image | None, source_uri: str,
                        description: str, provenance: Mapping[str, Any]) -> list[str]:
    images = [("mask", mask), ("probseg", probseg), ("cord", cord)]
    written = [outputs[key] for key, img in images if img is not None]
    prov = {**provenance, "Outputs": written}
    for key, img in images:
        if img is not None:
            atomic_save_nifti(img, output_dir / outputs[key])
    # BIDS mask types: Brain, Lesion, Face, ROI (the cord is an ROI)
    mask_type = "ROI" if "_label-SC_" in outputs["mask"] else "Lesion"
    if probseg is not None:
        atomic_write_json(output_dir / outputs["probseg_json"],
                          {**sidecar(source_uri=source_uri, description=f"{description} (probability)",
                                     provenance=prov), "Type": mask_type})
    if cord is not None:
        cord_sidecar = sidecar(source_uri=source_uri, provenance=prov,
                               description="Spinal cord mask used to crop the image before lesions")
        cord_sidecar["Type"] = "ROI"
        atomic_write_json(output_dir / outputs["cord_json"], cord_sidecar)
    atomic_write_json(output_dir / outputs["mask_json"],
                      {**sidecar(source_uri=source_uri, description=description, provenance=prov),
                       "Type": mask_type})
    return [*written, *(outputs[k] for k in ("probseg_json", "cord_json") if k in outputs
                        and (probseg if k == "probseg_json" else cord) is not None), outputs["mask_json"]]
