"""How much memory one image takes in one worker, and how much the run may use.

The estimate is a function of values (the header's shape, voxel sizes and affine, each model's
:class:`ModelPlan`); the budget comes from ``--mem``, the SLURM allocation, the cgroup limit or
/proc/meminfo, read through a reader the caller may replace. ``guards`` runs the check before any voxel
is read (docs/RELIABILITY.md, section 8).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nibabel import orientations as nio

from .argtypes import GiB, MiB, parse_memory
from .errors import InputImageError
from .orientation import sct_to_axcodes

log = logging.getLogger(__name__)

F32 = 4


# ---- what a model allocates ----------------------------------------------------------------------
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
    backend: str = "torch"
    """``torch`` or ``openvino`` (``--backend``): OpenVINO holds one compiled fold beside the checkpoints."""


# ---- memory estimate ----------------------------------------------------------------------------
#: A worker before its first image: python, numpy/scipy/nibabel, torch and onnxruntime imported, the
#: run's plan; measured 430-470 MB VmHWM (docs/RELIABILITY.md, calibration), rounded up.
PROCESS_BASE_BYTES = 600 * MiB
#: Activations of one forward pass, per voxel of the batch's windows: ``A * first-stage features + B``.
#: Measured peaks (channels-last, GroupNorm, inference mode; bench/guards_calibration.py): 25-44
#: bytes per voxel and feature for the demo networks (4-6 features) and ResEnc-L / PlainConvUNet
#: (32 features, patches up to 64x128x128); 40 f + 64 covers every one by 10 % or more.
ACT_BYTES_PER_FEATURE, ACT_BYTES_PER_VOXEL = 40, 64
#: OpenVINO: a compiled fold holds its weights re-laid out for its kernels and the mapped IR weights file,
#: ~2.1x the fold's checkpoint (ResEnc-L: +822 MB for 387 MB, bench/RESULTS-openvino.md); each model's
#: predictor keeps its last fold compiled (the cord's while lesion_ms runs). Whole processes (ResEnc-L,
#: 240x240x40, bench/RESULTS.md issue 23): 1866 MB peak from the cache, 1590 MB converting; 2.5x covers
#: both. Its activations (254 MB for one 16x192x160 window) are below the torch formula's, used for both.
OV_COMPILED_PER_CHECKPOINT_BYTE = 2.5


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
    compiled = sum(int(OV_COMPILED_PER_CHECKPOINT_BYTE * p.weights_bytes / max(1, p.n_folds))
                   for p in plans if p.backend == "openvino" and p.kind == "nnunet")
    if compiled:
        fixed["compiled folds (OpenVINO)"] = compiled
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


__all__ = ["ModelPlan", "MemoryEstimate", "MemoryBudget", "PROCESS_BASE_BYTES", "ACT_BYTES_PER_FEATURE",
           "ACT_BYTES_PER_VOXEL", "OV_COMPILED_PER_CHECKPOINT_BYTE", "model_grid", "estimate_memory",
           "format_bytes", "memory_budget", "check_memory"]
