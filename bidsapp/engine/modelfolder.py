"""Read an nnU-Net v2 model folder safely: plans.json, dataset.json and fold checkpoints.

Nothing from a model folder is imported or executed: the JSON files are data, the checkpoints are
read with ``torch.load(weights_only=True)`` and an allow-list of numpy data types only (nnU-Net
checkpoints hold numpy float64 scalars in their training log).
"""
from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy import dtypes as np_dtypes
from numpy._core.multiarray import _reconstruct, scalar

from ..errors import ModelError
from .network import resolve_architecture

log = logging.getLogger(__name__)

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")

# numpy objects a checkpoint written by nnU-Net may contain; each under its numpy 2 and numpy 1 name
_NUMPY_DATA = [scalar, _reconstruct, np.ndarray, np.dtype] + [
    getattr(np_dtypes, n) for n in dir(np_dtypes) if n.endswith("DType") and n[0].isupper()]
SAFE_GLOBALS: list = _NUMPY_DATA + [(scalar, "numpy.core.multiarray.scalar"),
                                    (_reconstruct, "numpy.core.multiarray._reconstruct")]


def load_checkpoint(path: Path) -> dict:
    """``torch.load`` with ``weights_only=True`` and the numpy allow-list; ModelError naming the file.

    Checkpoints in torch's zip format are memory-mapped (copy-on-write): a fold's weights cost memory
    only once they are read, so the OpenVINO backend, which drops the weights of folds it finds
    converted in its cache, never holds the 5 folds of lesion_ms (~1.9 GB) at once. The installer
    replaces model files by renaming, never in place, so the mapped file stays valid."""
    try:
        mapped = zipfile.is_zipfile(path)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mapped)
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: checkpoint not found") from exc
    except Exception as exc:  # unpickling errors come in many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: cannot read checkpoint ({reason})") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise ModelError(f"{path}: not an nnU-Net checkpoint (no 'network_weights')")
    return ckpt


def read_json(path: Path) -> dict:
    """A model folder's JSON file as a dict, or ModelError naming the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: missing") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def resolve_folder(folder: str | Path) -> Path:
    """The folder holding plans.json: ``folder`` itself or its single ``*__*__*`` subfolder."""
    folder = Path(folder)
    if (folder / "plans.json").is_file():
        return folder
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    inner = [p for p in folder.iterdir() if p.is_dir() and (p / "plans.json").is_file()]
    if len(inner) == 1:
        return inner[0]
    raise ModelError(f"{folder / 'plans.json'}: missing (not an nnU-Net model folder)"
                     if not inner else f"{folder}: {len(inner)} model folders inside, pass one of them")


def _fold_key(name: str) -> int | str | None:
    m = re.fullmatch(r"fold_(\d+|all)", name)
    if not m:
        return None
    return m.group(1) if m.group(1) == "all" else int(m.group(1))


def available_folds(folder: Path) -> list[int | str]:
    """Folds with a checkpoint, sorted (ints first, then "all")."""
    found = [_fold_key(p.name) for p in folder.iterdir() if p.is_dir()]
    found = [f for f in found if f is not None and any((folder / f"fold_{f}" / c).is_file()
                                                       for c in CHECKPOINTS)]
    return sorted(found, key=lambda f: (isinstance(f, str), f if isinstance(f, int) else 0))


def _checkpoint_path(folder: Path, fold: int | str) -> Path:
    for name in CHECKPOINTS:
        if (folder / f"fold_{fold}" / name).is_file():
            return folder / f"fold_{fold}" / name
    raise ModelError(f"{folder / f'fold_{fold}' / CHECKPOINTS[0]}: missing (no {' or '.join(CHECKPOINTS)})")


@dataclass
class NnUNetModel:
    """An nnU-Net v2 model folder, read and checked; the fold weights are held on the CPU."""

    folder: Path
    plans: dict
    dataset_json: dict
    configuration: str
    folds: list[int | str]
    checkpoint_paths: dict[int | str, Path]
    state_dicts: dict[int | str, dict[str, torch.Tensor]] = field(repr=False)
    trainer_name: str = "nnUNetTrainer"
    mirroring_axes: tuple[int, ...] | None = None
    #: the precision a predictor prepared ``state_dicts`` for, in place (None: as loaded)
    weights_precision: str | None = field(default=None, repr=False)

    @property
    def labels(self) -> dict[str, int]:
        return dict(self.dataset_json["labels"])

    @property
    def num_classes(self) -> int:
        return len(self.dataset_json["labels"])

    @property
    def num_input_channels(self) -> int:
        return len(self.dataset_json.get("channel_names") or self.dataset_json.get("modality") or {})

    @property
    def config(self) -> dict:
        return self.plans["configurations"][self.configuration]

    @classmethod
    def load(cls, folder: str | Path, folds: Iterable[int | str] | None = None) -> NnUNetModel:
        """Read ``folder`` (all folds with a checkpoint, or the given ones); ModelError naming the file."""
        folder = resolve_folder(folder)
        plans = read_json(folder / "plans.json")
        dataset_json = read_json(folder / "dataset.json")
        _check_dataset_json(folder / "dataset.json", dataset_json)
        folds = _select_folds(folder, folds)
        paths = {f: _checkpoint_path(folder, f) for f in folds}
        ckpts = {f: load_checkpoint(p) for f, p in paths.items()}
        first = ckpts[folds[0]]
        init_args = first.get("init_args") if isinstance(first.get("init_args"), dict) else {}
        configuration = init_args.get("configuration") or folder.name.rsplit("__", 1)[-1]
        if configuration not in (plans.get("configurations") or {}):
            raise ModelError(f"{folder / 'plans.json'}: no configuration {configuration!r} "
                             f"(named by {paths[folds[0]]})")
        model = cls(folder=folder, plans=plans, dataset_json=dataset_json, configuration=configuration,
                    folds=folds, checkpoint_paths=paths,
                    state_dicts={f: c["network_weights"] for f, c in ckpts.items()},
                    trainer_name=str(first.get("trainer_name", "nnUNetTrainer")),
                    mirroring_axes=_mirroring_axes(first))
        _check_config(folder / "plans.json", model)
        log.info("loaded %s (%s, folds %s)", folder, configuration, folds)
        return model


def _select_folds(folder: Path, folds: Iterable[int | str] | None) -> list[int | str]:
    if folds is None:
        found = available_folds(folder)
        if not found:
            raise ModelError(f"{folder / 'fold_0' / CHECKPOINTS[0]}: missing "
                             f"(no fold_*/checkpoint in {folder})")
        return found
    chosen = [f if f == "all" else int(f) for f in folds]
    if not chosen:
        raise ModelError(f"{folder}: empty fold selection")
    return chosen


def _mirroring_axes(ckpt: dict) -> tuple[int, ...] | None:
    axes = ckpt.get("inference_allowed_mirroring_axes")
    return tuple(int(a) for a in axes) if axes is not None else None


def _check_dataset_json(path: Path, ds: dict) -> None:
    labels = ds.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelError(f"{path}: no 'labels'")
    if any(not isinstance(v, int) for v in labels.values()):
        raise ModelError(f"{path}: region-based labels are not supported")
    if sorted(labels.values()) != list(range(len(labels))):
        raise ModelError(f"{path}: labels must be 0..{len(labels) - 1}, got {sorted(labels.values())}")
    if not (ds.get("channel_names") or ds.get("modality")):
        raise ModelError(f"{path}: no 'channel_names'")


def _check_config(path: Path, model: NnUNetModel) -> None:
    config = model.config
    for key in ("patch_size", "spacing", "normalization_schemes"):
        if key not in config:
            raise ModelError(f"{path}: configuration {model.configuration!r} lacks {key!r}")
    if len(config["patch_size"]) != 3:
        raise ModelError(f"{path}: only 3D configurations are supported, got patch {config['patch_size']}")
    if len(config["normalization_schemes"]) != model.num_input_channels:
        raise ModelError(f"{path}: {len(config['normalization_schemes'])} normalization schemes for "
                         f"{model.num_input_channels} channels")
    resolve_architecture(model.plans, model.configuration)  # ModelError on unknown formats / classes
