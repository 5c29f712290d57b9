"""The task table: what each segmentation task IS, in one place every module asks.

A task is one way of segmenting one image: the engine and models it runs, the label and ``desc-`` of
its outputs, what its sidecars say, the SCT names it answers to, the suffixes the built-in routing
sends to it, and its rules (fold ensembling, post-processing, window step, box around the cord).
Rules are FIELDS here so that changing one is an edit of a value, read by the one function that
applies it. This module imports nothing heavy (no torch, no nibabel): the command lines read it.

    from bidsapp import tasks
    spec = tasks.get("seg_ms_lesion")        # aliases accepted -> the ``lesion_ms`` Task
    spec.models_run(crop=True)               # ("spinalcord", "lesion_ms")
    tasks.default_rules()                    # the built-in routing table
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

#: the model that finds the cord for every task that works around it (box, legacy centreline)
CORD_MODEL = "spinalcord"
NNUNET, ONNX = "nnunet", "onnx"


@dataclass(frozen=True)
class BoxRule:
    """How a task's box around the cord is made and run (``boxes.box_around_cord``; facts of the result:
    recorded for up-to-date checks)."""

    margin_mm: float
    """In-plane dilation of the cord's bounding box, mm."""
    margin_si_mm: float | None = None
    """Dilation along the array axis closest to S-I, mm (rounded up to slices) ..."""
    margin_slices: int | None = None
    """... or in slices (SCT's MP2RAGE recipe)."""
    windows: str = "image"
    """``image``: the box is an ROI box: the whole image is preprocessed and only the sliding windows that
    overlap it run (inside it the result IS the whole image's); ``crop``: the box is a crop box, cut out
    and segmented as an image of its own (a model trained on crops)."""
    cord_tile_step: float | None = None
    """Window step of the cord pass that places the box (None: the cord task's own step)."""

    def to_dict(self) -> dict[str, Any]:
        """The rule as recorded in sidecars (unset margins left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class CropPolicy:
    """Whether a task runs on a box around the cord: ``never``, ``always`` or ``optional``
    (``--crop``/``--no-crop``, ``default`` when not given)."""

    mode: str = "never"
    default: bool = False
    box: BoxRule | None = None

    def applies(self, crop: bool) -> bool:
        """Whether the task crops under the run's ``crop`` setting (meaningful for ``optional`` only)."""
        return self.mode == "always" or (self.mode == "optional" and bool(crop))


@dataclass(frozen=True)
class Task:
    """One row of the task table."""

    name: str
    engine: str
    """``nnunet`` (our torch engine) or ``onnx`` (the legacy models)."""
    models: tuple[str, ...]
    """Models it runs, in order, besides the optional cord pass of an ``optional`` crop."""
    label: str
    """``label-`` of its outputs (``lesion``, ``SC``)."""
    mask_type: str
    """BIDS mask ``Type`` of its mask sidecar (``Lesion``; ``ROI`` for the cord)."""
    description: str
    """Sidecar ``Description``."""
    summary: str
    """Short name of the task for tables (group data dictionary)."""
    sct_name: str | None = None
    """The SCT 7 ``sct_deepseg`` task it reproduces."""
    aliases: tuple[str, ...] = ()
    """Every other name accepted for it (SCT names, older spellings); the model manifest must agree."""
    contrasts: tuple[str, ...] = ()
    """BIDS suffixes it was trained on."""
    routes_from: tuple[str, ...] = ()
    """Suffixes the built-in routing sends to it (in order)."""
    desc_tag: str = ""
    """Appended to the source suffix in ``desc-`` (``T2w`` + ``Legacy``)."""
    home: tuple[str, ...] | None = None
    """Suffixes whose plain ``desc-<suffix>`` name it owns (None: every suffix no other row of the same
    label and tag routes from by default)."""
    foreign_tag: str = ""
    """Appended too on an image that is not its home: two tasks routed to one image never share a name
    (``t2s`` on a T2w image: ``T2wLegacyT2s``; ``lesion_ms`` on UNIT1: ``UNIT1LesionMS``)."""
    writes_cord: bool = False
    """Also writes the cord mask it used (``label-SC``); a task that does not crop runs ``spinalcord`` for
    it unless the run says ``--no-cord`` (``models_run(crop, cord=)``)."""
    lesion_table: bool = False
    """Also writes the per-lesion table (``..._lesions.tsv`` + data dictionary: SCT ``sct_analyze_lesion``
    measures, against its cord mask when there is one)."""
    sct_output_suffix: str | None = None
    """``bidsapp.segment``'s default output name suffix, as SCT names it (``_lesion_seg``)."""
    class_hints: tuple[str, ...] = ()
    """Names of its foreground class in the model's labels; () = any foreground class."""
    ensemble: str = "logits"
    """Fold ensembling: ``sct`` (SCT 7.3 ``average_nnunet_predictions``: each fold's segmentation, kept
    where more than half the folds agree; soft map: mean over folds of p where it beats the background),
    mean of ``logits`` (nnU-Net) or of ``probabilities``."""
    postprocess: str = "argmax"
    """How the mask is made: ``argmax`` (the ensemble's class), ``keep_largest`` (then only the largest
    6-connected object, values < 0.001 dropped first: SCT 7.3's ``spinalcord``) or ``patch_threshold``
    (legacy: SCT's per-patch probability > 0.1)."""
    tile_step: float = 0.5
    """Sliding-window step, a fraction of the patch (nnU-Net's 0.5)."""
    crop: CropPolicy = CropPolicy()
    routable: bool = True
    """Can be named in a routing config (``nnunet`` is a model folder given on the command line)."""

    def models_run(self, crop: bool, cord: bool = False) -> tuple[str, ...]:
        """The models this task runs, in order, under the run's ``crop`` setting; ``cord``: the run writes
        the cord mask of the tasks that write one (``--cord``, the BIDS run's default)."""
        needs = self.crop.applies(crop) or (cord and self.writes_cord)
        first = (CORD_MODEL,) if needs and CORD_MODEL not in self.models else ()
        return first + self.models

    def rules(self) -> dict[str, Any]:
        """The rules that change its result (besides the box): recorded for up-to-date checks."""
        return {"ensemble": self.ensemble, "postprocess": self.postprocess, "tile_step": self.tile_step}

    @property
    def main_model(self) -> str:
        """The model that makes the task's own output (the last one run)."""
        return self.models[-1]

    def desc(self, suffix: str) -> str:
        """``desc-`` of its outputs for a source suffix: ``T2w`` (lesion_ms), ``T2wLegacy`` (t2)."""
        away = suffix not in self.home if self.home is not None else _claimed_by_another(self, suffix)
        return f"{suffix}{self.desc_tag}{self.foreign_tag if away else ''}"


def _legacy(name: str, contrasts: tuple[str, ...], desc_tag: str, foreign_tag: str) -> Task:
    """A legacy ``sct_deepseg_lesion`` model: ONNX, on the centreline of the ``spinalcord`` mask."""
    return Task(name, engine=ONNX, models=(CORD_MODEL, name), label="lesion", mask_type="Lesion",
                description=f"MS spinal cord lesions by the legacy SCT sct_deepseg_lesion {name} model",
                summary=f"legacy SCT {name} lesion model",
                aliases=(f"{name}_lesion", f"legacy_{name}", f"deepseg_lesion_{name}"), contrasts=contrasts,
                desc_tag=desc_tag, home=contrasts, foreign_tag=foreign_tag, sct_output_suffix="_lesionseg",
                ensemble="none", postprocess="patch_threshold")


_TABLE: tuple[Task, ...] = (
    Task("lesion_ms", engine=NNUNET, models=("lesion_ms",), label="lesion", mask_type="Lesion",
         description="MS spinal cord lesions segmented by the SCT lesion_ms model (nnU-Net v2)",
         summary="SCT lesion_ms model", sct_name="seg_ms_lesion", aliases=("seg_ms_lesion",),
         contrasts=("T2w", "T2starw", "PSIR", "STIR", "T1w", "UNIT1"),
         routes_from=("T2w", "T2starw", "T2star"), foreign_tag="LesionMS", sct_output_suffix="_lesion_seg",
         class_hints=("lesion",), writes_cord=True, lesion_table=True,
         # SCT 7.3 (scripts/sct_deepseg.py: ensemble=True for lesion_ms): the per-fold vote
         ensemble="sct",
         # SCT 7.3 segments the whole image: the ROI box is opt-in (--crop), for speed. Inside it the result
         # is the whole image's whatever the margins: they only say how far from the cord lesions are looked
         # for (bench/RESULTS-crop.md); the box comes from the SCT cord (the cord task's own rules)
         crop=CropPolicy("optional", default=False, box=BoxRule(margin_mm=10.0, margin_si_mm=15.0,
                                                                 windows="image"))),
    Task("lesion_ms_mp2rage", engine=NNUNET, models=(CORD_MODEL, "lesion_ms_mp2rage"), label="lesion",
         mask_type="Lesion",
         description="MS spinal cord lesions on MP2RAGE UNIT1 (SCT lesion_ms_mp2rage on a cord crop)",
         summary="SCT lesion_ms_mp2rage model", sct_name="seg_ms_lesion_mp2rage",
         aliases=("seg_ms_lesion_mp2rage",), contrasts=("UNIT1",), routes_from=("UNIT1",), home=("UNIT1",),
         foreign_tag="MP2RAGE", writes_cord=True, lesion_table=True,
         sct_output_suffix="_lesion_seg", class_hints=("lesion",),
         # its crop box, the model's README: the cord dilated 30 mm in the axial plane and 5 mm along S-I
         # (SCT's recipe `sct_crop_image -m SEG -dilate 30x30x5` counts voxels of the array axes: the same
         # box on axial 1 mm images; README "The MP2RAGE crop box"); one fold: SCT's single-model path is
         # that fold's argmax, as the logit "mean" of one fold
         crop=CropPolicy("always", box=BoxRule(margin_mm=30.0, margin_si_mm=5.0, windows="crop"))),
    Task(CORD_MODEL, engine=NNUNET, models=(CORD_MODEL,), label="SC", mask_type="ROI",
         description="Spinal cord segmented by the SCT contrast-agnostic model",
         summary="SCT contrast-agnostic cord model", sct_name="seg_sc_contrast_agnostic",
         aliases=("seg_sc_contrast_agnostic",),
         contrasts=("T2w", "T2starw", "T1w", "PSIR", "STIR", "UNIT1"), sct_output_suffix="_seg",
         class_hints=("cord", "sc"),
         # SCT 7.3 scripts/sct_deepseg.py: keep_largest=1 for spinalcord (the model finds islands outside
         # the cord); window step 0.5 (deepseg/nnunet.py): every cord mask we write or use is this one
         postprocess="keep_largest", tile_step=0.5),
    _legacy("t2", ("T2w",), "Legacy", "T2"),
    _legacy("t2_ax", ("T2w",), "LegacyAx", ""),
    _legacy("t2s", ("T2starw", "T2star"), "Legacy", "T2s"),
    Task("nnunet", engine=NNUNET, models=("nnunet",), label="lesion", mask_type="Lesion",
         description="Segmentation by a user-given nnU-Net v2 model", summary="user-given nnU-Net v2 model",
         routable=False),
)

TASKS: dict[str, Task] = {t.name: t for t in _TABLE}
_ALIASES: dict[str, str] = {a: t.name for t in _TABLE for a in (t.name, *t.aliases)}
#: ``--crop`` when not given (the default of the tasks whose crop is optional)
CROP_DEFAULT: bool = any(t.crop.default for t in _TABLE if t.crop.mode == "optional")


def canonical(name: str) -> str:
    """The task a name or alias means (``seg_ms_lesion`` -> ``lesion_ms``); ConfigError when unknown."""
    try:
        return _ALIASES[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(names())})") from None


def get(name: str | Task) -> Task:
    """The :class:`Task` of a name or alias (a Task is returned as is: benches pass modified rules)."""
    return name if isinstance(name, Task) else TASKS[canonical(name)]


def names(engine: str | None = None, *, routable: bool | None = None) -> tuple[str, ...]:
    """Task names in table order, optionally only one engine's or only the routable ones."""
    return tuple(t.name for t in _rows(engine, routable))


def accepted_names() -> tuple[str, ...]:
    """Every name a routing config may use: routable tasks and their aliases (the config schema's enum)."""
    return tuple(n for t in _rows(None, True) for n in (t.name, *t.aliases))


def default_rules() -> tuple[dict[str, Any], ...]:
    """The built-in routing table: one rule per suffix in ``routes_from``, in table order."""
    return tuple({"match": {"suffix": s}, "tasks": [t.name]} for t in _TABLE for s in t.routes_from)


def _claimed_by_another(task: Task, suffix: str) -> bool:
    """Whether another row with the same label and tag owns ``desc-<suffix>`` (routes from it by default)."""
    return any(t.name != task.name and t.label == task.label and t.desc_tag == task.desc_tag
               and suffix in t.routes_from for t in _TABLE)


def _rows(engine: str | None, routable: bool | None) -> Iterator[Task]:
    for t in _TABLE:
        if (engine is None or t.engine == engine) and (routable is None or t.routable == routable):
            yield t
