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
- boxes around the cord (geometry: ``bidsapp.boxes``), two kinds: a task whose crop is optional
  (``lesion_ms --crop``, ``BoxRule(windows="image")``) runs on its **ROI box**: the image is preprocessed
  whole and only the sliding windows that overlap the box run, so inside the box the result IS the whole
  image's, zero outside (bench/RESULTS-crop.md); a model trained on crops runs on its **crop box**, cut
  out, segmented alone and put back on the full grid (:func:`_on_crop_box`): ``lesion_ms_mp2rage``'s
  (``windows="crop"``, the model's recipe around the cord) or the box a release's ``crop_metadata.json``
  asks for (the cord's bounding box padded as the file says; the ``sc_crop`` detector's box when that
  package is installed). Either way ``spinalcord`` runs first and its mask is returned too; no cord
  found: the whole image is segmented, with a warning;
- ONNX tasks (``t2``, ``t2_ax``, ``t2s``): the legacy models (``legacy.py``) on the cord's centreline.

``models`` maps model names (``lesion_ms``, ``spinalcord``, ...) to a ``models.LocatedModel`` or a
folder; names it lacks are found with ``bidsapp.models.locate(name, models_dir=, demo=)``.
Predictors are cached per process (one per model folder, folds, device, TTA, ensemble, precision, backend).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from . import boxes, tasks
from .engine import NnUNetModel, NnUNetPredictor, resolve_device, resolve_precision
from .engine.backends import resolve_backend
from .errors import ConfigError
from .imaging import like, like_sct
from .models import crop_metadata
from .postprocess import keep_largest_object
from .tasks import Task

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
    """For tasks whose crop is optional (``lesion_ms``): run on the ROI box around the cord. Tasks that
    always crop (``lesion_ms_mp2rage``, on its crop box) ignore it."""
    ensemble: str | None = None
    """Fold ensembling (``sct``, ``logits``, ``probabilities``); None: the task's rule."""
    models_dir: Path | None = None
    """Where models are installed, for the names ``models`` lacks."""
    demo: bool = False
    """Use the embedded demo models for the names ``models`` lacks."""
    precision: str = "auto"
    backend: str = "torch"
    """Network precision (``auto``, ``fp32``, ``bf16``, ``fp16``: ``engine.precision.resolve_precision``) and
    runtime (``torch``, ``openvino``, ``auto``: ``engine.backends``); the command lines pass theirs."""
    cord: bool = False
    """Tasks that write their cord mask (``Task.writes_cord``) also return it when their own pass made none:
    ``spinalcord`` run as ``sct_deepseg spinalcord`` runs it (the BIDS run's ``--cord``)."""


@dataclass(frozen=True)
class BoxResult:
    """Where the ROI box or the crop box around the cord was: ``box_voxels`` ``[[start, stop]] * 3`` (None:
    no cord found, the whole image was segmented) and whether the mask reaches a face of the box inside the
    image. The sidecar's ``Pipeline.crop`` (key kept for both boxes: readers of older sidecars)."""

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
    """The nnU-Net networks' precision; in the sidecar it is the ``State``'s (``Settings.parameters``)."""
    crop: BoxResult | None = None
    """The ROI box or crop box around the cord (None: the task ran on the whole image)."""
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
@dataclass(frozen=True)
class TaskModels:
    """Which models a task runs under a run's options: the one rule (``Task.models_run``) every caller
    asks (the runner's locating and up-to-date state, ``bidsapp.segment``, :func:`segment`)."""

    task: tuple[str, ...]
    """The task's own pass, in order (``spinalcord`` first when the task runs on a box around the cord)."""
    names: tuple[str, ...]
    """Every model run: the task's, and ``spinalcord`` first when only the cord mask needs it (``cord``)."""


def models_for(task: str | Task, options: RunOptions) -> TaskModels:
    """The models ``task`` runs under ``options`` (its crop, its cord mask)."""
    spec = tasks.get(task)
    return TaskModels(spec.models_run(options.crop), spec.models_run(options.crop, cord=options.cord))


def locate(task: str | Task, options: RunOptions, models: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every model of :func:`models_for`: as ``models`` gives it (LocatedModel or folder), else located and
    verified (``bidsapp.models.locate``; ModelError / NoModelsError)."""
    from . import models as registry

    given = models or {}
    return {name: given.get(name) or registry.locate(name, models_dir=options.models_dir, demo=options.demo)
            for name in models_for(task, options).names}


def locate_and_guard(path: Path, task: str | Task, options: RunOptions, *,
                     models: Mapping[str, Any] | None = None, budget: Any = None,
                     allow_unusual: bool = False) -> tuple[dict[str, Any], Any]:
    """Before any voxel of the image at ``path`` is read: its models (:func:`locate`) and its header checked
    against them (plausible geometry, a grid on every model, the memory estimate within ``budget``:
    ``guards.check_image``). Returns (the located models, the estimate); InputImageError, ModelError."""
    from . import guards
    from .imaging import read_header

    located = locate(task, options, models)
    plans = guards.task_plans(located, options.folds, options.backend)
    estimate = guards.check_image(path, read_header(path), plans, budget=budget, allow_unusual=allow_unusual)
    return located, estimate


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
def _cached_predictor(folder: str, folds: tuple | None, device: str, tta: bool, ensemble: str, precision: str,
                      backend: str) -> NnUNetPredictor:
    # a model object serves one precision (its weights are converted in place): one load per key
    return NnUNetPredictor(NnUNetModel.load(folder, folds=list(folds) if folds is not None else None),
                           device=device, tta=tta, ensemble=ensemble, precision=precision, backend=backend)


def get_predictor(folder: str | Path, *, folds: Sequence[int | str] | None = None, device: str = "auto",
                  tta: bool = False, ensemble: str = "logits", precision: str = "auto",
                  backend: str = "torch") -> NnUNetPredictor:
    """The process-wide predictor for this model folder and settings (built on first use)."""
    folds_key = tuple(f if f == "all" else int(f) for f in folds) if folds is not None else None
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    return _cached_predictor(str(Path(folder).resolve()), folds_key, str(dev), bool(tta), ensemble, precision,
                             resolve_backend(backend, str(dev), precision))


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
    backend: str = "torch"


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
                              ensemble=run.ensemble, precision=run.precision, backend=run.backend)
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
    crops runs on its crop box, found by a first whole-image pass of the same model (or sc_crop)."""
    spec = tasks.get(tasks.CORD_MODEL)
    return _cord_pass(img, located[tasks.CORD_MODEL],
                      _Run(run.device, None, False, spec.ensemble, run.precision, run.backend))


def _cord_pass(img: nib.Nifti1Image, model: ModelRef, run: _Run) -> _Pass:
    spec = tasks.get(tasks.CORD_MODEL)
    pads = crop_metadata.read(model.path)
    if pads is None:
        return _run_model(img, spec, model, run)
    return _on_padded_box(img, spec, model, run, pads, lambda: _run_model(img, spec, model, run).mask).task


# ---- the ROI box (--crop) and the crop box (models trained on crops) ----------------------------------
@dataclass(frozen=True)
class _Around:
    task: _Pass
    cord: _Pass | None  # None: a detector placed the box
    box: BoxResult


def _box_result(spec: Task, name: str, box: boxes.Box, in_box: np.ndarray, shape: Sequence[int]) -> BoxResult:
    """What the sidecar says of the box ``name`` (``boxes.ROI_BOX``/``CROP_BOX``); a warning when the mask
    (``in_box``: inside the box) reaches a face of the box inside the image."""
    touches = boxes.touches_box(in_box, box, shape)
    if touches:
        log.warning("%s: the mask touches the %s %s; it may continue outside it", spec.name, name,
                    boxes.voxels(box))
    return BoxResult(boxes.voxels(box), touches)


def _on_crop_box(img: nib.Nifti1Image, spec: Task, model: ModelRef, run: _Run, box: boxes.Box) -> _Pass:
    """``spec``'s model on the crop box alone (cut out: the crop is the model's input, normalisation
    included), the result put back on the full grid of ``img`` (zeros outside)."""
    sub = _run_model(boxes.cut(img, box), spec, model, run)
    mask, prob = np.zeros(img.shape[:3], bool), np.zeros(img.shape[:3], np.float32)
    mask[box], prob[box] = sub.mask, sub.prob
    return _Pass(mask, prob, sub.folds)


def _segment_around_cord(img: nib.Nifti1Image, spec: Task, located: Mapping[str, ModelRef],
                         run: _Run) -> _Around:
    """``spinalcord``, then ``spec`` on its box around the cord (the row's ``BoxRule``): the ROI box
    (``windows="image"``: only the whole image's windows overlapping it run) or the crop box
    (``windows="crop"``); on the full grid, zeros outside the box."""
    rule = spec.crop.box
    assert rule is not None, f"{spec.name}: a task that crops needs a box rule"
    cord = _cord(img, located, run)  # SCT's cord, whatever the task (issue 15: one cord everywhere)
    box = boxes.box_around_cord(cord.mask, img.affine, rule)
    model = located[spec.main_model]
    name = boxes.ROI_BOX if rule.windows == "image" else boxes.CROP_BOX
    if box is None:
        log.warning("%s: no spinal cord found; segmenting the whole image instead of a %s", spec.name, name)
        return _Around(_run_model(img, spec, model, run), cord, BoxResult(None))
    if rule.windows == "image":
        out = _run_model(img, spec, model, run, roi=box)
    else:
        out = _on_crop_box(img, spec, model, run, box)
    log.info("%s: %s %s around the cord (%s)", spec.name, name, boxes.voxels(box), rule.to_dict())
    return _Around(out, cord, _box_result(spec, name, box, out.mask[box], img.shape[:3]))


def _on_padded_box(img: nib.Nifti1Image, spec: Task, model: ModelRef, run: _Run,
                   pads: crop_metadata.CropPadding, cord_mask) -> _Around:
    """``spec``'s model on the crop box its ``crop_metadata.json`` asks for: the ``sc_crop`` detector's box,
    else the bounding box of ``cord_mask()`` padded (``boxes.padded_box``). No cord: the whole image."""
    box, source, cord = boxes.detector_box(img, pads), "the sc_crop detector", None
    if box is None:
        cord = cord_mask()
        found = boxes.bounding_box(cord)
        if found is None:
            log.warning("%s: no spinal cord found; segmenting the whole image instead of a %s", spec.name,
                        boxes.CROP_BOX)
            whole = _run_model(img, spec, model, run)
            return _Around(whole, _Pass(cord, cord.astype(np.float32), whole.folds), BoxResult(None))
        box = boxes.padded_box(found, img.affine, img.shape[:3], pads)
        source = f"{crop_metadata.FILE} paddings around the {tasks.CORD_MODEL} mask"
    out = _on_crop_box(img, spec, model, run, box)
    log.info("%s: %s %s from %s", spec.name, boxes.CROP_BOX, boxes.voxels(box), source)
    cord_pass = _Pass(cord, cord.astype(np.float32), []) if cord is not None else None
    return _Around(out, cord_pass, _box_result(spec, boxes.CROP_BOX, box, out.mask[box], img.shape[:3]))


# ---- entry point ------------------------------------------------------------------------------------
def _threshold(spec: Task, run: _Run) -> str:
    rule = _THRESHOLDS.get(run.ensemble, run.ensemble)
    return rule + (_LARGEST if spec.postprocess == "keep_largest" else "")


def _segment_nnunet(img: nib.Nifti1Image, spec: Task, located: dict[str, ModelRef], run: _Run,
                    options: RunOptions, models: Mapping[str, Any] | None) -> tuple[_Around | None, _Pass]:
    """The task's own pass: on a crop release's crop box, on the row's box around the cord (ROI box or crop
    box), or on the whole image.
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
    device, TTA, folds, crop, ensembling, where models are, the cord mask (``cord``: it is ``result.cord``
    whether the task's box needed it or not).
    """
    spec = tasks.get(task)
    plan = models_for(spec, options)
    every = {name: _resolve(name, models, options) for name in plan.names}
    located = {name: every[name] for name in plan.task}  # the task's own pass: its provenance
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device)
    run = _Run(str(device), options.folds, bool(options.tta), options.ensemble or spec.ensemble, precision,
               resolve_backend(options.backend, str(device), precision))
    if spec.engine == tasks.ONNX:
        return _segment_legacy(img, spec, located, run)
    around, out = _segment_nnunet(img, spec, located, run, options, models)
    cord = around.cord.mask if around is not None and around.cord is not None else None
    if cord is None and options.cord and spec.writes_cord:  # the cord mask alone: SCT's spinalcord
        cord = _cord(img, every, run).mask
    folds = {spec.main_model: out.folds}
    if around is not None and around.cord is not None and around.cord.folds:
        folds = {tasks.CORD_MODEL: around.cord.folds, **folds}
    provenance = Provenance(task=spec.name, engine=f"bidsapp.engine.nnunet ({run.backend})",
                            device=run.device, models=located, folds=folds, tta=run.tta,
                            ensemble=run.ensemble, precision=run.precision, threshold=_threshold(spec, run),
                            crop=around.box if around is not None else None)
    return SegmentationResult(
        mask=like_sct(img, out.mask.astype(np.uint8), np.uint8),
        probseg=like_sct(img, np.clip(out.prob, 0.0, 1.0).astype(np.float32), np.float32),
        cord=like_sct(img, cord.astype(np.uint8), np.uint8) if cord is not None else None,
        provenance=provenance)


def _segment_legacy(img: nib.Nifti1Image, spec: Task, located: Mapping[str, ModelRef],
                    run: _Run) -> SegmentationResult:
    """The legacy ONNX models (``legacy.py``): SCT's cord from ``spinalcord`` first, for the centreline."""
    from .legacy import segment_legacy

    cord = _cord(img, located, run)
    out = segment_legacy(img, task=spec.name, model=located[spec.main_model].path,
                         cord=like(img, cord.mask.astype(np.uint8), np.uint8), device=run.device)
    provenance = Provenance(task=spec.name, engine="onnxruntime", device=run.device, models=located,
                            folds={tasks.CORD_MODEL: cord.folds}, tta=False, ensemble=None,
                            precision=run.precision, threshold=out.threshold, details=out.details)
    return SegmentationResult(mask=out.mask, probseg=None, cord=out.cord, provenance=provenance)
