"""Single-image command, our ``sct_deepseg lesion_ms -i t2.nii.gz`` (SCT 7: the task is a subcommand).

    python -m bidsapp.segment lesion_ms -i IMAGE [-o MASK] [-qc DIR] [--soft [PROBMAP]]
    python -m bidsapp.segment spinalcord|lesion_ms_mp2rage|seg_ms_lesion|... -i IMAGE ...
    python -m bidsapp.segment -i IMAGE -t TASK_OR_MODEL_FOLDER -o MASK [--soft PROBMAP] [--tta]
        [--folds K ...] [--ensemble sct|logits|probabilities] [--device auto|cpu|cuda]
        [--precision auto|fp32|bf16|fp16] [--backend auto|torch|openvino] [--demo]
    python -m bidsapp.segment -i t2.nii.gz -c t2|t2_ax|t2s [-ofolder DIR] [-r 0] [-qc DIR]

A first argument that names a task (SCT 7's ``spinalcord``, ``lesion_ms``, ``lesion_ms_mp2rage``, or an
older SCT name) is the task, as ``-t`` is. ``--soft`` (SCT's ``-soft-ms-lesion``) without a path writes
the soft map as ``<name>_msLesionSoft.nii.gz`` beside the mask.

Without ``-o`` the mask goes next to the input (or into ``-ofolder``) under SCT's names:
``<name>_lesionseg.nii.gz`` for the legacy models (``sct_deepseg_lesion``), ``<name>_lesion_seg.nii.gz``
for the lesion tasks and ``<name>_seg.nii.gz`` for ``spinalcord`` (SCT 7 ``sct_deepseg``).

Exit codes: 0 success, 64 usage error, 65 unusable input image, 66 missing input, 1 any other failure
(model missing or broken, output not writable, ...). Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import memory, tasks
from .argtypes import Parser, flatten_folds, folds, mem_arg
from .derivatives import nifti_stem
from .engine.backends import BACKENDS
from .engine.precision import PRECISIONS
from .errors import EXIT
from .pool import Interrupted, stop_on_signals
from .settings import (
    BACKEND_HELP,
    CROP_HELP,
    ENSEMBLE_HELP,
    ENSEMBLES,
    PRECISION_HELP,
    resolve_run_backend,
    resolve_run_precision,
)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SOFT_DEFAULT = Path("<default>.nii.gz")  # --soft without a path: SCT's soft-map name, resolved later
SOFT_SUFFIX = "_msLesionSoft"  # SCT 7.3 deepseg/inference.py segment_nnunet, the soft lesion_ms output
LEGACY_CONTRASTS = tasks.names(tasks.ONNX)

log = logging.getLogger("bidsapp.segment")


def _nifti_path(value: str) -> Path:
    if not value.endswith(NIFTI_SUFFIXES):
        raise argparse.ArgumentTypeError(f"{value!r} must end with .nii or .nii.gz")
    return Path(value)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate from :func:`main` so tests and the legacy options can extend it)."""
    p = Parser(prog="python -m bidsapp.segment",
                description="Segment one NIfTI image with an SCT lesion/cord model (nnU-Net v2, run by us).")
    p.add_argument("-i", "--input", required=True, type=Path, metavar="IMAGE", help="input NIfTI image")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("-t", "--task", metavar="TASK_OR_MODEL_FOLDER",
                      help="lesion_ms, lesion_ms_mp2rage, spinalcord, an SCT alias (seg_ms_lesion, "
                           "seg_ms_lesion_mp2rage, seg_sc_contrast_agnostic), or an nnU-Net v2 model folder")
    what.add_argument("-c", "--contrast", choices=LEGACY_CONTRASTS,
                      help="legacy sct_deepseg_lesion model, as its -c: t2 (sagittal T2w), "
                           "t2_ax (axial T2w), t2s (T2*w)")
    p.add_argument("-o", "--output", type=_nifti_path, metavar="MASK",
                   help="output mask (uint8 0/1, input grid); default: SCT's name next to the input")
    p.add_argument("-ofolder", "--ofolder", type=Path, metavar="DIR",
                   help="folder for the default output names (default: the input's folder)")
    p.add_argument("--keep-intermediate", action="store_true",
                   help="also write the cord mask a task used (<name>_seg.nii.gz): the legacy centreline")
    p.add_argument("-r", type=int, choices=(0, 1), default=1,
                   help="SCT's 'remove temporary files': -r 0 is --keep-intermediate")
    p.add_argument("-qc", "--qc", type=Path, metavar="DIR", help="write QC pictures (PNG) into DIR")
    p.add_argument("--soft", "-soft-ms-lesion", type=_nifti_path, nargs="?", const=SOFT_DEFAULT,
                   metavar="PROBMAP",
                   help="also write the soft map (float32 in [0, 1]); without PROBMAP: "
                        "<name>_msLesionSoft.nii.gz beside the mask (SCT's -soft-ms-lesion name)")
    p.add_argument("--cord", type=_nifti_path, metavar="CORDMASK",
                   help="also write the cord mask the box around the cord came from (lesion_ms_mp2rage: its "
                        "crop box; lesion_ms --crop: its ROI box)")
    p.add_argument("--tta", action="store_true",
                   help="mirroring test-time augmentation (off by default, as in SCT)")
    p.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None, help=CROP_HELP)
    p.add_argument("--folds", nargs="+", type=folds, metavar="K",
                   help="folds to use, e.g. 0 1 or 0,1 (default: every fold of the model)")
    p.add_argument("--ensemble", choices=ENSEMBLES, help=ENSEMBLE_HELP)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    p.add_argument("--demo", action="store_true", help="use the embedded demo models (phantoms only)")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="where models are installed")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads of torch and OpenVINO (default: torch's)")
    p.add_argument("--mem", type=mem_arg, metavar="SIZE",
                   help="memory this may use, e.g. 8G (bare number: MB); an image whose estimate exceeds it "
                   "is refused before any work (default: SLURM, cgroup or available memory)")
    p.add_argument("--allow-unusual-geometry", action="store_true",
                   help="accept voxel sizes, field of view and shape outside what spinal cord MRI has")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def fill_defaults(args: argparse.Namespace) -> None:
    """Resolve ``-c``/``-t`` into ``args.task_name`` and ``args.models``, ``--crop`` and ``--ensemble``
    from the task's row when not given; default output paths (SCT names, from the task table)."""
    if args.contrast:
        args.task_name, args.models = args.contrast, None
    else:
        args.task_name, args.models = resolve_task(args.task)
    spec = tasks.get(args.task_name)
    if args.crop is False and spec.crop.mode == "always":
        raise _Usage(f"{spec.name} needs the crop around the cord (trained on cropped images): "
                     "drop --no-crop")
    args.crop = tasks.CROP_DEFAULT if args.crop is None else args.crop
    args.ensemble = args.ensemble or spec.ensemble
    folder = args.ofolder if args.ofolder is not None else args.input.parent
    stem = nifti_stem(args.input.name)
    if args.output is None:
        if spec.sct_output_suffix is None:
            raise _Usage("-o is required with a model folder")
        args.output = folder / f"{stem}{spec.sct_output_suffix}.nii.gz"
    if (args.keep_intermediate or args.r == 0) and args.cord is None and spec.name != tasks.CORD_MODEL:
        args.cord = folder / f"{stem}_seg.nii.gz"
    if args.soft == SOFT_DEFAULT:
        args.soft = args.output.with_name(f"{nifti_stem(args.output.name)}{SOFT_SUFFIX}.nii.gz")


def subcommand_argv(argv: list[str]) -> list[str]:
    """SCT 7's form ``TASK -i IMAGE ...`` as ``-t TASK -i IMAGE ...``: a first argument that is not an
    option is the task (a task name, an SCT alias or a model folder, checked as ``-t`` is)."""
    if argv and not argv[0].startswith("-"):
        return ["-t", argv[0], *argv[1:]]
    return argv


def resolve_task(value: str) -> tuple[str, dict | None]:
    """(task, models) for ``-t``: an existing folder is run as is (task ``nnunet``), else a task name
    or SCT alias mapped by the model registry."""
    path = Path(value)
    if path.is_dir():
        return "nnunet", {"nnunet": path}
    if "/" in value or value.startswith("."):
        raise _Missing(f"{value}: no such model folder")
    from .errors import ConfigError

    try:
        return tasks.canonical(value), None
    except ConfigError as exc:
        raise _Usage(str(exc)) from exc


def _check_paths(args: argparse.Namespace) -> None:
    outputs = [p for p in (args.output, args.soft, args.cord) if p is not None]
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise _Usage("output paths must differ")
    if args.input.resolve() in {p.resolve() for p in outputs}:
        raise _Usage("an output path equals the input image")


class _Usage(Exception):
    """A bad option value found after parsing (exit 64)."""


class _Missing(Exception):
    """A named input that does not exist (exit 66)."""


def run(args: argparse.Namespace) -> int:
    """Segment and write; raises our errors, returns 0."""
    import time

    import torch

    from . import pipelines
    from .derivatives import atomic_save_nifti
    from .imaging import load_image

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    precision = resolve_run_precision(args.precision, args.device)
    try:
        backend = resolve_run_backend(args.backend, args.device, precision)
    except ValueError as exc:
        raise _Usage(str(exc)) from exc
    options = pipelines.RunOptions(device=args.device, tta=args.tta, folds=flatten_folds(args.folds),
                                   crop=args.crop, ensemble=args.ensemble, models_dir=args.models_dir,
                                   demo=args.demo, precision=precision, backend=backend)
    task, models = args.task_name, _guard(args, options)
    img = load_image(args.input)
    result = pipelines.segment(img, task=task, models=models, options=options)
    atomic_save_nifti(result.mask, args.output)
    if args.soft is not None and result.probseg is not None:
        atomic_save_nifti(result.probseg, args.soft)
    if args.cord is not None and result.cord is not None:
        atomic_save_nifti(result.cord, args.cord)
    if args.qc is not None:
        _write_qc(args.qc, args.input, task, img, result)
    log.info("%s: %d voxels in the mask (%s, %s, %s, %.1f s)", args.output,
             int(result.mask.dataobj[...].sum()), result.provenance.task, result.provenance.precision,
             backend, time.perf_counter() - start)
    return 0


def _guard(args: argparse.Namespace, options) -> dict:
    """The BIDS App's header guards before any voxel is read (docs/RELIABILITY.md, section 8): plausible
    geometry, a grid on every model, memory within ``--mem`` (or the machine's), the runner's own helper.
    Returns the task's located models (handed to the pipeline, so they are located and checked once)."""
    from .pipelines import locate_and_guard

    located, _ = locate_and_guard(args.input, args.task_name, options, models=args.models,
                                  budget=memory.memory_budget(args.mem, 1),
                                  allow_unusual=args.allow_unusual_geometry)
    return located


def _write_qc(folder: Path, source: Path, task: str, img, result) -> None:
    """QC pictures of the image and its mask: ``<name>_<task>_<view>.png`` in ``folder``."""
    from .derivatives import atomic_write_bytes
    from .qc import render_image_qc

    folder.mkdir(parents=True, exist_ok=True)
    for view, png in render_image_qc(img, result.mask, result.cord).items():
        atomic_write_bytes(folder / f"{nifti_stem(source.name)}_{task}_{view}.png", png)


def main(argv: list[str] | None = None) -> int:
    from .errors import ConfigError, CordlesionError, InputImageError

    parser = build_parser()
    args = parser.parse_args(subcommand_argv(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    prog = parser.prog
    if not args.input.exists():
        print(f"{prog}: error: {args.input}: no such file", file=sys.stderr)
        return EXIT["no_input"]
    try:
        fill_defaults(args)
        if args.ofolder is not None:  # SCT creates -ofolder
            args.ofolder.mkdir(parents=True, exist_ok=True)
        _check_paths(args)
        with stop_on_signals():  # SIGTERM / Ctrl-C: outputs are atomic, none is left partial
            return run(args)
    except Interrupted as exc:
        print(f"{prog}: interrupted by {exc.name}: stopped, no output left partial", file=sys.stderr)
        return exc.exit_code
    except _Missing as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT["no_input"]
    except _Usage as exc:
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT["usage"]
    except InputImageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT["data"]
    except (ConfigError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT["usage"] if isinstance(exc, ConfigError) else EXIT["failed"]
    except CordlesionError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT["failed"]


if __name__ == "__main__":
    sys.exit(main())
