"""One settings object per run, built once from the command line and dumped beside each image's log."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, tasks
from .engine.precision import ARITHMETIC, OPENVINO_GRAPH

#: the --crop / --no-crop help of both command lines (run.py and bidsapp.segment); the default is the
#: task table's
CROP_HELP = ("lesion_ms: run spinalcord first, then only the windows that overlap the ROI box around the "
             "cord (the whole image's result inside the box, nothing outside); default: "
             + ("on (--no-crop: the whole image)" if tasks.CROP_DEFAULT
                else "off: the whole image, as SCT 7.3"))
#: the --ensemble help of both command lines
ENSEMBLES = ("sct", "logits", "probabilities")
ENSEMBLE_HELP = ("fold ensembling of the nnU-Net tasks: sct (SCT 7.3: each fold's segmentation, kept where "
                 "more than half the folds agree; soft map: mean of p where it beats the background), logits "
                 "(nnU-Net's mean of the fold logits) or probabilities; default: the task's rule "
                 "(lesion_ms: sct)")
#: the --precision help of both command lines (the rule is engine.precision.resolve_precision's)
PRECISION_HELP = ("numeric precision of the nnU-Net networks: auto (SCT's arithmetic: fp32 on every CPU, "
                  "fp16 autocast on CUDA), fp32, bf16 or fp16 (on a CPU: faster on some CPUs, with "
                  "avx512_bf16 or AMX, but not SCT's masks; without those instructions emulated, not faster)")
#: the --backend help of both command lines (the rule is engine.backends.resolve_backend's)
BACKEND_HELP = ("runtime of the nnU-Net networks: auto (OpenVINO on a CPU in fp32 where it is installed, "
                "else torch), torch, or openvino (CPU, fp32 only: the same float32 function, faster; its "
                "converted networks are cached in the work dir)")


@dataclass(frozen=True)
class Settings:
    """Everything a participant-level run needs, checked at the door by the CLI."""

    bids_dir: Path
    """Input BIDS dataset (never written to)."""
    output_dir: Path
    """BIDS-Derivatives output dataset."""
    analysis_level: str = "participant"
    """``participant`` or ``group``."""
    participants: tuple[str, ...] = ()
    """Selected participant labels without ``sub-`` (empty: all)."""
    sessions: tuple[str, ...] = ()
    """Selected session labels without ``ses-`` (empty: all)."""
    filters: dict[str, Any] = field(default_factory=dict)
    """Entity filters from ``--bids-filter-file`` (``{"*": {...}, "<suffix>": {...}}``)."""
    rules: tuple[dict[str, Any], ...] = ()
    """Routing rules (user rules first, then the built-in ones unless disabled)."""
    config_file: Path | None = None
    """The ``--config`` file the rules came from, if any."""
    models_dir: Path | None = None
    """Installed models folder (``--models-dir`` or ``CORDLESION_MODELS``)."""
    demo: bool = False
    """Use the small embedded demo models (phantom data only)."""
    work_dir: Path | None = None
    """Scratch folder (pybids database, caches); a temporary folder when not given."""
    nprocs: int = 1
    """Worker processes, one image at a time each."""
    omp_nthreads: int = 1
    """Torch/OpenMP threads per worker."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda``."""
    tta: bool = False
    """Mirroring test-time augmentation (8 passes in 3D; off by default as in SCT)."""
    folds: tuple[int, ...] | None = None
    """nnU-Net folds to ensemble (None: every fold in the model folder)."""
    crop: bool = tasks.CROP_DEFAULT
    """Tasks whose crop is optional (lesion_ms) run on the ROI box around the cord, spinalcord first
    (``--crop`` / ``--no-crop``, resolved by the CLI; tasks that always run on a crop box ignore it)."""
    ensemble: str | None = None
    """``--ensemble``: fold ensembling of the nnU-Net tasks (None: each task's rule)."""
    cord: bool = True
    """The lesion tasks also write their cord mask (``label-SC``; lesion_ms runs spinalcord for it) and
    measure their lesion tables against it; ``--no-cord``: neither (cord columns ``n/a``)."""
    drop_outside_cord: bool = False
    """``--drop-outside-cord``: lesions with no voxel in the cord are removed from the lesion masks and
    tables (SCT issue #4946; recorded in the sidecar's provenance)."""
    corrections: Path | None = None
    """``--corrections``: the labels folder of corrected masks the figures are measured on (only read;
    what it holds for an image is part of the up-to-date state of that image's figures, not of its
    model outputs)."""
    disc_labels: Path | None = None
    """``--disc-labels``: the labels folder whose disc labels give each image's vertebral levels (only read;
    like ``corrections``, part of the up-to-date state of the figures, not of the model outputs)."""
    precision: str = "fp32"
    """The network precision the run uses (``fp32``, ``bf16``, ``fp16``): ``--precision`` resolved once by the
    CLI (:func:`resolve_run_precision`), so every worker and the up-to-date check see the same one."""
    backend: str = "torch"
    """The runtime of the nnU-Net networks (``torch``, ``openvino``): ``--backend`` resolved once by the CLI
    (:func:`resolve_run_backend`); part of the up-to-date parameters (another float32 rounding)."""
    overwrite: bool = False
    """Recompute images whose outputs are up to date."""
    dry_run: bool = False
    """Print the plan and stop."""
    skip_bids_validator: bool = False
    """Do not validate the input dataset."""
    mem: str | None = None
    """``--mem`` as given (``8G``, ``8000MB``; bare number MB): the memory the workers share; None: the
    SLURM allocation, the cgroup limit or MemAvailable (``memory.memory_budget``)."""
    image_timeout: float | None = None
    """``--image-timeout``: seconds one image may take in its worker before the worker is killed."""
    allow_unusual_geometry: bool = False
    """``--allow-unusual-geometry``: voxel sizes, field of view, shape outside ``guards.LIMITS`` only warn."""
    version: str = __version__
    """App version that made these settings."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (paths as strings, tuples as lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def parameters(self, task: str | tasks.Task) -> dict[str, Any]:
        """What changes ``task``'s result besides its input and models (recorded for up-to-date checks):
        the run's settings and the task's rules, with its box rule when it runs on a box around the cord."""
        spec = tasks.get(task)
        rules = spec.rules()
        if self.ensemble is not None and spec.engine == tasks.NNUNET:
            rules["ensemble"] = self.ensemble
        params = {"tta": self.tta, "folds": list(self.folds) if self.folds is not None else None,
                  "rules": rules, "precision": self.precision}
        if spec.engine == tasks.NNUNET:  # no fallback for old sidecars: an older engine's masks re-run
            params["arithmetic"] = ARITHMETIC
            params["backend"] = self.backend
            if self.backend == "openvino":  # outputs of another graph (OpenVINO's MVN) re-run
                params["openvino_graph"] = OPENVINO_GRAPH
        if spec.crop.applies(self.crop) and spec.crop.box is not None:
            params["crop"] = spec.crop.box.to_dict()
        if spec.lesion_table:  # the cord mask and the drop change the mask, the table and the outputs
            params["lesion_table"] = {"cord": self.cord, "drop_outside_cord": self.drop_outside_cord}
        return params

    def dumps(self) -> str:
        """Indented JSON of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


def resolve_run_precision(requested: str, device: str) -> str:
    """The precision a run uses for ``--precision`` ``requested`` (auto|fp32|bf16|fp16) on ``--device``
    ``device`` (auto|cpu|cuda): the engine's rule (``engine.precision.resolve_precision``). An explicit
    precision needs no torch; "auto" reads the device and the CPU flags (torch imported)."""
    from .engine.precision import resolve_precision

    if requested != "auto":
        return resolve_precision(requested)
    from .engine import resolve_device

    return resolve_precision("auto", resolve_device(device))


def resolve_run_backend(requested: str, device: str, precision: str) -> str:
    """The backend a run uses for ``--backend`` ``requested`` on ``--device`` ``device`` in the resolved
    ``precision`` (``engine.backends.resolve_backend``); ValueError for openvino on CUDA or not fp32.
    OpenVINO itself is not imported."""
    from .engine.backends import resolve_backend

    if requested == "torch":
        return requested
    from .engine import resolve_device

    return resolve_backend(requested, str(resolve_device(device)), precision)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def default_omp_nthreads(nprocs: int) -> int:
    """Threads per worker when not given: the CPUs this process may use, shared among the workers."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, nprocs))
