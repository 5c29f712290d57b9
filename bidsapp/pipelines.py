"""Tasks as compositions of engines and imaging steps: one call per image, no files written.

``segment(img, task=..., models=...)`` returns a :class:`SegmentationResult` on the exact grid of
``img``. Tasks:

- ``lesion_ms``: the contrast-agnostic lesion model; mask = voxels where the lesion class wins,
  probseg = p(lesion). With ``crop`` (default ``settings.LESION_MS_CROP_DEFAULT``, on)
  ``spinalcord`` runs first; the lesion model then runs on the whole image's preprocessing but only
  in the sliding windows that overlap a box around the cord (``LESION_CROP_MARGIN_MM`` in-plane, the
  cord's extent plus ``LESION_CROP_SI_MM`` along S-I): inside the box the result IS the whole
  image's, outside it is zero (bench/RESULTS-crop.md); the cord mask is returned too; no cord
  found falls back to the whole image with a warning;
- ``spinalcord``: the contrast-agnostic cord model; mask = cord class wins, probseg = p(cord);
- ``lesion_ms_mp2rage``: ``spinalcord`` first, crop around the cord (dilated 30 mm in-plane and 5
  slices along the axis closest to S-I, as SCT's documentation asks), the MP2RAGE model on the
  crop, results put back on the full grid; the cord mask is returned too;
- ``t2``, ``t2_ax``, ``t2s``: legacy ONNX models (``legacy.py``), with the cord from ``spinalcord``;
- ``nnunet``: any nnU-Net v2 folder given as is; mask = any foreground class wins.

``models`` maps model names (``lesion_ms``, ``spinalcord``, ...) to a ``models.LocatedModel`` or a
folder; names it lacks are found with ``bidsapp.models.locate(name, models_dir=, demo=)``.
Predictors are cached per process (one per model folder, folds, device, TTA and ensemble).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from .engine import NnUNetModel, NnUNetPredictor, resolve_device
from .errors import ConfigError
from .imaging import like
from .settings import LESION_MS_CROP_DEFAULT

log = logging.getLogger(__name__)

NNUNET_TASKS = ("lesion_ms", "spinalcord", "lesion_ms_mp2rage", "nnunet")
LEGACY_TASKS = ("t2", "t2_ax", "t2s")
TASKS = NNUNET_TASKS + LEGACY_TASKS
#: models each task runs, in order (the runner locates them up front with the same table)
TASK_MODELS: dict[str, tuple[str, ...]] = {
    "lesion_ms": ("lesion_ms",), "spinalcord": ("spinalcord",), "nnunet": ("nnunet",),
    "lesion_ms_mp2rage": ("spinalcord", "lesion_ms_mp2rage"),
    "t2": ("spinalcord", "t2"), "t2_ax": ("spinalcord", "t2_ax"), "t2s": ("spinalcord", "t2s"),
}
CROP_MARGIN_MM = 30.0      # in-plane dilation of the cord box before the MP2RAGE model
CROP_MARGIN_SLICES = 5     # along the cord (the array axis closest to S-I)
# lesion_ms box around the cord: the result inside it is the whole image's whatever the margins, so
# they only say how far from the cord lesions are looked for (lesions are in the cord; the margin
# absorbs an under-segmented cord) and how many windows run
LESION_CROP_MARGIN_MM = 10.0   # in-plane, around the cord's bounding box
LESION_CROP_SI_MM = 15.0       # along S-I, beyond the cord's extent
CORD_LOCATE_TILE_STEP = 1.0    # window step of the cord pass that places the lesion_ms box
_CLASS_HINTS = {"lesion_ms": ("lesion",), "lesion_ms_mp2rage": ("lesion",), "spinalcord": ("cord", "sc")}


@dataclass
class SegmentationResult:
    """Outputs on the input grid: ``mask`` uint8 0/1, ``probseg`` float32 in [0, 1] or None, ``cord``
    uint8 0/1 or None (the cord mask a task used), ``provenance`` (what produced them)."""

    mask: nib.Nifti1Image
    probseg: nib.Nifti1Image | None
    cord: nib.Nifti1Image | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


# ---- models -----------------------------------------------------------------------------------------
def _resolve(name: str, models: Mapping[str, Any] | None, models_dir: str | Path | None, demo: bool) -> Any:
    """A LocatedModel-like object (``path``, ``release``, ``demo``, ``sha256``) or a plain folder."""
    if models and name in models:
        return models[name]
    from . import models as registry  # the registry is only needed when something is not given

    return registry.locate(name, models_dir=models_dir, demo=demo)


def lesion_ms_crops(crop: bool | None) -> bool:
    """Whether ``lesion_ms`` runs on the box around the cord (``None``: ``LESION_MS_CROP_DEFAULT``)."""
    return LESION_MS_CROP_DEFAULT if crop is None else bool(crop)


def _lesion_box_rule() -> dict[str, Any]:
    """How the ``lesion_ms`` box is made and run (read at call time: tests and benches change the margins)."""
    return {"margin_mm": LESION_CROP_MARGIN_MM, "margin_si_mm": LESION_CROP_SI_MM, "windows": "image",
            "cord_tile_step": CORD_LOCATE_TILE_STEP}


def crop_parameters(crop: bool | None) -> dict[str, Any] | None:
    """What the cord box changes in a ``lesion_ms`` result (for up-to-date checks), None when off."""
    return _lesion_box_rule() if lesion_ms_crops(crop) else None


def task_models(task: str, *, crop: bool | None = None) -> tuple[str, ...]:
    """The models a task runs, in order: ``lesion_ms`` needs ``spinalcord`` only when it crops
    (``crop=None``: ``LESION_MS_CROP_DEFAULT``)."""
    if task == "lesion_ms" and lesion_ms_crops(crop):
        return ("spinalcord", "lesion_ms")
    return TASK_MODELS.get(task, (task,))


def _identity(located: Any) -> dict[str, Any]:
    if isinstance(located, (str, Path)):
        return {"path": str(located), "release": None, "demo": False, "sha256": {}}
    return {"path": str(located.path), "release": located.release, "demo": bool(located.demo),
            "sha256": dict(located.sha256)}


def _path(located: Any) -> Path:
    return Path(located) if isinstance(located, (str, Path)) else Path(located.path)


@lru_cache(maxsize=8)
def _cached_predictor(folder: str, folds: tuple | None, device: str, tta: bool,
                      ensemble: str) -> NnUNetPredictor:
    model = NnUNetModel.load(folder, folds=list(folds) if folds is not None else None)
    return NnUNetPredictor(model, device=device, tta=tta, ensemble=ensemble)


def get_predictor(folder: str | Path, *, folds: Sequence[int | str] | None = None, device: str = "auto",
                  tta: bool = False, ensemble: str = "logits") -> NnUNetPredictor:
    """The process-wide predictor for this model folder and settings (built on first use)."""
    folds_key = tuple(f if f == "all" else int(f) for f in folds) if folds is not None else None
    return _cached_predictor(str(Path(folder).resolve()), folds_key, str(resolve_device(device)), bool(tta),
                             ensemble)


def class_index(labels: Mapping[str, int], task: str) -> int:
    """The label value of the task's foreground class: the label whose name matches the task (e.g.
    "lesion"), else the only foreground label."""
    hints = _CLASS_HINTS.get(task, ())
    for name, value in labels.items():
        if value != 0 and any(h == name.lower() or h in name.lower().split("_") or name.lower().startswith(h)
                              for h in hints):
            return int(value)
    foreground = [int(v) for v in labels.values() if v != 0]
    if len(foreground) == 1:
        return foreground[0]
    raise ConfigError(f"cannot tell which of the labels {dict(labels)} is the {task} class")


# ---- nnU-Net tasks ----------------------------------------------------------------------------------
def _run_nnunet(img: nib.Nifti1Image, task: str, located: Any, settings: dict,
                roi: tuple[slice, ...] | None = None,
                tile_step: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mask bool, probability float32) of the task's class on the grid of ``img``; with ``roi`` only
    the windows overlapping that box run (exact inside it, background outside); ``tile_step``: the
    window step (default nnU-Net's 0.5)."""
    predictor = get_predictor(_path(located), folds=settings["folds"], device=settings["device"],
                              tta=settings["tta"], ensemble=settings["ensemble"])
    probs = predictor.predict(img, roi=roi, tile_step=tile_step)
    settings.setdefault("folds_used", {})[task] = list(predictor.model.folds)
    if task == "nnunet":  # any foreground class wins
        return probs.argmax(0) != 0, 1.0 - probs[0]
    idx = class_index(predictor.model.labels, task)
    return probs.argmax(0) == idx, probs[idx]


def _si_axis(affine: np.ndarray) -> int:
    """The array axis whose direction is closest to S-I."""
    rot = np.asarray(affine)[:3, :3]
    cos = np.abs(rot[2]) / np.linalg.norm(rot, axis=0)
    return int(np.argmax(cos))


def cord_crop_box(cord: np.ndarray, affine: np.ndarray, *, margin_mm: float = CROP_MARGIN_MM,
                  margin_slices: int = CROP_MARGIN_SLICES) -> tuple[slice, ...] | None:
    """The cord's bounding box dilated by ``margin_mm`` in-plane and ``margin_slices`` along the
    axis closest to S-I, clipped to the image; None when there is no cord."""
    hit = np.argwhere(cord)
    if hit.size == 0:
        return None
    si = _si_axis(affine)
    zooms = voxel_sizes(affine)
    box = []
    for axis in range(3):
        margin = margin_slices if axis == si else int(math.ceil(margin_mm / float(zooms[axis])))
        lo = max(int(hit[:, axis].min()) - margin, 0)
        hi = min(int(hit[:, axis].max()) + 1 + margin, cord.shape[axis])
        box.append(slice(lo, hi))
    return tuple(box)


def crop_image(img: nib.Nifti1Image, box: tuple[slice, ...]) -> nib.Nifti1Image:
    """The sub-image ``img[box]`` with its affine shifted so every voxel keeps its position."""
    return img.slicer[box]


def _lesion_crop_box(cord: np.ndarray, affine: np.ndarray) -> tuple[slice, ...] | None:
    si = _si_axis(affine)
    slices = int(math.ceil(LESION_CROP_SI_MM / float(voxel_sizes(affine)[si])))
    return cord_crop_box(cord, affine, margin_mm=LESION_CROP_MARGIN_MM, margin_slices=slices)


def touches_box(mask: np.ndarray, box: tuple[slice, ...], shape: Sequence[int]) -> bool:
    """Whether ``mask`` (the crop's array) reaches a face of ``box`` that is not the image border,
    i.e. a lesion may continue outside the crop."""
    for axis, s in enumerate(box):
        lo = np.take(mask, 0, axis=axis).any() and s.start > 0
        hi = np.take(mask, -1, axis=axis).any() and s.stop < shape[axis]
        if lo or hi:
            return True
    return False


def _segment_around_cord(img: nib.Nifti1Image, task: str, models: Any, settings: dict,
                         box_of: Callable[[np.ndarray, np.ndarray], tuple[slice, ...] | None],
                         *, whole_image_context: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``spinalcord``, then ``task`` on the box ``box_of(cord, affine)``, on the full grid (zeros outside
    the box).

    ``whole_image_context`` (``lesion_ms``): the image is preprocessed whole and only the sliding windows
    that overlap the box run, so inside the box the result IS the whole image's. Otherwise
    (``lesion_ms_mp2rage``, trained on crops) the box is cut out and segmented as an image of its own,
    as SCT documents. No cord found: the whole image is segmented, with a warning. The box (or None) and
    whether the mask touches it go into ``settings`` for the provenance.
    """
    # for lesion_ms the cord only places the box: windows at step 1 (no overlap to blend) find it
    # for a third of the work; the mp2rage model's input IS the crop, so it gets SCT's cord mask
    step = CORD_LOCATE_TILE_STEP if whole_image_context else None
    cord, _ = _run_nnunet(img, "spinalcord", models["spinalcord"], settings, tile_step=step)
    box = box_of(cord, img.affine)
    if box is None:
        log.warning("%s: no spinal cord found; segmenting the whole image instead of a crop", task)
        mask, prob = _run_nnunet(img, task, models[task], settings)
        settings["crop"] = None
        return mask, prob, cord
    if whole_image_context:
        mask, prob = _run_nnunet(img, task, models[task], settings, roi=box)
        sub_mask = mask[box]
    else:
        sub_mask, sub_prob = _run_nnunet(crop_image(img, box), task, models[task], settings)
        mask = np.zeros(img.shape[:3], bool)
        prob = np.zeros(img.shape[:3], np.float32)
        mask[box], prob[box] = sub_mask, sub_prob
    touches = touches_box(sub_mask, box, img.shape[:3])
    if touches:
        log.warning("%s: the lesion mask touches the box %s around the cord; lesions may continue outside "
                    "it", task, [[s.start, s.stop] for s in box])
    settings["crop"] = [[s.start, s.stop] for s in box]
    settings["crop_touches"] = touches
    return mask, prob, cord


# ---- entry point ------------------------------------------------------------------------------------
def segment(img: nib.Nifti1Image, *, task: str, models: Mapping[str, Any] | None = None,
            device: str = "auto", tta: bool = False, folds: Sequence[int | str] | None = None,
            crop: bool | None = None, ensemble: str = "logits", models_dir: str | Path | None = None,
            demo: bool = False) -> SegmentationResult:
    """Segment one image with one task; every output is on the exact grid of ``img``.

    ``crop``: ``lesion_ms`` runs on the box around the cord with ``crop=True`` (None:
    ``LESION_MS_CROP_DEFAULT``, on); ``lesion_ms_mp2rage`` always crops (``False`` is refused: the
    model was trained on crops);
    other tasks ignore it.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    if crop is False and task == "lesion_ms_mp2rage":
        raise ConfigError("lesion_ms_mp2rage needs the crop around the cord (trained on cropped images)")
    start = time.perf_counter()
    cropping = task == "lesion_ms" and lesion_ms_crops(crop)
    located = {name: _resolve(name, models, models_dir, demo) for name in task_models(task, crop=cropping)}
    if task in LEGACY_TASKS:
        return _segment_legacy(img, task, located, device, start)
    settings = {"folds": folds, "device": str(resolve_device(device)), "tta": tta, "ensemble": ensemble}
    cord = None
    if task == "lesion_ms_mp2rage":
        mask, prob, cord = _segment_around_cord(img, task, located, settings, cord_crop_box,
                                                 whole_image_context=False)
    elif cropping:
        mask, prob, cord = _segment_around_cord(img, task, located, settings, _lesion_crop_box,
                                                 whole_image_context=True)
    else:
        mask, prob = _run_nnunet(img, task, located[task], settings)
    provenance = {
        "task": task, "engine": "bidsapp.engine.nnunet (torch)",
        "models": {name: _identity(m) for name, m in located.items()},
        "folds": settings.get("folds_used", {}), "tta": bool(tta), "ensemble": ensemble,
        "threshold": "argmax (class with the highest probability wins)",
        "device": settings["device"], "runtime_s": round(time.perf_counter() - start, 3),
    }
    if task == "lesion_ms_mp2rage":
        provenance["crop"] = {"box_voxels": settings.get("crop"), "margin_mm": CROP_MARGIN_MM,
                              "margin_slices": CROP_MARGIN_SLICES,
                              "mask_touches_box": settings.get("crop_touches", False)}
    elif task == "lesion_ms":  # box None: no crop asked, or no cord found (whole image segmented)
        provenance["crop"] = {"enabled": cropping, "box_voxels": settings.get("crop"), **_lesion_box_rule(),
                              "mask_touches_box": settings.get("crop_touches", False)}
    return SegmentationResult(
        mask=like(img, mask.astype(np.uint8), np.uint8),
        probseg=like(img, np.clip(prob, 0.0, 1.0).astype(np.float32), np.float32),
        cord=like(img, cord.astype(np.uint8), np.uint8) if cord is not None else None,
        provenance=provenance)


def _segment_legacy(img: nib.Nifti1Image, task: str, located: Mapping[str, Any], device: str,
                    start: float) -> SegmentationResult:
    """Dispatch point for the legacy ONNX models (``legacy.py``): cord from ``spinalcord`` first."""
    from .legacy import segment_legacy

    settings = {"folds": None, "device": str(resolve_device(device)), "tta": False, "ensemble": "logits"}
    cord, _ = _run_nnunet(img, "spinalcord", located["spinalcord"], settings)
    cord_img = like(img, cord.astype(np.uint8), np.uint8)
    result = segment_legacy(img, task=task, model=_path(located[task]), cord=cord_img,
                            device=settings["device"])
    result.provenance = {**result.provenance,
                         "models": {name: _identity(m) for name, m in located.items()},
                         "device": settings["device"], "runtime_s": round(time.perf_counter() - start, 3)}
    return result
