"""Write nnU-Net v2 model folders exactly as nnU-Net does: plans.json, dataset.json, fold checkpoints.

Used to build the embedded demo models and, in tests, throw-away folders with random weights that
both our engine and nnunetv2's ``nnUNetPredictor`` load. Layout::

    <dest>/<Trainer>__<Plans>__<configuration>/
        plans.json  dataset.json  fold_<k>/<checkpoint>

Example::

    plans = make_plans(PlansSpec(network="ResidualEncoderUNet", patch_size=(16, 64, 64),
                                 spacing=(3.0, 0.7, 0.7)))
    ds = make_dataset_json({"background": 0, "lesion": 1}, {"0": "T2w"})
    sd = random_state_dict(plans, "3d_fullres", 1, 2, seed=0)
    folder = write_model_folder(tmp, plans=plans, dataset_json=ds, fold_state_dicts={0: sd})
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine.network import build_network, nnunet_default_layers, random_state_dict

__all__ = ["PlansSpec", "make_plans", "make_dataset_json", "write_model_folder", "make_checkpoint",
           "topology", "build_network", "random_state_dict"]

# nnU-Net's ExperimentPlanner / nnUNetPlannerResEncL encoder and decoder depths per stage
_PLAIN_ENCODER, _PLAIN_DECODER = 2, 2
_RESENC_ENCODER = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
_MIN_FEATURE_MAP = 4


def topology(spacing: Sequence[float], patch_size: Sequence[int], max_stages: int | None = None):
    """Pooling strides, conv kernel sizes and padded patch size, following nnU-Net's
    ``get_pool_and_conv_props`` (min feature map edge 4): pool axes within a factor 2 of the finest
    spacing, 3-wide kernels once an axis is within a factor 2 of the finest spacing."""
    dim = len(spacing)
    cur_spacing, cur_size = [float(s) for s in spacing], [int(p) for p in patch_size]
    strides, kernels = [[1] * dim], []
    n_pool, kernel = [0] * dim, [1] * dim
    while max_stages is None or len(strides) < max_stages:
        axes = [i for i in range(dim) if cur_size[i] >= 2 * _MIN_FEATURE_MAP]
        if not axes:
            break
        finest = min(cur_spacing[i] for i in axes)
        axes = [i for i in axes if cur_spacing[i] / finest < 2]
        if len(axes) == 1 and cur_size[axes[0]] < 3 * _MIN_FEATURE_MAP:
            break
        for d in range(dim):
            if kernel[d] != 3 and cur_spacing[d] / min(cur_spacing) < 2:
                kernel[d] = 3
        pool = [2 if d in axes else 1 for d in range(dim)]
        for d in axes:
            n_pool[d] += 1
            cur_spacing[d] *= 2
            cur_size[d] = int(np.ceil(cur_size[d] / 2))
        strides.append(pool)
        kernels.append(list(kernel))
    kernels.append([3] * dim)  # bottleneck
    divisible = [2 ** n for n in n_pool]
    patch = [int(np.ceil(p / d) * d) for p, d in zip(patch_size, divisible, strict=True)]
    return strides, kernels, patch


@dataclass(frozen=True)
class PlansSpec:
    """What a plans.json says (one 3D configuration); every field has nnU-Net's usual default.

    ``spacing`` and ``patch_size`` are in nnU-Net's array axis order AFTER ``transpose_forward``
    (for SCT models: [z, y, x] of the LPI image, i.e. (S-I, A-P, R-L)). ``network`` is
    ``PlainConvUNet`` (default planner: 2 convs per stage) or ``ResidualEncoderUNet`` (ResEnc
    planner: 1,3,4,6,6,6... blocks). ``old_format=True`` writes the pre-2.4 ``UNet_class_name`` /
    ``conv_kernel_sizes`` form instead of the ``architecture`` dict.
    """

    # the network
    network: str = "PlainConvUNet"
    base_features: int = 32
    max_features: int = 320
    max_stages: int | None = None
    strides: Sequence[Sequence[int]] | None = None
    """Pooling per stage (None: nnU-Net's ``get_pool_and_conv_props`` rule, :func:`topology`)."""
    kernel_sizes: Sequence[Sequence[int]] | None = None
    # the grid
    patch_size: Sequence[int] = (16, 64, 64)
    spacing: Sequence[float] = (3.0, 0.7, 0.7)
    transpose_forward: Sequence[int] = (0, 1, 2)
    median_image_size: Sequence[int] | None = None
    # intensities
    normalization: str | Sequence[str] = "ZScoreNormalization"
    use_mask_for_norm: bool | Sequence[bool] = False
    foreground_intensity_properties: Mapping[str, Mapping[str, float]] | None = None
    # names and file form
    configuration: str = "3d_fullres"
    dataset_name: str = "Dataset999_Demo"
    plans_name: str | None = None
    batch_size: int = 2
    old_format: bool = False

    @property
    def plain(self) -> bool:
        return self.network == "PlainConvUNet"

    @property
    def schemes(self) -> list[str]:
        return [self.normalization] if isinstance(self.normalization, str) else list(self.normalization)

    @property
    def name(self) -> str:
        """The plans name (default: nnU-Net's planner's)."""
        return self.plans_name or ("nnUNetPlans" if self.plain else "nnUNetResEncUNetLPlans")


def make_plans(spec: PlansSpec | None = None) -> dict:
    """Return a complete nnU-Net v2 plans dict for ``spec`` (default: ``PlansSpec()``)."""
    spec = spec or PlansSpec()
    if spec.network not in ("PlainConvUNet", "ResidualEncoderUNet"):
        raise ValueError(f"network must be PlainConvUNet or ResidualEncoderUNet, not {spec.network!r}")
    auto_strides, auto_kernels, patch = topology(spec.spacing, spec.patch_size, spec.max_stages)
    strides = [list(s) for s in (spec.strides or auto_strides)]
    kernels = [list(k) for k in (spec.kernel_sizes or auto_kernels)]
    if len(kernels) != len(strides):
        raise ValueError(f"{len(kernels)} kernel sizes for {len(strides)} stages")
    config = {**_configuration(spec, patch), **_network(spec, strides, kernels)}
    fg = spec.foreground_intensity_properties or {
        str(c): {"max": 1000.0, "mean": 300.0, "median": 290.0, "min": 0.0,
                 "percentile_00_5": 10.0, "percentile_99_5": 800.0, "std": 150.0}
        for c in range(len(spec.schemes))
    }
    tf = [int(i) for i in spec.transpose_forward]
    return {
        "dataset_name": spec.dataset_name,
        "plans_name": spec.name,
        "original_median_spacing_after_transp": [float(s) for s in spec.spacing],
        "original_median_shape_after_transp": [int(s) for s in (spec.median_image_size or patch)],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": tf,
        "transpose_backward": [int(i) for i in np.argsort(tf)],
        "configurations": {spec.configuration: config},
        "experiment_planner_used": "ExperimentPlanner" if spec.plain else "nnUNetPlannerResEncL",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {k: dict(v) for k, v in fg.items()},
    }


def _configuration(spec: PlansSpec, patch: list[int]) -> dict:
    """The configuration's grid, normalisation and resampling entries."""
    masks = spec.use_mask_for_norm
    return {
        "data_identifier": f"{spec.name}_{spec.configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": spec.batch_size,
        "patch_size": patch,
        "median_image_size_in_voxels": [int(s) for s in (spec.median_image_size or patch)],
        "spacing": [float(s) for s in spec.spacing],
        "normalization_schemes": spec.schemes,
        "use_mask_for_norm": [masks] * len(spec.schemes) if isinstance(masks, bool) else list(masks),
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "batch_dice": False,
    }


def _network(spec: PlansSpec, strides: list[list[int]], kernels: list[list[int]]) -> dict:
    """The configuration's network entries: the ``architecture`` dict, or the pre-2.4 keys."""
    n, dim = len(strides), len(spec.spacing)
    encoder = [_PLAIN_ENCODER] * n if spec.plain else list(_RESENC_ENCODER[:n])
    decoder = [_PLAIN_DECODER if spec.plain else 1] * (n - 1)
    if spec.old_format:
        return {
            "UNet_class_name": spec.network,
            "UNet_base_num_features": spec.base_features,
            "n_conv_per_stage_encoder": encoder,
            "n_conv_per_stage_decoder": decoder,
            "num_pool_per_axis": [int(sum(np.log2(s[d]) for s in strides)) for d in range(dim)],
            "pool_op_kernel_sizes": strides,
            "conv_kernel_sizes": kernels,
            "unet_max_num_features": spec.max_features,
        }
    features = [min(spec.base_features * 2 ** i, spec.max_features) for i in range(n)]
    return {"architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet." + spec.network,
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": features,
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": kernels,
            "strides": strides,
            ("n_conv_per_stage" if spec.plain else "n_blocks_per_stage"): encoder,
            "n_conv_per_stage_decoder": decoder,
            **nnunet_default_layers(dim),
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }}


def make_dataset_json(labels: Mapping[str, int], channel_names: Mapping[str, str] | Sequence[str],
                      image_orientation: str | None = None, *, num_training: int = 0,
                      file_ending: str = ".nii.gz", name: str | None = None) -> dict:
    """Return an nnU-Net v2 dataset.json dict. ``image_orientation`` is SCT letters (e.g. "LPI", "RPI")."""
    if not isinstance(channel_names, Mapping):
        channel_names = {str(i): c for i, c in enumerate(channel_names)}
    ds = {
        "channel_names": {str(k): v for k, v in channel_names.items()},
        "labels": {k: int(v) for k, v in labels.items()},
        "numTraining": int(num_training),
        "file_ending": file_ending,
    }
    if name:
        ds["name"] = name
    if image_orientation is not None:
        ds["image_orientation"] = image_orientation
    return ds


def make_checkpoint(state_dict: Mapping[str, torch.Tensor], *, plans: dict, dataset_json: dict, fold: int,
                    configuration: str = "3d_fullres", trainer: str = "nnUNetTrainer", epochs: int = 1,
                    mirroring_axes: Sequence[int] | None = (0, 1, 2)) -> dict:
    """A checkpoint dict with the keys and value types ``nnUNetTrainer.save_checkpoint`` writes.

    ``init_args`` holds the trainer's constructor arguments (plans, configuration, fold,
    dataset_json, device); ``logging`` and ``_best_ema`` hold numpy float64 values as real
    checkpoints do, so loaders must cope with them under ``weights_only=True``.
    """
    lr = 1e-2
    # The optimizer state as nnU-Net's SGD(momentum=0.99, nesterov) leaves it before its first step.
    params = list(range(len([k for k in state_dict if not k.endswith("num_batches_tracked")])))
    optimizer_state = {"state": {}, "param_groups": [{
        "lr": lr, "momentum": 0.99, "dampening": 0, "weight_decay": 3e-05, "nesterov": True,
        "maximize": False, "foreach": None, "differentiable": False, "fused": None, "initial_lr": lr,
        "params": params}]}
    f64 = np.float64
    logging = {
        "mean_fg_dice": [f64(0.5)] * epochs,
        "ema_fg_dice": [f64(0.5)] * epochs,
        "dice_per_class_or_region": [[f64(0.5)]] * epochs,
        "train_losses": [f64(-0.5)] * epochs,
        "val_losses": [f64(-0.5)] * epochs,
        "lrs": [lr] * epochs,
        "epoch_start_timestamps": [0.0] * epochs,
        "epoch_end_timestamps": [1.0] * epochs,
    }
    return {
        "network_weights": clone_shared(state_dict),
        "optimizer_state": optimizer_state,
        "grad_scaler_state": None,
        "logging": logging,
        "_best_ema": f64(0.5),
        "current_epoch": int(epochs),
        "init_args": {"plans": plans, "configuration": configuration,
                      "fold": fold if fold == "all" else int(fold),
                      "dataset_json": dataset_json, "device": torch.device("cpu")},
        "trainer_name": trainer,
        "inference_allowed_mirroring_axes": tuple(mirroring_axes) if mirroring_axes is not None else None,
    }


def clone_shared(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies that keep tensors shared between keys shared (ResidualEncoderUNet lists every
    encoder weight again under ``decoder.encoder.`` and ``all_modules``), so ``torch.save`` stores
    each once, as nnU-Net's own checkpoints do; cloning key by key would triple the file."""
    clones: dict[tuple, torch.Tensor] = {}
    out = {}
    for key, value in state_dict.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                 tuple(value.stride()), value.dtype, value.device)
        if ident not in clones:
            clones[ident] = value.detach().cpu().clone()
        out[key] = clones[ident]
    return out


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_model_folder(dest: str | Path, *, plans: dict, dataset_json: dict,
                       fold_state_dicts: Mapping[int | str, Mapping[str, torch.Tensor]],
                       trainer: str = "nnUNetTrainer", configuration: str = "3d_fullres",
                       checkpoint: str = "checkpoint_final.pth",
                       mirroring_axes: Sequence[int] | None = (0, 1, 2)) -> Path:
    """Write ``<dest>/<trainer>__<plans_name>__<configuration>/`` and return its path.

    One ``fold_<k>/<checkpoint>`` per entry of ``fold_state_dicts`` (k an int or "all").
    """
    folder = Path(dest) / f"{trainer}__{plans['plans_name']}__{configuration}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, obj in (("plans.json", plans), ("dataset.json", dataset_json)):
        text = json.dumps(obj, indent=4, sort_keys=False) + "\n"
        _write_atomic(folder / name, lambda p, t=text: Path(p).write_text(t))
    for fold, sd in fold_state_dicts.items():
        ckpt = make_checkpoint(sd, plans=plans, dataset_json=dataset_json,
                               fold=fold if fold == "all" else int(fold), configuration=configuration,
                               trainer=trainer, mirroring_axes=mirroring_axes)
        _write_atomic(folder / f"fold_{fold}" / checkpoint, lambda p, c=ckpt: torch.save(c, p))
    return folder
