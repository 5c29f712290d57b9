"""One settings object per run, built once from the command line and dumped beside each image's log."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__

#: ``lesion_ms`` on a box around the cord unless told otherwise (``--crop`` / ``--no-crop``): inside the
#: box the result is the whole image's (bench/RESULTS-crop.md); here, not in pipelines, so that the
#: command lines can say the default without importing torch
LESION_MS_CROP_DEFAULT = True
#: the --crop / --no-crop help of both command lines (run.py and bidsapp.segment)
CROP_HELP = ("lesion_ms: run spinalcord first, then only the windows that overlap a box around the cord (the "
             "whole image's result inside the box, nothing outside); default: "
             + ("on (--no-crop: the whole image)" if LESION_MS_CROP_DEFAULT else "off"))


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
    crop: bool | None = None
    """lesion_ms on a box around the cord, spinalcord first (``--crop`` / ``--no-crop``; None: the
    default, ``LESION_MS_CROP_DEFAULT``)."""
    overwrite: bool = False
    """Recompute images whose outputs are up to date."""
    dry_run: bool = False
    """Print the plan and stop."""
    skip_bids_validator: bool = False
    """Do not validate the input dataset."""
    version: str = __version__
    """App version that made these settings."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (paths as strings, tuples as lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def parameters(self) -> dict[str, Any]:
        """The settings that change a segmentation's result (recorded for up-to-date checks)."""
        params = {"tta": self.tta, "folds": list(self.folds) if self.folds is not None else None}
        from .pipelines import crop_parameters  # imports torch: only when asked

        crop = crop_parameters(self.crop)
        if crop is not None:  # only when on, so sidecars written with it off stay up to date
            params["crop"] = crop
        return params

    def dumps(self) -> str:
        """Indented JSON of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


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
