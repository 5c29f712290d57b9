"""brainlife.io wrapper: ``config.json`` inputs -> a one-subject BIDS dataset -> the app -> brainlife outputs.

brainlife runs the executable ``main`` at the repository root in a job folder holding ``config.json``:
input files by key (here ``t2w``, ``t2star``, ``unit1``, each optional, at least one), the metadata of each
input in ``_inputs`` (``subject``, ``session``), and the app's parameters. This module

1. links the inputs into ``bids/sub-<subject>[/ses-<session>]/anat/`` under their BIDS suffixes
   (``T2w``, ``T2starw``, ``UNIT1``), beside a minimal ``dataset_description.json``;
2. runs the participant level of the BIDS App into ``cordlesion/`` (BIDS-Derivatives, QC pictures);
3. copies each lesion mask to ``mask_<key>/mask.nii.gz`` (brainlife datatype ``neuro/mask``) and writes
   ``product.json`` with the lesion figures (count, total and per-lesion volumes) and the QC pictures.

Run as ``python -m bidsapp.brainlife [config.json]`` in the job folder.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .derivatives import image_names, nifti_stem
from .errors import ConfigError, CordlesionError
from .plan import read_json, validate_user_json

log = logging.getLogger(__name__)

#: config.json key -> BIDS suffix of the image brainlife hands over under that key.
INPUT_SUFFIXES = {"t2w": "T2w", "t2star": "T2starw", "unit1": "UNIT1"}
BIDS_FOLDER, DERIVATIVES_FOLDER = "bids", "cordlesion"


@dataclass(frozen=True)
class BrainlifeJob:
    """What one brainlife job asks for, read from ``config.json``."""

    subject: str
    """BIDS subject label (letters and digits) from the inputs' ``meta.subject``."""
    session: str | None
    """BIDS session label from ``meta.session``, None when absent."""
    images: dict[str, Path]
    """config key (``t2w``...) -> absolute path of the input NIfTI."""
    app_options: tuple[str, ...]
    """Extra run.py options built from the config parameters."""


def _label(value: Any) -> str:
    """A BIDS label from brainlife metadata: letters and digits only (``"sub 01-a"`` -> ``"sub01a"``)."""
    return re.sub(r"[^A-Za-z0-9]", "", str(value or ""))


def _meta(config: dict[str, Any], key: str) -> dict[str, Any]:
    """The ``meta`` of the ``_inputs`` entry that provides config ``key`` (matched by ``keys`` or ``id``)."""
    for entry in config.get("_inputs") or []:
        if isinstance(entry, dict) and (key in (entry.get("keys") or []) or entry.get("id") == key):
            return entry.get("meta") or {}
    return {}


def _options(config: dict[str, Any]) -> tuple[str, ...]:
    """run.py options from the config parameters (all optional)."""
    opts: list[str] = []
    # The dataset is one we assemble from inputs brainlife has already typed, so the validator is off
    # unless asked for: its findings (no README, no sidecars) would be about our scaffolding.
    if not config.get("validate_bids", False):
        opts.append("--skip_bids_validator")
    for flag in ("demo", "tta"):
        if config.get(flag):
            opts.append(f"--{flag}")
    if config.get("crop") is not None:  # lesion_ms around the cord or the whole image (default, as SCT)
        opts.append("--crop" if config["crop"] else "--no-crop")
    for key in ("device", "precision", "backend"):
        if config.get(key):
            opts += [f"--{key}", str(config[key])]
    if config.get("omp_nthreads"):
        opts += ["--omp-nthreads", str(int(config["omp_nthreads"]))]
    return tuple(opts)


def read_config(path: str | Path) -> BrainlifeJob:
    """Read a brainlife ``config.json``; input paths are taken relative to the file's folder.

    Raises :class:`ConfigError` naming the file when it is unreadable, has no input, or an input is
    missing or not NIfTI.
    """
    path = Path(path)
    config = read_json(path, "the brainlife config")
    validate_user_json(config, "brainlife_config.schema.json", str(path))
    images: dict[str, Path] = {}
    for key in INPUT_SUFFIXES:
        if config.get(key):
            image = Path(os.path.abspath(path.parent / str(config[key])))  # '..' resolved, links kept
            if not image.is_file():
                raise ConfigError(f"{path}: input {key!r} is {config[key]!r}, which is not a file")
            if not image.name.endswith((".nii", ".nii.gz")):
                raise ConfigError(f"{path}: input {key!r} ({image.name}) is not a .nii or .nii.gz file")
            images[key] = image
    if not images:
        raise ConfigError(f"{path}: no input image: give at least one of {', '.join(INPUT_SUFFIXES)}")
    metas = [_meta(config, key) for key in images]
    subjects = {_label(m.get("subject")) for m in metas} - {""}
    sessions = {_label(m.get("session")) for m in metas} - {""}
    if len(subjects) > 1 or len(sessions) > 1:
        log.warning("%s: inputs come from several subjects/sessions (%s %s); using the first", path,
                    sorted(subjects), sorted(sessions))
    subject = next((_label(m.get("subject")) for m in metas if _label(m.get("subject"))), "01")
    session = next((_label(m.get("session")) for m in metas if _label(m.get("session"))), None)
    return BrainlifeJob(subject=subject, session=session, images=images, app_options=_options(config))


def _entities(job: BrainlifeJob) -> str:
    return f"sub-{job.subject}" + (f"_ses-{job.session}" if job.session else "")


def build_bids(job: BrainlifeJob, bids_dir: Path) -> dict[str, str]:
    """Lay the inputs out as a BIDS dataset (symbolic links, nothing copied).

    Returns config key -> the image's path relative to ``bids_dir`` (what the mask sidecars cite).
    """
    anat = Path(f"sub-{job.subject}") / (f"ses-{job.session}" if job.session else "") / "anat"
    (bids_dir / anat).mkdir(parents=True, exist_ok=True)
    description = {"Name": "brainlife inputs", "BIDSVersion": "1.10.0", "DatasetType": "raw",
                   "GeneratedBy": [{"Name": "cordlesion brainlife wrapper", "Version": __version__}]}
    (bids_dir / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")
    relative = {}
    for key, image in job.images.items():
        extension = ".nii.gz" if image.name.endswith(".nii.gz") else ".nii"
        rel = anat / f"{_entities(job)}_{INPUT_SUFFIXES[key]}{extension}"
        target = bids_dir / rel
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(image)
        relative[key] = rel.as_posix()
    return relative


def app_arguments(job: BrainlifeJob, bids_dir: Path, output_dir: Path) -> list[str]:
    """The run.py command line for this job (participant level, this subject only)."""
    return [str(bids_dir), str(output_dir), "participant", "--participant-label", job.subject,
            *job.app_options]


def find_lesion_mask(output_dir: Path, source: str) -> Path | None:
    """The lesion mask whose sidecar names ``source`` (``bids:raw:<path>``) in ``Sources``."""
    for mask in sorted(output_dir.glob("sub-*/**/*_label-lesion*_mask.nii.gz")):
        sidecar = mask.with_name(nifti_stem(mask.name) + ".json")
        try:
            sources = json.loads(sidecar.read_text()).get("Sources") or []
        except (OSError, ValueError):
            continue
        if f"bids:raw:{source}" in sources:
            return mask
    return None


def _qc_pictures(source: str, output_dir: Path) -> list[dict[str, str]]:
    """brainlife ``image/png`` entries: the QC overlays of the image ``source`` (BIDS-relative path)."""
    stem = nifti_stem(source)
    pictures = sorted(output_dir.glob(f"sub-*/figures/{stem}_desc-*.png"))
    overlays = [p for p in pictures if "overlay" in p.stem] or pictures
    return [{"type": "image/png", "name": p.stem, "base64": base64.b64encode(p.read_bytes()).decode()}
            for p in overlays]


def collect_outputs(job: BrainlifeJob, sources: dict[str, str], output_dir: Path,
                    job_dir: Path) -> dict[str, Any]:
    """Copy each lesion mask to ``mask_<key>/mask.nii.gz``; return the ``product.json`` content (lesion
    figures from the image's QC record: the participant level measured them once)."""
    product: dict[str, Any] = {"brainlife": [], "subject": job.subject, "session": job.session,
                               "cordlesion_version": __version__, "lesions": {}}
    for key, source in sources.items():
        mask = find_lesion_mask(output_dir, source)
        if mask is None:
            product["brainlife"].append({"type": "error", "msg": f"{key}: no lesion mask was produced"})
            continue
        destination = job_dir / f"mask_{key}" / "mask.nii.gz"
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mask, destination)
        sidecar = json.loads(mask.with_name(nifti_stem(mask.name) + ".json").read_text())
        stats = _lesion_figures(output_dir, source, sidecar)
        product["lesions"][key] = {
            "count": stats["count"], "total_volume_mm3": stats["total_mm3"],
            "volumes_mm3": stats["volumes_mm3"],
            "mask": destination.relative_to(job_dir).as_posix(), "derivative": mask.relative_to(output_dir)
            .as_posix(), "model": {k: v for k, v in sidecar.items() if k not in ("Sources", "Description")},
        }
        product["brainlife"].append({"type": "info", "msg": f"{key}: {stats['count']} lesion(s), "
                                     f"{stats['total_mm3']:.1f} mm3 in total"})
        product["brainlife"] += _qc_pictures(source, output_dir)
    return product


def _lesion_figures(output_dir: Path, source: str, sidecar: dict[str, Any]) -> dict[str, Any]:
    """The ``lesions`` block of the QC record of the task that wrote this mask (its sidecar names it)."""
    task = ((sidecar.get("Provenance") or {}).get("State") or {}).get("Task")
    try:
        record = output_dir / image_names(source, str(task)).qc_record
        return dict(json.loads(record.read_text())["lesions"])
    except (OSError, ValueError, KeyError, TypeError) as exc:  # ConfigError (unknown task) is a ValueError
        raise CordlesionError(f"{output_dir}: no QC record with the lesion figures of {source} "
                              f"({exc})") from exc


def run(config_path: str | Path) -> int:
    """The whole brainlife job; returns the app's exit code (1 if a mask is missing)."""
    from .cli import main as run_app

    config_path = Path(config_path).absolute()
    job_dir = config_path.parent
    job = read_config(config_path)
    bids_dir, output_dir = job_dir / BIDS_FOLDER, job_dir / DERIVATIVES_FOLDER
    sources = build_bids(job, bids_dir)
    code = run_app(app_arguments(job, bids_dir, output_dir))
    product = collect_outputs(job, sources, output_dir, job_dir)
    if code != 0:
        product["brainlife"].insert(0, {"type": "error", "msg": f"cordlesion exited with code {code}"})
    (job_dir / "product.json").write_text(json.dumps(product, indent=2) + "\n")
    missing = [k for k in sources if k not in product["lesions"]]
    return code or (1 if missing else 0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bidsapp.brainlife [config.json]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print("usage: python -m bidsapp.brainlife [config.json]", file=sys.stderr)
        return 64 if len(args) > 1 else 0
    # No logging setup here: the app's CLI installs its handler when it runs (a second one would
    # print every line twice); errors before that are printed.
    config_path = Path(args[0] if args else "config.json").absolute()
    try:
        return run(config_path)
    except CordlesionError as exc:
        print(f"cordlesion brainlife: {exc}", file=sys.stderr)
        # brainlife shows product.json messages on the job page: say there why nothing was produced.
        product = {"brainlife": [{"type": "error", "msg": str(exc)}]}
        (config_path.parent / "product.json").write_text(json.dumps(product, indent=2) + "\n")
        return 65


if __name__ == "__main__":
    sys.exit(main())
