"""Guards run on an image's header before any work: plausible geometry, model grids, memory vs budget.

No single image may take a run down (issue 19): a readable header with 15 mm voxels asks the engine to
resample a 320x320x60 image to a ~1 mm grid of 10^10 voxels; micrometre voxels shrink it to nothing.
Both are refused here from the header alone, with one line naming the file, the figure and the limit
(docs/RELIABILITY.md, section 8). Everything here is a function of values (shape, voxel sizes, affine,
model plans); the only files read are plans.json / dataset.json of the models. The memory estimate and
budget are ``memory``'s.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputImageError, ModelError
from .memory import MemoryBudget, MemoryEstimate, ModelPlan, check_memory, estimate_memory, model_grid

log = logging.getLogger(__name__)

ALLOW_UNUSUAL_FLAG = "--allow-unusual-geometry"


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


# ---- model plans (read from the model folders) ---------------------------------------------------
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


def task_plans(models: Mapping[str, Any], folds: Sequence[int | str] | None = None,
               backend: str = "torch") -> list[ModelPlan]:
    """The plans of a job's models (``name -> LocatedModel`` or folder/file), read once per process. A
    model whose plans cannot be read is left out of the estimate (its own loading reports the error).
    ``backend``: the run's; anything but ``torch`` (``auto`` included) is estimated as OpenVINO's."""
    out = []
    for name, located in models.items():
        path = str(getattr(located, "path", located))
        try:
            plan = _plan(name, path, tuple(folds) if folds is not None else None)
            if backend != "torch" and plan.kind == "nnunet":  # one window per call
                plan = replace(plan, backend="openvino", batch_size=1)
            out.append(plan)
        except (ModelError, OSError) as exc:
            log.debug("%s: no memory estimate for this model (%s)", name, exc)
    return out


# ---- the checks, in order ------------------------------------------------------------------------
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


__all__ = ["ALLOW_UNUSUAL_FLAG", "GeometryLimits", "LIMITS", "plausibility", "check_geometry", "nnunet_plan",
           "legacy_plan", "task_plans", "check_model_grids", "check_image", "image_guards"]
