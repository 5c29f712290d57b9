"""Tasks as compositions of engines and imaging steps: one call per image, no files written.

``segment(img, task=..., models=..., options=RunOptions(...))`` returns a :class:`SegmentationResult`
on the exact grid of ``img``, with a typed :class:`Provenance`. What a task runs and how (its models,
class, ensembling, window step, box around the cord) is read from its row of the task table
(``bidsapp.tasks``); this module only carries the rows out:

- nnU-Net tasks (``lesion_ms``, ``spinalcord``, ``lesion_ms_mp2rage``, ``nnunet``): mask = voxels the
  task's fold ensemble gives its class (``nnunet``: any foreground class), probseg = its soft map; the
  ensemble and the post-processing are the row's (``lesion_ms``: SCT 7.3's vote; ``spinalcord``: the
  largest object, SCT's); every cord mask written or used is the ``spinalcord`` task's own (its window
  step, its largest object, all folds, no TTA: SCT's ``sct_deepseg spinalcord``);
- a model folder holding ``crop_metadata.json`` (a release trained on crops) runs on the cord's bounding
  box padded as the file says (``postprocess.padded_box``; the ``sc_crop`` detector's box when that
  package is installed), the result put back on the full grid;
- a task that crops runs ``spinalcord`` first and the task on the box around the cord (its
  :class:`~bidsapp.tasks.BoxRule`): ``windows="image"`` (``lesion_ms``): the image is preprocessed whole
  and only the sliding windows that overlap the box run, so inside the box the result IS the whole
  image's, zero outside (bench/RESULTS-crop.md); ``windows="crop"`` (``lesion_ms_mp2rage``, trained on
  crops): the box is cut out and segmented alone, as SCT documents; the cord mask is returned too; no
  cord found: the whole image is segmented, with a warning;
- ONNX tasks (``t2``, ``t2_ax``, ``t2s``): the legacy models (``legacy.py``) on the cord's centreline.

``models`` maps model names (``lesion_ms``, ``spinalcord``, ...) to a ``models.LocatedModel`` or a
folder; names it lacks are found with ``bidsapp.models.locate(name, models_dir=, demo=)``.
Predictors are cached per process (one per model folder, folds, device, TTA, ensemble and precision).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from . import tasks
from .engine import NnUNetModel, NnUNetPredictor, resolve_device, resolve_precision
from .errors import ConfigError
from .imaging import like
from .models import crop_metadata
from .postprocess import bounding_box, keep_largest_object, padded_box
from .tasks import BoxRule, Task

log = logging.getLogger(__name__)

_THRESHOLDS = {
    "logits": "argmax of the mean fold logits (nnU-Net)",
    "probabilities": "argmax of the mean fold probabilities",
    "sct": "SCT 7.3: each fold's segmentation (argmax), kept where more than half the folds agree",
}
_LARGEST = "; largest 6-connected object kept (SCT spinalcord)"


@dataclass(frozen=True)
class RunOptions:
    """How to run a task on an image (resolved by the caller: the command lines, the runner)."""

    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda``."""
    tta: bool = False
    """Mirroring test-time augmentation."""
    folds: tuple[int | str, ...] | None = None
    """Folds to ensemble (None: every fold of the model folder)."""
    crop: bool = tasks.CROP_DEFAULT
    """For tasks whose crop is optional (``lesion_ms``): run on the box around the cord. Tasks that
    always crop (``lesion_ms_mp2rage``) ignore it."""
    ensemble: str | None = None
    """Fold ensembling (``sct``, ``logits``, ``probabilities``); None: the task's rule."""
    models_dir: Path | None = None
    """Where models are installed, for the names ``models`` lacks."""
    demo: bool = False
    """Use the embedded demo models for the names ``models`` lacks."""
    precision: str = "auto"
    """Network precision (``auto``, ``fp32``, ``bf16``, ``fp16``: ``engine.precision.resolve_precision``);
    the command lines pass the one they resolved."""


@dataclass(frozen=True)
class CropResult:
    """Where the box around the cord was: ``box_voxels`` ``[[start, stop]] * 3`` (None: no cord found, the
    whole image was segmented) and whether the mask reaches a face of the box inside the image."""

    box_voxels: list[list[int]] | None
    mask_touches_box: bool = False


@dataclass(frozen=True)
class ModelRef:
    """A model as used: its folder or file and what identifies it (release, demo, weight checksums)."""

    path: str
    release: str | None = None
    demo: bool = False
    sha256: Mapping[str, str] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What identifies the model in up-to-date checks (never the path: data move)."""
        return {"release": self.release, "demo": bool(self.demo), "sha256": dict(self.sha256)}


@dataclass(frozen=True)
class Provenance:
    """What produced a result: the facts only the pipeline knows."""

    task: str
    engine: str
    device: str
    models: Mapping[str, ModelRef]
    """Model name -> the model run, in the order they ran."""
    folds: Mapping[str, list[int | str]]
    """Model name -> the folds actually ensembled (nnU-Net models)."""
    tta: bool
    ensemble: str | None
    """Fold ensembling used (None: the task has no folds)."""
    threshold: str | float
    """How the mask was made from the probabilities."""
    precision: str = "fp32"
    """The nnU-Net networks' precision (``fp32``, ``bf16``, ``fp16``); in the sidecar it is the
    ``State``'s (``Settings.parameters``), so :meth:`to_dict` leaves it out."""
    crop: CropResult | None = None
    """The box around the cord (None: the task did not crop)."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Engine-specific facts (legacy: ONNX provider, model file, centreline, patch z-score)."""

    def to_dict(self) -> dict[str, Any]:
        """The sidecar's ``Pipeline`` block: only what the run's ``State`` does not already hold (the
        task, TTA, precision, rules and model identities are there): engine, device, folds used,
        threshold, model paths, the box, engine details."""
        out: dict[str, Any] = {"engine": self.engine, "device": self.device, "folds": dict(self.folds),
                               "threshold": self.threshold,
                               "model_paths": {name: ref.path for name, ref in self.models.items()}}
        if self.crop is not None:
            out["crop"] = {"box_voxels": self.crop.box_voxels, "mask_touches_box": self.crop.mask_touches_box}
        return {**out, **self.details}


@dataclass(frozen=True)
class SegmentationResult:
    """Outputs on the input grid: ``mask`` uint8 0/1, ``probseg`` float32 in [0, 1] or None, ``cord``
    uint8 0/1 or None (the cord mask a task used), ``provenance`` (what produced them)."""

    mask: nib.Nifti1Image
    probseg: nib.Nifti1Image | None
    cord: nib.Nifti1Image | None
    provenance: Provenance


# ---- models -----------------------------------------------------------------------------------------
def _resolve(name: str, models: Mapping[str, Any] | None, options: RunOptions) -> ModelRef:
    """The model ``name`` as given in ``models`` (a LocatedModel or a plain folder), else located."""
    if models and name in models:
        located = models[name]
    else:
        from . import models as registry  # the registry is only needed when something is not given

        located = registry.locate(name, models_dir=options.models_dir, demo=options.demo)
    if isinstance(located, (str, Path)):
        return ModelRef(path=str(located))
    return ModelRef(path=str(located.path), release=located.release, demo=bool(located.demo),
                    sha256=dict(located.sha256))


@lru_cache(maxsize=8)
def _cached_predictor(folder: str, folds: tuple | None, device: str, tta: bool,
                      ensemble: str, precision: str) -> NnUNetPredictor:
    # a model object serves one precision (its weights are converted in place): one load per key
    model = NnUNetModel.load(folder, folds=list(folds) if folds is not None else None)
    return NnUNetPredictor(model, device=device, tta=tta, ensemble=ensemble, precision=precision)


def get_predictor(folder: str | Path, *, folds: Sequence[int | str] | None = None, device: str = "auto",
                  tta: bool = False, ensemble: str = "logits", precision: str = "auto") -> NnUNetPredictor:
    """The process-wide predictor for this model folder and settings (built on first use)."""
    folds_key = tuple(f if f == "all" else int(f) for f in folds) if folds is not None else None
    dev = resolve_device(device)
    return _cached_predictor(str(Path(folder).resolve()), folds_key, str(dev), bool(tta), ensemble,
                             resolve_precision(precision, dev))


def class_index(labels: Mapping[str, int], task: str | Task) -> int:
    """The label value of the task's foreground class: the label whose name matches one of the task's
    ``class_hints`` (e.g. "lesion"), else the only foreground label."""
    spec = tasks.get(task)
    for name, value in labels.items():
        low = name.lower()
        if value != 0 and any(h == low or h in low.split("_") or low.startswith(h) for h in spec.class_hints):
            return int(value)
    foreground = [int(v) for v in labels.values() if v != 0]
    if len(foreground) == 1:
        return foreground[0]
    raise ConfigError(f"cannot tell which of the labels {dict(labels)} is the {spec.name} class")


# ---- one model pass ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    """The run-wide part of every model pass."""

    device: str
    folds: tuple[int | str, ...] | None
    tta: bool
    ensemble: str
    precision: str = "fp32"


@dataclass(frozen=True)
class _Pass:
    mask: np.ndarray   # bool, the grid of the image passed
    prob: np.ndarray   # float32 probability of the task's class
    folds: list[int | str]


def _run_model(img: nib.Nifti1Image, spec: Task, model: ModelRef, run: _Run, *,
               roi: tuple[slice, ...] | None = None, tile_step: float | None = None) -> _Pass:
    """One nnU-Net pass of ``spec``'s model: its class on the grid of ``img``; with ``roi`` only the
    windows overlapping that box run (exact inside it, background outside); ``tile_step``: the window
    step (default: the task's)."""
    predictor = get_predictor(model.path, folds=run.folds, device=run.device, tta=run.tta,
                              ensemble=run.ensemble, precision=run.precision)
    step = spec.tile_step if tile_step is None else tile_step
    maps = predictor.predict_maps(img, roi=roi, tile_step=step)
    folds = list(predictor.model.folds)
    if not spec.class_hints:  # a user's model: any foreground class
        mask, prob = maps.foreground_mask(), maps.foreground_soft()
    else:
        idx = class_index(predictor.model.labels, spec)
        mask, prob = maps.mask(idx), maps.soft[idx]
    if spec.postprocess == "keep_largest":  # SCT's spinalcord (postprocess.keep_largest_object)
        mask = keep_largest_object(mask)
    return _Pass(mask, prob, folds)


def _cord(img: nib.Nifti1Image, located: Mapping[str, ModelRef], run: _Run) -> _Pass:
    """The cord as ``sct_deepseg spinalcord`` makes it: the cord task's own rules (window step, largest
    object, ensemble), every fold, no TTA, whatever the main task's options; a cord release trained on
    crops runs on its padded box, found by a first whole-image pass of the same model (or sc_crop)."""
    spec = tasks.get(tasks.CORD_MODEL)
    return _cord_pass(img, located[tasks.CORD_MODEL],
                      _Run(run.device, None, False, spec.ensemble, run.precision))


def _cord_pass(img: nib.Nifti1Image, model: ModelRef, run: _Run) -> _Pass:
    spec = tasks.get(tasks.CORD_MODEL)
    pads = crop_metadata.read(model.path)
    if pads is None:
        return _run_model(img, spec, model, run)
    return _on_padded_box(img, spec, model, run, pads, lambda: _run_model(img, spec, model, run).mask).task


# ---- the box around the cord ------------------------------------------------------------------------
def _si_axis(affine: np.ndarray) -> int:
    """The array axis whose direction is closest to S-I."""
    rot = np.asarray(affine)[:3, :3]
    cos = np.abs(rot[2]) / np.linalg.norm(rot, axis=0)
    return int(np.argmax(cos))


def cord_crop_box(cord: np.ndarray, affine: np.ndarray, *, margin_mm: float = 30.0,
                  margin_slices: int = 5) -> tuple[slice, ...] | None:
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


def box_around_cord(cord: np.ndarray, affine: np.ndarray, rule: BoxRule) -> tuple[slice, ...] | None:
    """:func:`cord_crop_box` with a task's :class:`~bidsapp.tasks.BoxRule` (margin along S-I in slices, or
    in mm rounded up to slices)."""
    slices = rule.margin_slices
    if slices is None:
        zoom = float(voxel_sizes(affine)[_si_axis(affine)])
        slices = int(math.ceil((rule.margin_si_mm or 0.0) / zoom))
    return cord_crop_box(cord, affine, margin_mm=rule.margin_mm, margin_slices=slices)


def crop_image(img: nib.Nifti1Image, box: tuple[slice, ...]) -> nib.Nifti1Image:
    """The sub-image ``img[box]`` with its affine shifted so every voxel keeps its position."""
    return img.slicer[box]


def touches_box(mask: np.ndarray, box: tuple[slice, ...], shape: Sequence[int]) -> bool:
    """Whether ``mask`` (the crop's array) reaches a face of ``box`` that is not the image border,
    i.e. a lesion may continue outside the crop."""
    for axis, s in enumerate(box):
        lo = np.take(mask, 0, axis=axis).any() and s.start > 0
        hi = np.take(mask, -1, axis=axis).any() and s.stop < shape[axis]
        if lo or hi:
            return True
    return False


@dataclass(frozen=True)
class _Around:
    task: _Pass
    cord: _Pass | None  # None: a detector placed the box
    crop: CropResult


def _segment_around_cord(img: nib.Nifti1Image, spec: Task, located: Mapping[str, ModelRef],
                         run: _Run) -> _Around:
    """``spinalcord``, then ``spec`` on the box around the cord, on the full grid (zeros outside the box)."""
    rule = spec.crop.box
    assert rule is not None, f"{spec.name}: a task that crops needs a box rule"
    cord = _cord(img, located, run)  # SCT's cord, whatever the task (issue 15: one cord everywhere)
    box = box_around_cord(cord.mask, img.affine, rule)
    model = located[spec.main_model]
    if box is None:
        log.warning("%s: no spinal cord found; segmenting the whole image instead of a crop", spec.name)
        return _Around(_run_model(img, spec, model, run), cord, CropResult(None))
    if rule.windows == "image":
        whole = _run_model(img, spec, model, run, roi=box)
        sub_mask = whole.mask[box]
    else:
        sub = _run_model(crop_image(img, box), spec, model, run)
        mask, prob = np.zeros(img.shape[:3], bool), np.zeros(img.shape[:3], np.float32)
        mask[box], prob[box] = sub.mask, sub.prob
        whole, sub_mask = _Pass(mask, prob, sub.folds), sub.mask
    touches = touches_box(sub_mask, box, img.shape[:3])
    if touches:
        log.warning("%s: the lesion mask touches the box %s around the cord; lesions may continue outside "
                    "it", spec.name, [[s.start, s.stop] for s in box])
    return _Around(whole, cord, CropResult([[s.start, s.stop] for s in box], touches))


# ---- a release trained on crops (crop_metadata.json) -----------------------------------------------
def _detector_box(img: nib.Nifti1Image, pads: crop_metadata.CropPadding) -> tuple[slice, ...] | None:
    """The box of the ``sc_crop`` detector (SCT's development branch: ``sc_crop.detect(img, **pads)``,
    inclusive ``xmin..zmax`` voxel indices) when that package is installed; None otherwise or when it
    finds no cord."""
    import importlib.util

    if importlib.util.find_spec("sc_crop") is None:
        return None
    import sc_crop

    try:
        found = sc_crop.detect(img, **{k: getattr(pads, k.removeprefix("pad_"))
                                       for k in crop_metadata.PAD_KEYS})
    except RuntimeError as exc:  # no cord detected
        log.warning("sc_crop found no cord (%s); using the spinalcord mask's box", exc)
        return None
    return tuple(slice(int(found[f"{a}min"]), int(found[f"{a}max"]) + 1) for a in "xyz")


def _on_padded_box(img: nib.Nifti1Image, spec: Task, model: ModelRef, run: _Run,
                   pads: crop_metadata.CropPadding, cord_mask) -> _Around:
    """``spec``'s model on the box its ``crop_metadata.json`` asks for: the detector's box, else the
    bounding box of ``cord_mask()`` padded (``postprocess.padded_box``); cut out, segmented, put back
    on the full grid (zeros outside). No cord: the whole image, with a warning."""
    box, source, cord = _detector_box(img, pads), "sc_crop", None
    if box is None:
        cord = cord_mask()
        found = bounding_box(cord)
        if found is None:
            log.warning("%s: no spinal cord found; segmenting the whole image instead of a crop", spec.name)
            whole = _run_model(img, spec, model, run)
            return _Around(whole, _Pass(cord, cord.astype(np.float32), whole.folds), CropResult(None))
        box, source = padded_box(found, img.affine, img.shape[:3], pads), tasks.CORD_MODEL
    sub = _run_model(crop_image(img, box), spec, model, run)
    mask, prob = np.zeros(img.shape[:3], bool), np.zeros(img.shape[:3], np.float32)
    mask[box], prob[box] = sub.mask, sub.prob
    touches = touches_box(sub.mask, box, img.shape[:3])
    if touches:
        log.warning("%s: the mask touches the crop box %s; it may continue outside it", spec.name,
                    [[s.start, s.stop] for s in box])
    cord_pass = _Pass(cord, cord.astype(np.float32), []) if cord is not None else None
    voxels = [[s.start, s.stop] for s in box]
    log.info("%s: crop_metadata.json box %s from %s", spec.name, voxels, source)
    return _Around(_Pass(mask, prob, sub.folds), cord_pass, CropResult(voxels, touches))


# ---- entry point ------------------------------------------------------------------------------------
def _threshold(spec: Task, run: _Run) -> str:
    rule = _THRESHOLDS.get(run.ensemble, run.ensemble)
    return rule + (_LARGEST if spec.postprocess == "keep_largest" else "")


def _segment_nnunet(img: nib.Nifti1Image, spec: Task, located: dict[str, ModelRef], run: _Run,
                    options: RunOptions, models: Mapping[str, Any] | None) -> tuple[_Around | None, _Pass]:
    """The task's own pass: on a crop release's box, on the box around the cord, or on the whole image.
    Returns (the cord/box part or None, the task's pass)."""
    pads = crop_metadata.read(located[spec.main_model].path)
    if pads is not None:
        if spec.main_model == tasks.CORD_MODEL:  # the cord task itself, with the run's own options
            return None, _cord_pass(img, located[tasks.CORD_MODEL], run)
        if tasks.CORD_MODEL not in located:
            located[tasks.CORD_MODEL] = _resolve(tasks.CORD_MODEL, models, options)
        around = _on_padded_box(img, spec, located[spec.main_model], run, pads,
                                lambda: _cord(img, located, run).mask)
        return around, around.task
    if spec.crop.applies(options.crop):
        around = _segment_around_cord(img, spec, located, run)
        return around, around.task
    return None, _run_model(img, spec, located[spec.main_model], run)


def segment(img: nib.Nifti1Image, *, task: str | Task, models: Mapping[str, Any] | None = None,
            options: RunOptions = RunOptions()) -> SegmentationResult:
    """Segment one image with one task; every output is on the exact grid of ``img``.

    ``task``: a task name or alias, or a :class:`~bidsapp.tasks.Task` (benches pass rows with other
    margins); ``models``: model name -> LocatedModel or folder (the others are located); ``options``:
    device, TTA, folds, crop, ensembling, where models are.
    """
    spec = tasks.get(task)
    located = {name: _resolve(name, models, options) for name in spec.models_run(options.crop)}
    device = resolve_device(options.device)
    run = _Run(str(device), options.folds, bool(options.tta), options.ensemble or spec.ensemble,
               resolve_precision(options.precision, device))
    if spec.engine == tasks.ONNX:
        return _segment_legacy(img, spec, located, run)
    around, out = _segment_nnunet(img, spec, located, run, options, models)
    cord = around.cord.mask if around is not None and around.cord is not None else None
    folds = {spec.main_model: out.folds}
    if around is not None and around.cord is not None and around.cord.folds:
        folds = {tasks.CORD_MODEL: around.cord.folds, **folds}
    provenance = Provenance(task=spec.name, engine="bidsapp.engine.nnunet (torch)", device=run.device,
                            models=located, folds=folds, tta=run.tta, ensemble=run.ensemble,
                            precision=run.precision, threshold=_threshold(spec, run),
                            crop=around.crop if around is not None else None)
    return SegmentationResult(
        mask=like(img, out.mask.astype(np.uint8), np.uint8),
        probseg=like(img, np.clip(out.prob, 0.0, 1.0).astype(np.float32), np.float32),
        cord=like(img, cord.astype(np.uint8), np.uint8) if cord is not None else None,
        provenance=provenance)


def _segment_legacy(img: nib.Nifti1Image, spec: Task, located: Mapping[str, ModelRef],
                    run: _Run) -> SegmentationResult:
    """The legacy ONNX models (``legacy.py``): the cord from ``spinalcord`` first (SCT's: step 0.5, largest
    object), for the centreline."""
    from .legacy import segment_legacy

    cord = _cord(img, located, run)
    out = segment_legacy(img, task=spec.name, model=located[spec.main_model].path,
                         cord=like(img, cord.mask.astype(np.uint8), np.uint8), device=run.device)
    provenance = Provenance(task=spec.name, engine="onnxruntime", device=run.device, models=located,
                            folds={tasks.CORD_MODEL: cord.folds}, tta=False, ensemble=None,
                            precision=run.precision, threshold=out.threshold, details=out.details)
    return SegmentationResult(mask=out.mask, probseg=None, cord=out.cord, provenance=provenance)
