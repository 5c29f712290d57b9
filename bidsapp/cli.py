"""BIDS-App command line: ``run.py bids_dir output_dir {participant,group} [options]``.

Parses, checks every value where it enters, builds one :class:`Settings`, and hands over to the plan,
the runner or the group level. Exit codes follow the BIDS execution spec draft (see ``EXIT``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, tasks
from .argtypes import Parser, flatten_folds, folds, mem_arg, positive_int, seconds_arg
from .engine.backends import BACKENDS, CACHE_ENV
from .engine.precision import PRECISIONS
from .errors import EXIT, ConfigError, CordlesionError, ModelError, OutputError
from .pool import Interrupted, stop_on_signals
from .settings import (
    BACKEND_HELP,
    CROP_HELP,
    ENSEMBLE_HELP,
    ENSEMBLES,
    PRECISION_HELP,
    Settings,
    default_omp_nthreads,
    resolve_run_backend,
    resolve_run_precision,
)

log = logging.getLogger("bidsapp")

LEVELS = ("participant", "group")


def _label(prefix: str):
    def parse(text: str) -> str:
        label = text[len(prefix):] if text.startswith(prefix) else text
        if not label or not label.isalnum():
            raise argparse.ArgumentTypeError(f"{text!r} is not a BIDS label (letters and digits, optional "
                                             f"{prefix!r})")
        return label
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The BIDS-App argument parser (exits 64 on bad arguments)."""
    p = Parser(prog="cordlesion", description="Spinal cord MS lesion segmentation (SCT lesion models) as "
                "a BIDS App.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bids_dir", type=Path, help="input BIDS dataset (read only)")
    p.add_argument("output_dir", type=Path,
                   help="output BIDS-Derivatives folder (outside bids_dir, or bids_dir/derivatives/<name>)")
    p.add_argument("analysis_level", help="participant (segment each image) or group (tables and QC index)")
    p.add_argument("-v", "--version", action="version", version=f"cordlesion {__version__}")
    sel = p.add_argument_group("selecting images")
    sel.add_argument("--participant_label", "--participant-label", nargs="+", type=_label("sub-"),
                     metavar="LABEL", help="participants to process (with or without 'sub-'); default all")
    sel.add_argument("--session_label", "--session-label", nargs="+", type=_label("ses-"), metavar="LABEL",
                     help="sessions to process (with or without 'ses-'); default all")
    sel.add_argument("--bids-filter-file", "--bids_filter_file", type=Path, metavar="FILE",
                     help="JSON of entity filters (schema: bidsapp/schemas/bids_filter.schema.json)")
    sel.add_argument("--config", type=Path, metavar="FILE",
                     help="routing JSON: which tasks run on which images "
                     "(bidsapp/schemas/config.schema.json)")
    sel.add_argument("--skip_bids_validator", "--skip-bids-validator", action="store_true",
                     help="do not validate bids_dir with bids-validator-deno")
    mod = p.add_argument_group("models")
    mod.add_argument("--models-dir", "--models_dir", type=Path, metavar="DIR",
                     default=os.environ.get("CORDLESION_MODELS") or None,
                     help="installed models folder (env CORDLESION_MODELS)")
    mod.add_argument("--demo", action="store_true", help="use the small demo models (phantom data only)")
    mod.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8x slower)")
    mod.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None, help=CROP_HELP)
    mod.add_argument("--ensemble", choices=ENSEMBLES, default=None, help=ENSEMBLE_HELP)
    mod.add_argument("--folds", nargs="+", type=folds, metavar="K",
                     help="nnU-Net folds to ensemble, e.g. 0 1 or 0,1 (default: all in the model)")
    mod.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="auto uses CUDA when available")
    mod.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    mod.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    _add_lesion_options(p)
    run = p.add_argument_group("running")
    run.add_argument("-w", "--work-dir", "--work_dir", type=Path, metavar="DIR",
                     help="scratch folder (default: a temporary folder, removed at the end)")
    run.add_argument("--nprocs", "--n_cpus", "--n-cpus", type=positive_int, default=1,
                     help="worker processes (images segmented in parallel)")
    run.add_argument("--omp-nthreads", "--omp_nthreads", type=positive_int,
                     help="torch/OpenMP threads per worker (default: CPUs / nprocs)")
    run.add_argument("--overwrite", action="store_true", help="recompute images whose outputs are up to date")
    run.add_argument("--dry-run", "--dry_run", action="store_true",
                     help="print the plan (inputs, tasks, models, outputs, up to date or not) and stop")
    run.add_argument("--verbose", action="count", default=0, help="more log output (repeat for debug)")
    res = p.add_argument_group("resource limits")
    res.add_argument("--mem", "--mem_mb", "--mem-mb", type=mem_arg, metavar="SIZE",
                     help="memory the workers share, e.g. 8G, 8000MB (a bare number is MB); an image whose "
                     "estimate exceeds a worker's share is refused before any work (default: the SLURM "
                     "allocation, the cgroup limit, or the available memory)")
    res.add_argument("--image-timeout", "--image_timeout", type=seconds_arg, metavar="SECONDS",
                     help="seconds one image may take; its worker is then killed, the image fails and the "
                     "others go on (default: no limit)")
    res.add_argument("--allow-unusual-geometry", "--allow_unusual_geometry", action="store_true",
                     help="accept voxel sizes, field of view and shape outside what spinal cord MRI has "
                     "(0.1-10 mm voxels, FOV <= 800 mm, <= 2048 voxels per axis) with a warning")
    return p


def _add_lesion_options(p: argparse.ArgumentParser) -> None:
    """Issue 17: the cord masks and lesion tables of the lesion tasks."""
    les = p.add_argument_group("lesion analysis")
    les.add_argument("--cord", action=argparse.BooleanOptionalAction, default=True,
                     help="write each lesion image's cord mask (label-SC; lesion_ms runs spinalcord for it) "
                     "and measure its lesion table against it (default); --no-cord: neither")
    les.add_argument("--drop-outside-cord", "--drop_outside_cord", action="store_true",
                     help="remove lesions with no voxel in the cord from the lesion masks and tables (SCT "
                     "issue #4946; recorded in the sidecars)")
    les.add_argument("--corrections", type=Path, metavar="DIR",
                     help="labels folder of corrected masks (manual_correction.py -path-out: "
                     "<image stem>_lesion-manual / _seg-manual, or ..._label-lesion|SC_desc-manual_mask): "
                     "an image's figures (lesion table, counts, QC, group and change tables) are measured "
                     "on its corrected masks; the model's masks stay written; only read. A re-run "
                     "recomputes only the figures of images whose corrected files are new or changed "
                     "(no model re-run)")
    les.add_argument("--disc-labels", "--disc_labels", type=Path, metavar="DIR",
                     help="labels folder of disc labels (may be the --corrections folder): <image stem>"
                     "_label-discs_dlabel, _label-disc, _labels-disc-manual, _labels-disc or "
                     "_totalspineseg_discs, one voxel per disc valued as SCT's (3 = C2/C3, ...); another "
                     "image's of the same session serves an image without its own. Gives each lesion its "
                     "vertebral level (SCT 7.3's sct_label_vertebrae -discfile rule), the cord's level map "
                     "(_desc-<suffix>Levels_dseg) and the group's lesion load per level; only read; a "
                     "changed file redoes the figures only")


# ---------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the app; returns the exit code (never raises for user errors)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (64, already printed)
        return int(exc.code or 0)
    _setup_logging(args.verbose)
    try:
        with stop_on_signals():  # SIGTERM (SLURM's time limit, scancel) and Ctrl-C: Interrupted
            return _run(args)
    except _Exit as exc:
        log.error("%s", exc.message)
        return exc.code
    except Interrupted as exc:
        _log_interrupted(exc)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C / SIGINT: outputs are atomic, so finished images are complete
        log.error("interrupted: stopped; finished images are kept, re-run the same command to do the rest")
        return EXIT["interrupted"]


class _Exit(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = EXIT[code], message


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose or not sys.stderr.isatty()
                     else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_cordlesion", False)]:
        root.removeHandler(old)
    handler._cordlesion = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


def _run(args: argparse.Namespace) -> int:
    level = args.analysis_level
    if level not in LEVELS:
        raise _Exit("unknown_level", f"unknown analysis level {level!r}: use one of {', '.join(LEVELS)}")
    bids_dir, output_dir = _check_dirs(args.bids_dir, args.output_dir)
    corrections = _check_corrections(args.corrections)
    disc_labels = _check_disc_labels(args.disc_labels)
    if level == "group":
        return _group(output_dir, skip_validation=args.skip_bids_validator, bids_dir=bids_dir,
                      corrections=corrections, disc_labels=disc_labels)
    settings = _settings(args, bids_dir, output_dir)
    work = Path(tempfile.mkdtemp(prefix="cordlesion-")) if settings.work_dir is None else settings.work_dir
    saved = dict(os.environ)
    try:
        _prepare_environment(work, settings)
        return _participant(settings, work)
    finally:
        # main() may run inside another program (tests, brainlife wrapper): leave its environment as found
        os.environ.clear()
        os.environ.update(saved)
        if settings.work_dir is None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


def _check_corrections(folder: Path | None) -> Path | None:
    """``--corrections``: an existing folder (no dataset_description.json needed: manual_correction.py
    writes none); only ever read."""
    if folder is None:
        return None
    if not folder.is_dir():
        raise _Exit("no_input", f"{folder}: --corrections is not a folder (the labels folder of corrected "
                    "masks, manual_correction.py's -path-out)")
    return folder.absolute()


def _check_disc_labels(folder: Path | None) -> Path | None:
    """``--disc-labels``: an existing folder (no dataset_description.json needed); only ever read."""
    if folder is None:
        return None
    if not folder.is_dir():
        raise _Exit("no_input", f"{folder}: --disc-labels is not a folder (the labels folder holding the "
                    "disc labels, e.g. derivatives/labels)")
    return folder.absolute()


def _group(output_dir: Path, *, skip_validation: bool, bids_dir: Path | None = None,
           corrections: Path | None = None, disc_labels: Path | None = None) -> int:
    from .group import run_group

    # bids_dir: the source images the change registers; corrections, disc_labels: checked against the figures
    code = run_group(output_dir, bids_dir=bids_dir, corrections=corrections, disc_labels=disc_labels)
    if not skip_validation:
        _validate_output(output_dir)
    return code


def _validate_output(output_dir: Path) -> None:
    """The group level checks the whole derivative dataset and warns (outputs are already written)."""
    from .validation import ValidatorUnavailableError, validate

    try:
        report = validate(output_dir)
    except ValidatorUnavailableError as exc:
        log.warning("output not validated: %s", exc)
        return
    if report.n_errors:
        log.warning("%s: bids-validator-deno found %d error(s) in the outputs:\n%s", output_dir,
                    report.n_errors, report.summary())
    else:
        log.info("%s: bids-validator-deno 0 errors", output_dir)


def _check_dirs(bids_dir: Path, output_dir: Path) -> tuple[Path, Path]:
    bids_dir, output_dir = bids_dir.absolute(), output_dir.absolute()
    if not bids_dir.is_dir():
        raise _Exit("no_input", f"{bids_dir}: bids_dir does not exist or is not a folder")
    if not (bids_dir / "dataset_description.json").is_file():
        raise _Exit("no_input", f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    real_in, real_out = bids_dir.resolve(), output_dir.resolve()
    inside = real_out.relative_to(real_in).parts if real_out.is_relative_to(real_in) else None
    # The BIDS convention (and fMRIPrep's): derivatives/<name>[/...] inside the dataset is fine; the
    # indexer never reads derivatives/. Anywhere else inside it would mix outputs with the input data.
    if inside is not None and not (len(inside) >= 2 and inside[0] == "derivatives"):
        raise _Exit("cant_create", f"{output_dir}: output_dir is bids_dir or inside it but not in "
                    f"derivatives/<name>: use e.g. {real_in / 'derivatives' / 'cordlesion'} "
                    f"or {real_in.parent / (real_in.name + '-cordlesion')}")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Exit("cant_create", f"{output_dir}: cannot create output_dir ({exc.strerror or exc})") from exc
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise _Exit("cant_create", f"{output_dir}: output_dir is not writable")
    return bids_dir, output_dir


def _settings(args: argparse.Namespace, bids_dir: Path, output_dir: Path) -> Settings:
    from . import plan

    try:
        rules = (plan.load_config(plan.read_json(args.config, "routing config"), str(args.config))
                 if args.config else plan.default_rules())
        filters = (plan.load_filters(plan.read_json(args.bids_filter_file, "BIDS filter file"),
                                     str(args.bids_filter_file)) if args.bids_filter_file else {"*": {}})
    except ConfigError as exc:
        raise _Exit("usage", str(exc)) from exc
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise _Exit("usage", "--device cuda: no CUDA device is available to this process")
    if args.drop_outside_cord and not args.cord:
        raise _Exit("usage", "--drop-outside-cord needs the cord masks: drop --no-cord")
    if args.disc_labels is not None and not args.cord:
        raise _Exit("usage", "--disc-labels needs the cord masks (their centreline carries the levels): drop "
                    "--no-cord")
    precision = resolve_run_precision(args.precision, args.device)  # once: every worker runs this one
    try:
        backend = resolve_run_backend(args.backend, args.device, precision)
    except ValueError as exc:
        raise _Exit("usage", str(exc)) from exc
    log.info("precision %s, backend %s (--precision %s, --backend %s, --device %s)", precision, backend,
             args.precision, args.backend, args.device)
    return Settings(
        bids_dir=bids_dir, output_dir=output_dir, analysis_level=args.analysis_level,
        participants=tuple(args.participant_label or ()), sessions=tuple(args.session_label or ()),
        filters=filters, rules=tuple(rules), config_file=args.config,
        models_dir=Path(args.models_dir).absolute() if args.models_dir else None, demo=args.demo,
        work_dir=args.work_dir.absolute() if args.work_dir else None, nprocs=args.nprocs,
        omp_nthreads=args.omp_nthreads or default_omp_nthreads(args.nprocs), device=args.device,
        tta=args.tta, folds=flatten_folds(args.folds),
        crop=tasks.CROP_DEFAULT if args.crop is None else args.crop, ensemble=args.ensemble,
        cord=args.cord, drop_outside_cord=args.drop_outside_cord, precision=precision,
        backend=backend, corrections=_check_corrections(args.corrections),
        disc_labels=_check_disc_labels(args.disc_labels), overwrite=args.overwrite,
        dry_run=args.dry_run,
        skip_bids_validator=args.skip_bids_validator, mem=args.mem, image_timeout=args.image_timeout,
        allow_unusual_geometry=args.allow_unusual_geometry)


def _prepare_environment(work: Path, settings: Settings) -> None:
    """Caches and thread counts for this process and the workers it spawns: never HOME (it may be
    read-only in containers), threads capped per worker so nprocs x threads fits the CPUs."""
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Exit("cant_create", f"{work}: cannot create the work dir ({exc.strerror or exc})") from exc
    for var, sub in (("MPLCONFIGDIR", "matplotlib"), ("XDG_CACHE_HOME", "cache"), ("TORCH_HOME", "torch"),
                     ("DENO_DIR", "deno"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
        os.environ.setdefault(var, str(work / sub))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(settings.omp_nthreads)
    os.environ[CACHE_ENV] = str(work / "openvino")  # the converted networks: a study converts once


def _participant(settings: Settings, work: Path) -> int:
    from . import derivatives, plan, runner

    if not settings.skip_bids_validator:
        _validate_input(settings, work)
    try:
        images = plan.index(settings.bids_dir, participants=settings.participants or None,
                            sessions=settings.sessions or None, filters=settings.filters,
                            suffixes=plan.rule_suffixes(settings.rules))
        jobs = plan.route(images, settings.rules)
    except ConfigError as exc:
        raise _Exit("usage", str(exc)) from exc
    if not jobs:
        raise _Exit("no_match", f"{settings.bids_dir}: the participant/session labels and filters selected "
                    f"no image to process{_selection(settings)}. The dataset has "
                    f"{plan.describe_dataset(settings.bids_dir)}")
    _warn_missing_labels(settings, images)
    try:
        located = runner.locate_models(sorted({j.task for j in jobs}), settings)
    except ModelError as exc:
        raise _Exit("no_input", str(exc)) from exc
    items = runner.prepare(jobs, settings, located)
    if settings.dry_run:
        print(format_plan(items, settings))
        return EXIT["ok"]
    try:
        derivatives.write_dataset_files(settings.output_dir, settings.bids_dir)
        summary = runner.run_jobs(items, settings)
    except OutputError as exc:
        raise _Exit("cant_create", str(exc)) from exc
    _log_summary(summary)
    return summary.exit_code


def _selection(settings: Settings) -> str:
    parts = []
    if settings.participants:
        parts.append("participant_label " + " ".join(settings.participants))
    if settings.sessions:
        parts.append("session_label " + " ".join(settings.sessions))
    if any(settings.filters.values()):
        parts.append("filters " + json.dumps(settings.filters))
    return f" ({'; '.join(parts)})" if parts else ""


def _warn_missing_labels(settings: Settings, images: Sequence[Any]) -> None:
    found = {i.subject for i in images}
    missing = [p for p in settings.participants if p not in found]
    if missing:
        log.warning("no image selected for participant(s) %s", ", ".join(f"sub-{m}" for m in missing))


def _validate_input(settings: Settings, work: Path) -> None:
    from .validation import ValidatorUnavailableError, validate

    try:
        report = validate(settings.bids_dir, work_dir=work)
    except ValidatorUnavailableError as exc:
        raise _Exit("invalid_bids", f"{exc} (or run with --skip_bids_validator)") from exc
    if report.n_errors:
        raise _Exit("invalid_bids", f"{settings.bids_dir}: bids-validator-deno found {report.n_errors} "
                    f"error(s); fix them or run with --skip_bids_validator:\n{report.summary()}")
    log.info("bids-validator-deno: 0 errors, %d warning(s)", sum(len(v) for v in report.warnings.values()))


def format_plan(items: Sequence[Any], settings: Settings) -> str:
    """Human-readable plan: each input, its task, models, outputs, up to date or not."""
    lines = [f"cordlesion {__version__} plan: {len(items)} job(s), bids_dir {settings.bids_dir}, "
             f"output_dir {settings.output_dir}"]
    for item in items:
        job = item.job
        status = ("up to date" if item.up_to_date else "will run" if not item.refresh else
                  "figures to redo: corrected masks or disc labels new or changed")
        models = ", ".join(f"{name} ({m.release})" for name, m in item.models.items())
        lines.append(f"- {job.source.relpath}\n    task: {job.task}   models: {models}   [{status}]")
        for key in ("mask", "probseg", "cord"):
            if key in job.outputs:
                lines.append(f"    -> {job.outputs[key]}")
    return "\n".join(lines)


def _log_interrupted(exc: Interrupted) -> None:
    """What was done before the signal, and how to finish (outputs are atomic: none is partial)."""
    if exc.summary is not None:
        _log_summary(exc.summary)
    left = f"{exc.not_done} image(s) not done; " if exc.not_done else ""
    log.error("interrupted by %s: stopped, workers ended; %sfinished images are kept, re-run the same "
              "command to do the rest", exc.name, left)


def _log_summary(summary: Any) -> None:
    done, skipped, failed = summary.count("done"), summary.count("skipped"), summary.failed
    redone = summary.count("refreshed")
    log.info("summary: %d done, %s%d up to date, %d failed", done,
             f"{redone} figures redone (masks kept), " if redone else "", skipped, len(failed))
    for result in failed:
        log.error("failed: %s -- %s (log: %s)", result.source, result.message, result.log)


__all__ = ["build_parser", "main", "EXIT", "format_plan", "CordlesionError"]
