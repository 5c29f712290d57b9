"""Guards run on an image's header before any work: plausible geometry, memory estimate vs budget.

No single image may take a run down (issue 19): a readable header with 15 mm voxels asks the engine to
resample a 320x320x60 image to a ~1 mm grid of 10^10 voxels; micrometre voxels shrink it to nothing.
Both are refused here from the header alone, with one line naming the file, the figure and the limit
(docs/RELIABILITY.md, section 8). Everything here is a function of values (shape, voxel sizes, affine,
model plans, environment); the only files read are plans.json / dataset.json of the models and, for
the budget, the cgroup and /proc/meminfo texts through a reader the caller may replace.
"""
from __future__ import annotations

import errno
import functools
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nibabel import orientations as nio

from .errors import InputImageError, ModelError
from .orientation import sct_to_axcodes

log = logging.getLogger(__name__)

ALLOW_UNUSUAL_FLAG = "--allow-unusual-geometry"
F32 = 4
MiB, GiB = 2 ** 20, 2 ** 30


# ---- header plausibility ------------------------------------------------------------------------
@dataclass(frozen=True)
class GeometryLimits:
    """What a spinal cord MRI header can say (clinical and research scanners, in vivo)."""

    min_voxel_mm: float = 0.1
    """Finest voxel edge: in vivo cord MRI goes down to ~0.2-0.3 mm in-plane at 7 T."""
    max_voxel_mm: float = 10.0
    """Coarsest voxel edge: thick 2D slices are at most ~6-8 mm; 15-20 mm is a wrong header."""
    max_fov_mm: float = 800.0
    """Longest field of view along an axis: a whole-spine composite (skull base to coccyx ~750 mm)."""
    max_axis_voxels: int = 2048
    """Most voxels along one axis (a 1024-matrix at 0.2 mm is already 205 mm)."""


LIMITS = GeometryLimits()


def plausibility(shape: Sequence[int], zooms: Sequence[float], limits: GeometryLimits = LIMITS) -> list[str]:
    """Reasons why a header with this ``shape`` and voxel sizes ``zooms`` (mm) cannot be spinal cord
    MRI; empty when it can. Voxel sizes must already be positive and finite (``imaging`` checks)."""
    zooms = [float(z) for z in zooms[:3]]
    shape = [int(s) for s in shape[:3]]
    text = "x".join(f"{z:g}" for z in zooms)
    reasons = []
    if max(zooms) > limits.max_voxel_mm:
        reasons.append(f"voxel size {text} mm: {max(zooms):g} mm is coarser than the"
                       f" {limits.max_voxel_mm:g} mm any spinal cord MRI has")
    if min(zooms) < limits.min_voxel_mm:
        reasons.append(f"voxel size {text} mm: {min(zooms):g} mm is finer than the"
                       f" {limits.min_voxel_mm:g} mm any in vivo spinal cord MRI has")
    fov = [s * z for s, z in zip(shape, zooms, strict=True)]
    if max(fov) > limits.max_fov_mm:
        reasons.append(f"field of view {'x'.join(f'{f:.0f}' for f in fov)} mm: {max(fov):.0f} mm is longer"
                       f" than the {limits.max_fov_mm:g} mm of a whole spine")
    if max(shape) > limits.max_axis_voxels:
        reasons.append(f"shape {'x'.join(map(str, shape))}: {max(shape)} voxels along an axis, more than"
                       f" {limits.max_axis_voxels}")
    return reasons


def check_geometry(path: str | Path, shape: Sequence[int], zooms: Sequence[float], *,
                   allow_unusual: bool = False, limits: GeometryLimits = LIMITS) -> list[str]:
    """Refuse an implausible header with ``InputImageError("<path>: <reason> ...")``; with
    ``allow_unusual`` (``--allow-unusual-geometry``) log the reasons as a warning and return them."""
    reasons = plausibility(shape, zooms, limits)
    if reasons and not allow_unusual:
        raise InputImageError(f"{path}: {'; '.join(reasons)} (a wrong header? if the image really is like "
                              f"this, run with {ALLOW_UNUSUAL_FLAG})")
    for reason in reasons:
        log.warning("%s: %s (accepted: %s)", path, reason, ALLOW_UNUSUAL_FLAG)
    return reasons


# ---- model plans --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelPlan:
    """What a model's step allocates depends on: its grid, window, classes, channels, features."""

    name: str
    spacing: tuple[float | None, ...]
    """Target spacing (mm) in the network's axis order; legacy: (0.5, 0.5, None) on R-L, A-P, S-I."""
    patch_size: tuple[int, ...] = (48, 48, 48)
    n_classes: int = 2
    n_channels: int = 1
    base_features: int = 32
    """Features of the first stage (activations scale with it)."""
    n_folds: int = 1
    weights_bytes: int = 0
    """Checkpoint bytes of every fold used (held by the worker while it lives)."""
    orientation: str = "LPI"
    transpose_forward: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 2
    """Windows per forward pass (the engine runs 2 on the CPU)."""
    kind: str = "nnunet"
    """``nnunet`` or ``legacy`` (ONNX on a 0.5 mm in-plane grid, crops of 48^3)."""


def nnunet_plan(name: str, folder: str | Path, folds: Sequence[int | str] | None = None,
                batch_size: int = 2) -> ModelPlan:
    """The :class:`ModelPlan` of an nnU-Net v2 folder, from its JSON files (no checkpoint is read)."""
    from .engine.modelfolder import CHECKPOINTS, available_folds, read_json, resolve_folder
    from .engine.network import architecture

    folder = resolve_folder(folder)
    plans, ds = read_json(folder / "plans.json"), read_json(folder / "dataset.json")
    configuration = "3d_fullres" if "3d_fullres" in plans.get("configurations", {}) else \
        folder.name.rsplit("__", 1)[-1]
    try:
        config = plans["configurations"][configuration]
        features = architecture(plans, configuration)["arch_kwargs"]["features_per_stage"]
        spacing = tuple(float(s) for s in config["spacing"])
        patch = tuple(int(p) for p in config["patch_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{folder / 'plans.json'}: cannot read spacing, patch and features ({exc})") from exc
    chosen = list(folds) if folds is not None else available_folds(folder)
    ckpts = [folder / f"fold_{f}" / c for f in chosen for c in CHECKPOINTS[:1]]
    return ModelPlan(
        name=name, spacing=spacing, patch_size=patch, n_classes=len(ds.get("labels") or {}) or 2,
        n_channels=len(ds.get("channel_names") or ds.get("modality") or {}) or 1,
        base_features=int(features[0]), n_folds=max(1, len(chosen)),
        weights_bytes=sum(p.stat().st_size for p in ckpts if p.is_file()),
        orientation=str(ds.get("image_orientation", "LPI")),
        transpose_forward=tuple(int(i) for i in plans.get("transpose_forward", (0, 1, 2))),
        batch_size=batch_size)


def legacy_plan(name: str, onnx_file: str | Path) -> ModelPlan:
    """The :class:`ModelPlan` of a legacy ``sct_deepseg_lesion`` ONNX model (``legacy.py``)."""
    path = Path(onnx_file)
    return ModelPlan(name=name, spacing=(0.5, 0.5, None), base_features=16,
                     weights_bytes=path.stat().st_size if path.is_file() else 0, batch_size=1, kind="legacy")


@functools.lru_cache(maxsize=32)
def _plan(name: str, path: str, folds: tuple | None) -> ModelPlan:
    if path.endswith(".onnx"):
        return legacy_plan(name, path)
    return nnunet_plan(name, path, folds)


def task_plans(models: Mapping[str, Any], folds: Sequence[int | str] | None = None) -> list[ModelPlan]:
    """The plans of a job's models (``name -> LocatedModel`` or folder/file), read once per process. A
    model whose plans cannot be read is left out of the estimate (its own loading reports the error)."""
    out = []
    for name, located in models.items():
        path = str(getattr(located, "path", located))
        try:
            out.append(_plan(name, path, tuple(folds) if folds is not None else None))
        except (ModelError, OSError) as exc:
            log.debug("%s: no memory estimate for this model (%s)", name, exc)
    return out


# ---- memory estimate ----------------------------------------------------------------------------
#: A worker before its first image: python, numpy/scipy/nibabel, torch and onnxruntime imported, the
#: run's plan; measured 430-470 MB VmHWM (docs/RELIABILITY.md, calibration), rounded up.
PROCESS_BASE_BYTES = 600 * MiB
#: Activations of one forward pass, per voxel of the batch's windows: ``A * first-stage features + B``.
#: Measured peaks (channels-last, GroupNorm, inference mode; bench/guards_calibration.py): 25-44
#: bytes per voxel and feature for the demo networks (4-6 features) and ResEnc-L / PlainConvUNet
#: (32 features, patches up to 64x128x128); 40 f + 64 covers every one by 10 % or more.
ACT_BYTES_PER_FEATURE, ACT_BYTES_PER_VOXEL = 40, 64


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one image in one worker, and where it peaks."""

    total_bytes: int
    model: str
    """The model whose step peaks."""
    grid: tuple[int, ...]
    """That model's grid (the image resampled to its spacing)."""
    spacing: tuple[float | None, ...]
    parts: dict[str, int] = field(default_factory=dict)


def model_grid(shape: Sequence[int], zooms: Sequence[float], affine: np.ndarray,
               plan: ModelPlan) -> tuple[int, ...]:
    """The image's shape on the model's grid, as the engine computes it (``round(n * zoom / spacing)``,
    axes reoriented to the model's orientation, reversed, ``transpose_forward``); legacy: R-L and A-P
    at 0.5 mm, S-I native. Can hold 0 (voxels far finer than the model's spacing)."""
    ornt = nio.io_orientation(np.asarray(affine, float))
    world = [int(w) for w in ornt[:, 0]]
    if plan.kind == "legacy":
        return tuple(int(round(n * z / plan.spacing[w])) if plan.spacing[w] else int(n)
                     for n, z, w in zip(shape, zooms, world, strict=True))
    order = [int(w) for w in nio.axcodes2ornt(sct_to_axcodes(plan.orientation))[:, 0]]
    grid = [0, 0, 0]
    for n, z, w in zip(shape, zooms, world, strict=True):
        zyx = 2 - order.index(w)
        k = list(plan.transpose_forward).index(zyx)
        grid[k] = int(round(float(n) * float(z) / float(plan.spacing[k])))
    return tuple(grid)


def _nnunet_peak(v: int, grid: Sequence[int], plan: ModelPlan) -> dict[str, int]:
    """The largest of the engine's phases for one model (see ``engine/nnunet.py``): bytes by name."""
    n = int(np.prod(grid, dtype=np.float64))
    padded = int(np.prod([max(g, p) for g, p in zip(grid, plan.patch_size, strict=True)], dtype=np.float64))
    c, k = plan.n_channels, plan.n_classes
    window = plan.batch_size * int(np.prod(plan.patch_size))
    phases = {
        # spline prefilter in float64 on the input grid, resampled copy, the oriented/cropped copies
        "resample": v * 8 * c + 2 * n * F32 * c + 2 * v * F32 * c,
        # resampled + padded image, Gaussian weight sum, the logits of every class (2 with >1 fold),
        # one forward pass
        "windows": 2 * n * F32 * c + n * F32 + k * padded * F32 * (2 if plan.n_folds > 1 else 1)
        + window * (ACT_BYTES_PER_FEATURE * plan.base_features + ACT_BYTES_PER_VOXEL),
        # logits still held while resampled back to the input grid, then softmax
        "back to input grid": n * F32 * (c + 1) + k * n * F32 + 2 * k * v * F32,
        # probabilities on the input grid: uncropped, reoriented copy, argmax (int64)
        "probabilities": 3 * k * v * F32 + v * 8,
    }
    name = max(phases, key=phases.get)
    return {name: phases[name]}


def _legacy_peak(v: int, grid: Sequence[int], plan: ModelPlan) -> dict[str, int]:
    """Image and cord mask resampled in-plane to 0.5 mm (float32, plus the float64 of the mask path)."""
    n = int(np.prod(grid, dtype=np.float64))
    return {"legacy 0.5 mm grid": 4 * n * F32 + 2 * v * F32}


def estimate_memory(shape: Sequence[int], zooms: Sequence[float], affine: np.ndarray,
                    plans: Sequence[ModelPlan]) -> MemoryEstimate:
    """Peak bytes one worker needs for this image: its baseline and every model's weights, the image
    and the task's outputs on the input grid, plus the largest step of the models (they run one after
    another). Raises ValueError when the image has no voxel on some model's grid."""
    v = int(np.prod([int(s) for s in shape[:3]], dtype=np.float64))
    fixed = {"worker": PROCESS_BASE_BYTES, "weights": sum(p.weights_bytes for p in plans),
             "image and outputs": 4 * v * F32}
    best: tuple[int, ModelPlan, tuple[int, ...], dict[str, int]] | None = None
    for plan in plans:
        grid = model_grid(shape[:3], zooms[:3], affine, plan)
        if min(grid) < 1:
            raise ValueError(f"{plan.name}: the image is {'x'.join(map(str, grid))} voxels on its grid")
        peak = (_legacy_peak if plan.kind == "legacy" else _nnunet_peak)(v, grid, plan)
        if best is None or sum(peak.values()) > best[0]:
            best = (sum(peak.values()), plan, grid, peak)
    if best is None:
        return MemoryEstimate(sum(fixed.values()), "", (), (), fixed)
    _, plan, grid, peak = best
    parts = {**fixed, **{f"{plan.name} {k}": b for k, b in peak.items()}}
    return MemoryEstimate(sum(parts.values()), plan.name, grid, plan.spacing, parts)


def format_bytes(n: float) -> str:
    """``1.5 GB``, ``730 MB`` (binary units, as SLURM and free(1) count)."""
    if n >= 1000 * GiB:
        return f"{n / 2 ** 40:.1f} TB"
    if n >= GiB:
        return f"{n / GiB:.1f} GB"
    return f"{n / MiB:.0f} MB"


# ---- budget -------------------------------------------------------------------------------------
_MEM_UNITS = {"": MiB, "K": 2 ** 10, "M": MiB, "G": GiB, "T": 2 ** 40}
_MEM_RE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """``--mem`` in bytes: ``8G``, ``8GB``, ``8GiB``, ``8000M``, ``1.5T``; a bare number is megabytes, as
    fMRIPrep's ``--mem`` and SLURM's ``--mem`` read it. ValueError on anything else."""
    m = _MEM_RE.fullmatch(str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a memory size (e.g. 8G, 8GB, 8000MB; a bare number is MB)")
    return int(float(m.group(1)) * _MEM_UNITS[m.group(2).upper()])


def mem_arg(text: str) -> str:
    """argparse ``type=`` for ``--mem``: the text itself once :func:`parse_memory` accepts it."""
    import argparse

    try:
        parse_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return str(text).strip()


def seconds_arg(text: str) -> float:
    """argparse ``type=`` for ``--image-timeout``: a positive number of seconds."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


@dataclass(frozen=True)
class MemoryBudget:
    """Memory the run may use, where that figure came from, and how many workers share it."""

    total_bytes: int
    source: str
    nprocs: int = 1

    @property
    def per_worker_bytes(self) -> int:
        return self.total_bytes // max(1, self.nprocs)

    def describe(self) -> str:
        share = f"{format_bytes(self.per_worker_bytes)} per worker" if self.nprocs > 1 else "the limit"
        return f"{share} ({format_bytes(self.total_bytes)} from {self.source}" + \
            (f", shared by --nprocs {self.nprocs})" if self.nprocs > 1 else ")")


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


CGROUP_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
_UNLIMITED = 2 ** 60  # cgroup v1 writes ~2^63 for "no limit"


def _slurm_bytes(env: Mapping[str, str]) -> tuple[int, str] | None:
    try:
        if env.get("SLURM_MEM_PER_NODE"):
            return parse_memory(env["SLURM_MEM_PER_NODE"]), f"SLURM_MEM_PER_NODE={env['SLURM_MEM_PER_NODE']}"
        if env.get("SLURM_MEM_PER_CPU") and env.get("SLURM_CPUS_ON_NODE"):
            cpus = int(env["SLURM_CPUS_ON_NODE"])
            return (parse_memory(env["SLURM_MEM_PER_CPU"]) * cpus,
                    f"SLURM_MEM_PER_CPU={env['SLURM_MEM_PER_CPU']} x SLURM_CPUS_ON_NODE={cpus}")
    except ValueError:
        log.warning("SLURM memory variables not understood; ignoring them")
    return None


def _cgroup_bytes(read: Callable[[str], str | None]) -> tuple[int, str] | None:
    for path in CGROUP_FILES:
        text = (read(path) or "").strip()
        if text.isdigit() and 0 < int(text) < _UNLIMITED:
            return int(text), f"the cgroup limit {path}"
    return None


def _meminfo_bytes(read: Callable[[str], str | None]) -> tuple[int, str] | None:
    fields = {}
    for line in (read("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        if rest.split() and rest.split()[0].isdigit():
            fields[key] = int(rest.split()[0]) * 1024
    for key in ("MemAvailable", "MemTotal"):
        if fields.get(key):
            return fields[key], f"{key} in /proc/meminfo"
    return None


def memory_budget(mem_arg: str | None, nprocs: int = 1, env: Mapping[str, str] | None = None,
                  read: Callable[[str], str | None] = _read_text) -> MemoryBudget | None:
    """The run's budget: ``--mem`` if given; else the smallest of the SLURM allocation
    (``SLURM_MEM_PER_NODE`` MB, or ``SLURM_MEM_PER_CPU`` x ``SLURM_CPUS_ON_NODE``) and the cgroup
    limit; else MemAvailable (MemTotal) of /proc/meminfo. None when nothing says (no check then)."""
    if mem_arg:
        return MemoryBudget(parse_memory(mem_arg), f"--mem {mem_arg}", nprocs)
    env = os.environ if env is None else env
    found = [b for b in (_slurm_bytes(env), _cgroup_bytes(read)) if b is not None]
    if not found:
        found = [b for b in (_meminfo_bytes(read),) if b is not None]
    if not found:
        return None
    total, source = min(found)
    return MemoryBudget(total, source, nprocs)


def check_memory(path: str | Path, estimate: MemoryEstimate, budget: MemoryBudget | None) -> None:
    """Refuse an image whose estimate exceeds a worker's share of the budget, naming both figures."""
    if budget is None or estimate.total_bytes <= budget.per_worker_bytes:
        return
    grid = "x".join(map(str, estimate.grid))
    spacing = "x".join("native" if s is None else f"{s:g}" for s in estimate.spacing)
    raise InputImageError(
        f"{path}: needs about {format_bytes(estimate.total_bytes)} of memory ({grid} voxels on the "
        f"{estimate.model} model's {spacing} mm grid), more than {budget.describe()}; check the header's "
        f"voxel sizes, or give it more memory (--mem, fewer --nprocs)")


def check_model_grids(path: str | Path, shape: Sequence[int], zooms: Sequence[float], affine: np.ndarray,
                      plans: Sequence[ModelPlan]) -> None:
    """Refuse an image with less than one voxel along an axis of some model's grid (the resampling would
    divide by zero): micrometre voxels in a millimetre header, whatever ``--allow-unusual-geometry``."""
    for plan in plans:
        grid = model_grid(shape[:3], zooms[:3], affine, plan)
        if min(grid) < 1:
            spacing = "x".join("native" if s is None else f"{s:g}" for s in plan.spacing)
            zoom_text = "x".join(f"{z:g}" for z in zooms[:3])
            raise InputImageError(
                f"{path}: on the {plan.name} model's {spacing} mm grid the image is "
                f"{'x'.join(map(str, grid))} voxels (voxel size {zoom_text} mm, field of view "
                f"{'x'.join(f'{n * z:.3g}' for n, z in zip(shape, zooms, strict=False))} mm): too small to "
                f"segment; check the header's voxel sizes (mm)")


def check_image(path: str | Path, img: Any, plans: Sequence[ModelPlan], *, budget: MemoryBudget | None,
                allow_unusual: bool = False) -> MemoryEstimate:
    """:func:`image_guards` on a loaded header (``nib.load`` proxy: no voxel is read): its shape (a
    trailing 4th dimension of 1 dropped), header voxel sizes (as the engine reads them) and affine."""
    shape = tuple(int(s) for s in img.shape[:3])
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return image_guards(path, shape, zooms, img.affine, plans, budget=budget, allow_unusual=allow_unusual)


def image_guards(path: str | Path, shape: Sequence[int], zooms: Sequence[float], affine: np.ndarray,
                 plans: Sequence[ModelPlan], *, budget: MemoryBudget | None,
                 allow_unusual: bool = False) -> MemoryEstimate:
    """Every header check of an image, cheapest first: plausibility, model grids, memory. Returns the
    estimate (logged by the caller); raises InputImageError with the first refusal."""
    check_geometry(path, shape, zooms, allow_unusual=allow_unusual)
    check_model_grids(path, shape, zooms, affine, plans)
    estimate = estimate_memory(shape, zooms, affine, plans)
    check_memory(path, estimate, budget)
    return estimate


# ---- failure reasons ----------------------------------------------------------------------------
_OS_REASONS = {
    errno.ENOSPC: "no space left on device (free some space in output_dir or the work dir, then re-run)",
    errno.EDQUOT: "disk quota exceeded (free some space or raise the quota, then re-run)",
    errno.EACCES: "permission denied (check the owner and mode of the file or folder)",
    errno.EPERM: "operation not permitted (check the owner and mode of the file or folder)",
    errno.EROFS: "the file system is read-only (output_dir and the work dir must be writable)",
    errno.EIO: "input/output error from the storage (a failing disk or network file system?)",
    errno.ENOMEM: "out of memory",
}


def failure_reason(exc: BaseException, path: str | Path) -> str:
    """The sentence a user reads for an image that failed with ``exc``: our own errors keep their
    one-line message; every other type maps to a sentence naming ``path`` and what to do. Never the
    raw text of a foreign exception (the traceback goes to the image's log)."""
    from .errors import CordlesionError

    if isinstance(exc, CordlesionError):
        return str(exc).splitlines()[0] if str(exc) else f"{path}: {type(exc).__name__}"
    kind = type(exc).__name__
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _is_oom(exc)):
        where = "the GPU" if "cuda" in str(exc).lower() else "the worker"
        hint = "--mem, fewer --nprocs" + (", or --device cpu" if where == "the GPU" else "")
        return f"{path}: {where} ran out of memory on this image; give it more ({hint}) or check its voxels"
    if isinstance(exc, (ZeroDivisionError, FloatingPointError, OverflowError)):
        return (f"{path}: the image's geometry cannot be resampled to the model's grid ({kind}); check the "
                f"header's voxel sizes")
    if isinstance(exc, OSError):
        code = exc.errno or -1
        reason = _OS_REASONS.get(code, f"system error {errno.errorcode.get(code, kind)}")
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return f"{path}: {reason}{where}"
    if isinstance(exc, RuntimeError) and _raised_in(exc, "torch"):
        return f"{path}: the network failed on this image (torch {kind}; see the log for details)"
    decoding = isinstance(exc, (ValueError, IndexError, TypeError, KeyError, EOFError))
    if (decoding or type(exc).__module__.startswith("nibabel")) and _raised_in(exc, "nibabel"):
        return f"{path}: nibabel cannot interpret this image's header or data ({kind}); check the file"
    return f"{path}: unexpected error ({kind}); see the log for the traceback and please report it"


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def _raised_in(exc: BaseException, package: str) -> bool:
    """Whether ``exc`` is a class of ``package`` or was raised inside one of its Python frames."""
    if type(exc).__module__.split(".")[0] == package:
        return True
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


__all__ = ["ALLOW_UNUSUAL_FLAG", "GeometryLimits", "LIMITS", "ModelPlan", "MemoryEstimate", "MemoryBudget",
           "plausibility", "check_geometry", "nnunet_plan", "legacy_plan", "task_plans", "model_grid",
           "estimate_memory", "check_image", "mem_arg", "seconds_arg",
           "parse_memory", "memory_budget", "check_memory", "check_model_grids", "image_guards",
           "format_bytes", "failure_reason"]
