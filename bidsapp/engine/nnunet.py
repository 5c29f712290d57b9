"""Run an nnU-Net v2 model folder on a NIfTI image, as SCT + nnunetv2 do, without nnunetv2.

Path of one image (each step mirrors the nnunetv2 / SCT step named):

1. reorient to ``dataset.json["image_orientation"]`` (SCT letters, default "LPI" = RAS), then
   [x, y, z] -> [z, y, x] with the spacing reversed (SCT's ``deepseg/inference.py``);
2. ``transpose_forward``, crop to the non-zero box, normalise, resample to the plans' spacing
   (``DefaultPreprocessor.run_case_npy``);
3. sliding window per fold, mean of the fold logits (``predict_logits_from_preprocessed_data``);
4. logits resampled back to the cropped shape, softmax, uncrop with background 1 outside the box,
   ``transpose_backward`` (``convert_predicted_logits_to_segmentation_with_correct_shape``);
5. undo 1: probabilities on the exact input grid.

Example::

    model = NnUNetModel.load("models/lesion_ms/nnUNetTrainer__nnUNetPlans__3d_fullres")
    predictor = NnUNetPredictor(model, device="cpu")
    probs = predictor.predict(nib.load("t2.nii.gz"))     # (n_classes, *shape) float32
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch

from .. import orientation as ori
from ..errors import ModelError
from .modelfolder import NnUNetModel
from .network import build_network, instance_norms_as_group_norms
from .preprocess import bbox_slices, insert_crop, nonzero_bbox, normalize
from .resample import compute_new_shape, resample_to_shape
from .sliding import sliding_window_logits, weight_sum

__all__ = ["NnUNetModel", "NnUNetPredictor", "resolve_device"]

log = logging.getLogger(__name__)

_RESAMPLERS = {"resample_data_or_seg_to_shape"}
ENSEMBLES = ("logits", "probabilities")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; "cuda" without a GPU -> ModelError-free ValueError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available (use --device cpu or auto)")
    return dev


def _resampling_kwargs(config: dict, which: str, default_order: int) -> dict:
    name = config.get(f"resampling_fn_{which}", "resample_data_or_seg_to_shape")
    if name not in _RESAMPLERS:
        raise ModelError(f"plans.json: unsupported resampling_fn_{which} {name!r}")
    kw = dict(config.get(f"resampling_fn_{which}_kwargs") or {})
    return {"order": int(kw.get("order", default_order)), "order_z": int(kw.get("order_z", 0)),
            "force_separate_z": kw.get("force_separate_z")}


def _channels_last_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with 5-D (convolution) weights in channels-last 3D layout; tensors shared in the
    checkpoint (nnU-Net's decoder holds the encoder) stay shared."""
    done: dict[tuple, torch.Tensor] = {}
    out = {}
    for key, value in state.items():
        if value.dim() != 5:
            out[key] = value
            continue
        ident = (value.data_ptr(), tuple(value.shape), value.stride())
        if ident not in done:
            done[ident] = value.contiguous(memory_format=torch.channels_last_3d)
        out[key] = done[ident]
    return out


class NnUNetPredictor:
    """Built once per model / folds / device / TTA setting; ``predict`` many images."""

    def __init__(self, model: NnUNetModel, *, device: str | torch.device = "cpu", tta: bool = False,
                 ensemble: str = "logits", batch_size: int | None = None, tile_step: float = 0.5,
                 channels_last: bool | None = None, fast_norm: bool = True) -> None:
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, not {ensemble!r}")
        self.model = model
        self.device = resolve_device(device)
        self.tta = bool(tta)
        self.ensemble = ensemble
        self.tile_step = float(tile_step)
        self.config = model.config
        self.orientation = str(model.dataset_json.get("image_orientation", "LPI"))
        ori.sct_to_axcodes(self.orientation)  # fail early on a bad dataset.json value
        self._data_kw = _resampling_kwargs(self.config, "data", 3)
        self._prob_kw = _resampling_kwargs(self.config, "probabilities", 1)
        # built without memory ("meta"): the weights come from the checkpoint, random init is wasted time
        with torch.device("meta"):
            network = build_network(model.plans, model.configuration, model.num_input_channels,
                                    model.num_classes)
        # CPU levers measured in bench/RESULTS-engine.md, each checked against nnunetv2 in the parity
        # tests: GroupNorm for InstanceNorm (same maths), channels-last 3D tensors, 2 tiles per pass
        cpu = self.device.type == "cpu"
        self.network = instance_norms_as_group_norms(network) if fast_norm else network
        self.batch_size = max(1, int(batch_size if batch_size is not None else (2 if cpu else 1)))
        self.channels_last = cpu if channels_last is None else bool(channels_last)
        # On the CPU the network uses the checkpoint's tensors themselves (load_state_dict(assign=True)):
        # no second copy of the weights, which for ResEnc-L is ~400 MB of the peak memory budget.
        self._assign = cpu
        if cpu:
            if self.channels_last:
                for fold in model.folds:
                    model.state_dicts[fold] = _channels_last_weights(model.state_dicts[fold])
        else:
            self.network = self.network.to_empty(device=self.device)
            if self.channels_last:
                self.network = self.network.to(memory_format=torch.channels_last_3d)
        self._loaded_fold: int | str | None = None
        self._load_fold(model.folds[0])

    @property
    def mirror_axes(self) -> tuple[int, ...] | None:
        return self.model.mirroring_axes if self.tta else None

    def _load_fold(self, fold: int | str) -> None:
        if fold == self._loaded_fold:
            return
        try:
            self.network.load_state_dict(self.model.state_dicts[fold], assign=self._assign)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            path = self.model.checkpoint_paths[fold]
            raise ModelError(f"{path}: weights do not fit plans.json ({first})") from exc
        self.network.eval()
        self._loaded_fold = fold

    # ---- NIfTI in, probabilities on the input grid out -------------------------------------------
    def predict(self, img: nib.Nifti1Image) -> np.ndarray:
        """Class probabilities (n_classes, *img.shape) float32, on the exact grid of ``img``."""
        data = np.asarray(img.get_fdata(dtype=np.float32))
        if data.ndim != 3:
            raise ValueError(f"expected a 3D image, got shape {data.shape}")
        oriented, reo = ori.to_sct_orientation(data, img.affine, self.orientation)
        zooms = reo.zooms(img.header.get_zooms()[:3])
        probs = self.predict_array(ori.xyz_to_zyx(oriented)[None], ori.reverse_spacing(zooms))
        out = reo.undo(ori.xyz_to_zyx(probs))
        return np.ascontiguousarray(out, dtype=np.float32)

    # ---- nnU-Net's array path (predict_single_npy_array) -------------------------------------------
    @torch.inference_mode()
    def predict_array(self, data: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """``nnUNetPredictor.predict_single_npy_array`` probabilities for ``data`` (c, x, y, z) in
        nnU-Net axis order with ``spacing`` for those axes."""
        tf = [int(i) for i in self.model.plans.get("transpose_forward", [0, 1, 2])]
        tb = [int(i) for i in self.model.plans.get("transpose_backward", np.argsort(tf))]
        data = np.ascontiguousarray(data.transpose([0, *[i + 1 for i in tf]]), dtype=np.float32)
        spacing_t = [float(spacing[i]) for i in tf]
        shape_before = data.shape[1:]
        bbox, mask = nonzero_bbox(data)
        data = np.ascontiguousarray(data[(slice(None), *bbox_slices(bbox))])
        shape_cropped = data.shape[1:]
        target = [float(s) for s in self.config["spacing"]]
        new_shape = compute_new_shape(shape_cropped, spacing_t, target)
        data = normalize(data, mask, self.config,
                         self.model.plans.get("foreground_intensity_properties_per_channel"))
        data = resample_to_shape(data, new_shape, spacing_t, target, **self._data_kw)
        probs = self._probabilities(torch.from_numpy(np.ascontiguousarray(data)), shape_cropped, target,
                                    spacing_t)
        full = np.zeros((probs.shape[0], *shape_before), dtype=np.float32)
        full[0] = 1  # background outside the crop, as nnU-Net's revert_cropping_on_probabilities
        insert_crop(full, probs, bbox)
        return full.transpose([0, *[i + 1 for i in tb]])

    def _fold_logits(self, data: torch.Tensor, fold: int | str, out: torch.Tensor | None) -> torch.Tensor:
        self._load_fold(fold)
        return sliding_window_logits(self.network, data, self.config["patch_size"],
                                     self.model.num_classes, mirror_axes=self.mirror_axes,
                                     step=self.tile_step, batch_size=self.batch_size,
                                     device=self.device, channels_last=self.channels_last, out=out)

    def _to_probabilities(self, logits: torch.Tensor, shape: Sequence[int], spacing_from: Sequence[float],
                          spacing_to: Sequence[float]) -> np.ndarray:
        back = resample_to_shape(logits.numpy(), shape, spacing_from, spacing_to, **self._prob_kw)
        return torch.softmax(torch.from_numpy(np.ascontiguousarray(back)), 0).numpy()

    def _probabilities(self, data: torch.Tensor, shape: Sequence[int], spacing_from: Sequence[float],
                       spacing_to: Sequence[float]) -> np.ndarray:
        weights = weight_sum(data.shape[1:], self.config["patch_size"], self.tile_step)
        folds = self.model.folds
        if self.ensemble == "logits":
            # sum of the Gaussian-weighted fold logits, one division: the mean of nnU-Net's fold logits
            acc = None
            for fold in folds:
                acc = self._fold_logits(data, fold, acc)
            acc /= weights * len(folds)
            return self._to_probabilities(acc, shape, spacing_from, spacing_to)
        probs = None
        for fold in folds:  # SCT: each fold's probabilities, then their mean
            logits = self._fold_logits(data, fold, None)
            logits /= weights
            p = self._to_probabilities(logits, shape, spacing_from, spacing_to)
            probs = p if probs is None else probs + p
        return probs / len(folds)
