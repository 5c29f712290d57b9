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
from dataclasses import dataclass, replace

import nibabel as nib
import numpy as np
import torch

from .. import orientation as ori
from ..errors import ModelError
from .backends import OpenVinoFolds, resolve_backend
from .backends import return_freed_heap as _return_freed_heap
from .ensemble import ClassMaps, SctVote, logit_mean_maps
from .modelfolder import NnUNetModel
from .network import build_network, instance_norms_as_group_norms
from .precision import (
    add_rounding_hooks,
    conv_state_keys,
    convert_convolutions,
    emulation_warning,
    is_emulated,
    resolve_precision,
    torch_dtype,
)
from .preprocess import bbox_slices, nonzero_bbox, normalize
from .resample import compute_new_shape, resample_to_shape
from .sliding import WindowRun, sliding_window_logits, weight_sum
from .spacing import sct_spacing

__all__ = ["Levers", "NnUNetModel", "NnUNetPredictor", "resolve_device"]

log = logging.getLogger(__name__)

_RESAMPLERS = {"resample_data_or_seg_to_shape"}
#: "logits": nnU-Net's mean of the fold logits; "probabilities": mean of the fold probabilities;
#: "sct": SCT 7.3's vote of the folds' segmentations and mean of their p(class) where it beats
#: the background (``ensemble.SctVote``; ``predict_maps`` only)
ENSEMBLES = ("logits", "probabilities", "sct")


@dataclass(frozen=True)
class Levers:
    """The CPU levers of bench/RESULTS-engine.md, each checked against nnunetv2 by the parity tests:
    ``batch_size`` windows per forward pass (None: 2 on the CPU, 1 elsewhere), ``channels_last`` 3D
    tensors (None: on the CPU), ``fast_norm``: GroupNorm for InstanceNorm (same maths)."""

    batch_size: int | None = None
    channels_last: bool | None = None
    fast_norm: bool = True


@dataclass(frozen=True)
class _ConvCast:
    """What happens to the convolutions' tensors (``keys`` of the state dict) in a reduced precision:
    converted to ``dtype`` (native), or rounded to it and kept float32 (``emulated``)."""

    keys: frozenset[str]
    dtype: torch.dtype
    emulated: bool

    def apply(self, value: torch.Tensor) -> torch.Tensor:
        rounded = value.to(self.dtype)
        return rounded.float() if self.emulated else rounded


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


def _prepare_cpu_weights(state: dict[str, torch.Tensor], channels_last: bool,
                         cast: _ConvCast | None = None) -> dict[str, torch.Tensor]:
    """``state`` ready to be the network's own weights on the CPU: float32 (a half-precision file would
    otherwise run in half precision), the convolutions' tensors through ``cast`` in a reduced precision,
    and, with ``channels_last``, 5-D convolution weights in channels-last 3D layout. IN PLACE and one
    tensor at a time, so each original is freed before the next copy is made; tensors shared in the
    checkpoint (nnU-Net's decoder holds the encoder) stay shared. Returns ``state``."""
    done: dict[tuple, torch.Tensor] = {}
    for key in list(state):
        value = state[key]
        conv = cast is not None and key in cast.keys and value.is_floating_point()
        to_float = value.is_floating_point() and value.dtype != torch.float32
        relayout = channels_last and value.dim() == 5 and not value.is_contiguous(
            memory_format=torch.channels_last_3d)
        if not (conv or to_float or relayout):
            continue
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                 value.stride(), value.dtype)
        if ident not in done:
            new = cast.apply(value) if conv else (value.float() if to_float else value)
            done[ident] = new.contiguous(memory_format=torch.channels_last_3d) if relayout else new
        del value
        state[key] = done[ident]
    return state


def roi_box_in_network_space(roi: np.ndarray, new_shape: Sequence[int], margin: int = 2
                              ) -> tuple[slice, ...] | None:
    """The bounding box of ``roi`` (on the cropped grid) scaled to the resampled grid ``new_shape``,
    widened by ``margin`` voxels on resampled axes so the linear resampling back to the input grid only
    reads exact values; None when ``roi`` is empty (no window runs)."""
    hit = [np.flatnonzero(roi.any(axis=tuple(a for a in range(roi.ndim) if a != axis)))
           for axis in range(roi.ndim)]
    if any(h.size == 0 for h in hit):
        return None
    box = []
    for h, n_in, n_out in zip(hit, roi.shape, new_shape, strict=True):
        scale = n_out / n_in  # skimage's coordinates: out = (in + 0.5) * scale - 0.5
        pad = margin if n_out != n_in else 0  # an axis that is not resampled reads no neighbours
        lo = int(np.floor((h[0] + 0.5) * scale - 0.5)) - pad
        hi = int(np.ceil((h[-1] + 0.5) * scale - 0.5)) + 1 + pad
        box.append(slice(max(lo, 0), min(hi, int(n_out))))
    return tuple(box)


class NnUNetPredictor:
    """Built once per model / folds / device / TTA setting / precision; ``predict`` many images.

    ``precision``: "auto" (SCT's arithmetic: fp32 on every CPU, fp16 autocast on CUDA:
    :func:`precision.resolve_precision`), "fp32", "bf16" or "fp16". The one used is ``self.precision``
    (``self.precision_emulated``: True where the hardware lacks it, see ``precision.py``). A reduced
    precision converts the model's weights in place: a model object serves one precision.
    ``backend``: "torch", "openvino" (CPU, fp32; ``self.network`` is then the current fold's compiled
    network, one fold compiled at a time) or "auto" (:func:`backends.resolve_backend`): ``self.backend``.
    """

    def __init__(self, model: NnUNetModel, *, device: str | torch.device = "cpu", tta: bool = False,
                 ensemble: str = "logits", tile_step: float = 0.5, precision: str = "auto",
                 levers: Levers | None = None, backend: str = "torch") -> None:
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, not {ensemble!r}")
        self.model = model
        self.device = resolve_device(device)
        self.tta = bool(tta)
        self.ensemble = ensemble
        self.tile_step = float(tile_step)
        self.precision = resolve_precision(precision, self.device)
        self.precision_emulated = is_emulated(self.precision, self.device)
        if self.precision_emulated:
            log.warning(emulation_warning(self.precision, self.device))
        self.config = model.config
        self.orientation = str(model.dataset_json.get("image_orientation", "LPI"))
        ori.sct_to_axcodes(self.orientation)  # fail early on a bad dataset.json value
        self._data_kw = _resampling_kwargs(self.config, "data", 3)
        self._prob_kw = _resampling_kwargs(self.config, "probabilities", 1)
        # built without memory ("meta"): the weights come from the checkpoint, random init is wasted time
        with torch.device("meta"):
            network = build_network(model.plans, model.configuration, model.num_input_channels,
                                    model.num_classes)
        self.backend = resolve_backend(backend, str(self.device), self.precision)
        levers = levers or Levers()
        if self.backend == "openvino":  # one window per call (measured best), NCDHW as the converted graph
            levers = replace(levers, batch_size=1, channels_last=False)
        cpu = self.device.type == "cpu"
        self.network = instance_norms_as_group_norms(network) if levers.fast_norm else network
        self.batch_size = max(1, int(levers.batch_size if levers.batch_size is not None else 2 if cpu else 1))
        self.channels_last = cpu if levers.channels_last is None else bool(levers.channels_last)
        self._prepare_weights()
        self._loaded_fold: int | str | None = None
        self._openvino = OpenVinoFolds(model) if self.backend == "openvino" else None
        self._load_fold(model.folds[0])

    def _prepare_weights(self) -> None:
        """The network's weights in ``self.precision``, converted once. On the CPU the network uses the
        checkpoint's tensors themselves (load_state_dict(assign=True)): no second copy of the weights
        (~250 MB for ResEnc-L; bench/RESULTS-engine.md); elsewhere they are copied into the device's."""
        model, reduced = self.model, self.precision != "fp32"
        if model.weights_precision not in (None, self.precision):
            raise ValueError(f"{model.folder}: this model's weights were converted to "
                             f"{model.weights_precision}; load the model again for {self.precision}")
        dtype = torch_dtype(self.precision)
        cast = _ConvCast(conv_state_keys(self.network), dtype, self.precision_emulated) if reduced else None
        self._autocast = dtype if reduced and not self.precision_emulated else None
        self._assign = self.device.type == "cpu"
        if self._assign or self.precision_emulated:  # emulated: rounded on the CPU, then copied as float32
            for fold in model.folds:
                _prepare_cpu_weights(model.state_dicts[fold], self.channels_last and self._assign, cast)
            model.weights_precision = self.precision
            _return_freed_heap()
        if not self._assign:
            self.network = self.network.to_empty(device=self.device)
            if self._autocast is not None:  # load_state_dict casts each fold's weights as it copies them
                convert_convolutions(self.network, self._autocast)
            if self.channels_last:
                self.network = self.network.to(memory_format=torch.channels_last_3d)
        if self.precision_emulated:
            add_rounding_hooks(self.network, dtype)

    @property
    def mirror_axes(self) -> tuple[int, ...] | None:
        return self.model.mirroring_axes if self.tta else None

    def _load_fold(self, fold: int | str) -> None:
        if fold == self._loaded_fold:
            return
        if self._openvino is not None:  # what the sliding loop calls: the fold's compiled network
            self.network = self._openvino.network(fold)
            self._loaded_fold = fold
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
    def predict(self, img: nib.Nifti1Image, roi: Sequence[slice] | None = None,
                tile_step: float | None = None) -> np.ndarray:
        """Class probabilities (n_classes, *img.shape) float32, on the exact grid of ``img``
        (ensembles "logits" and "probabilities"; SCT's vote has no single map: :meth:`predict_maps`).
        ``roi`` and ``tile_step`` as in :meth:`predict_maps`."""
        return self._probabilities_only(self.predict_maps(img, roi=roi, tile_step=tile_step))

    def _probabilities_only(self, maps: ClassMaps) -> np.ndarray:
        if maps.votes is not None:
            raise ValueError("ensemble 'sct' gives a vote and soft maps, not probabilities: use predict_maps")
        return maps.soft

    def predict_maps(self, img: nib.Nifti1Image, roi: Sequence[slice] | None = None,
                     tile_step: float | None = None) -> ClassMaps:
        """The ensemble's per-class maps (``ensemble.ClassMaps``: soft maps, and SCT's fold votes with
        ensemble "sct") on the exact grid of ``img``.

        ``roi``: a box of voxels of ``img`` (one slice per axis); outside it the background class has
        probability 1. The image is normalised and resampled whole, as without ``roi``, and only the
        whole image's sliding windows that overlap the box run, so inside the box the probabilities ARE
        the whole image's (same windows, same weights).
        ``tile_step``: this call's window step (default: the predictor's, nnU-Net's 0.5).
        """
        # SCT: np.asanyarray(dataobj) (scaled by nibabel where the header says so), then float32, laid out
        # as a NIfTI file is read (Fortran order): the z-score's float32 sums follow that memory order
        data = np.asfortranarray(np.asanyarray(img.dataobj), dtype=np.float32)
        if data.ndim != 3:
            raise ValueError(f"expected a 3D image, got shape {data.shape}")
        oriented, reo = ori.to_sct_orientation(data, img.affine, self.orientation)
        zooms = sct_spacing(img, reo)
        roi_mask = None
        if roi is not None:  # the box goes through the same flips and transposes as the image
            roi = tuple(roi)
            box = np.zeros(data.shape, bool)
            box[roi] = True
            roi_mask = ori.xyz_to_zyx(reo.apply(box))
        maps = self.predict_array_maps(ori.xyz_to_zyx(oriented)[None], ori.reverse_spacing(zooms),
                                       roi=roi_mask, tile_step=tile_step)
        out = maps.transformed(lambda a: reo.undo(ori.xyz_to_zyx(a)))
        if roi is not None:
            outside = np.ones(data.shape, bool)
            outside[roi] = False
            out.background_where(outside)
        return out

    # ---- nnU-Net's array path (predict_single_npy_array) -------------------------------------------
    def predict_array(self, data: np.ndarray, spacing: Sequence[float], roi: np.ndarray | None = None,
                      tile_step: float | None = None) -> np.ndarray:
        """``nnUNetPredictor.predict_single_npy_array`` probabilities for ``data`` (c, x, y, z) in
        nnU-Net axis order with ``spacing`` for those axes; ``roi`` (bool, x, y, z): only the windows
        that overlap its bounding box are run (exact inside that box, see :meth:`predict`)."""
        return self._probabilities_only(self.predict_array_maps(data, spacing, roi=roi, tile_step=tile_step))

    @torch.inference_mode()
    def predict_array_maps(self, data: np.ndarray, spacing: Sequence[float], roi: np.ndarray | None = None,
                           tile_step: float | None = None) -> ClassMaps:
        """:meth:`predict_array` as per-class maps (any ensemble; SCT's per-fold segmentations are those
        of ``predict_single_npy_array`` with one fold: argmax on the input grid, background outside the
        non-zero box)."""
        tf = [int(i) for i in self.model.plans.get("transpose_forward", [0, 1, 2])]
        tb = [int(i) for i in self.model.plans.get("transpose_backward", np.argsort(tf))]
        # a copy in the input's memory order (numpy's astype, order "K", as SCT and nnU-Net copy it), then
        # views: the z-score's float32 sums run in the same order as nnU-Net's, bit for bit
        data = np.array(data, dtype=np.float32, order="K").transpose([0, *[i + 1 for i in tf]])
        spacing_t = [float(spacing[i]) for i in tf]
        shape_before = data.shape[1:]
        bbox, mask = nonzero_bbox(data)
        data = data[(slice(None), *bbox_slices(bbox))]
        shape_cropped = data.shape[1:]
        target = [float(s) for s in self.config["spacing"]]
        new_shape = compute_new_shape(shape_cropped, spacing_t, target)
        # normalised on the whole (non-zero) image, as nnU-Net does, whatever the roi: the network sees
        # the same values in the windows it runs
        data = np.ascontiguousarray(normalize(data, mask, self.config,
                                              self.model.plans.get("foreground_intensity_properties_per_channel")))
        data = resample_to_shape(data, new_shape, spacing_t, target, **self._data_kw)
        region = None
        back = [0, *[i + 1 for i in tb]]
        if roi is not None:
            roi = roi.transpose(tf)[bbox_slices(bbox)]
            region = roi_box_in_network_space(roi, new_shape)
            if region is None:  # the roi holds no image voxel: nothing to run, background everywhere
                full = self._background(shape_before)
                return full.transformed(lambda a: a.transpose(back), contiguous=False)
        step = self.tile_step if tile_step is None else float(tile_step)
        maps = self._ensemble(torch.from_numpy(np.ascontiguousarray(data)), shape_cropped, target, spacing_t,
                              region, step)
        # background outside the crop, as nnU-Net's revert_cropping_on_probabilities
        full = maps.uncropped(tuple(shape_before), bbox_slices(bbox))
        return full.transformed(lambda a: a.transpose(back), contiguous=False)

    def _background(self, shape: Sequence[int]) -> ClassMaps:
        n = self.model.num_classes
        soft = np.zeros((n, *shape), np.float32)
        votes = np.zeros((n, *shape), np.uint8) if self.ensemble == "sct" else None
        return ClassMaps(soft, votes, len(self.model.folds)).background_where(np.ones(tuple(shape), bool))

    def _fold_logits(self, data: torch.Tensor, fold: int | str, out: torch.Tensor | None,
                     region: tuple[slice, ...] | None, step: float) -> torch.Tensor:
        """One fold's Gaussian-weighted logit sum (float16, as nnU-Net's), added into ``out``."""
        self._load_fold(fold)
        run = WindowRun(mirror_axes=self.mirror_axes, step=step, batch_size=self.batch_size,
                        device=self.device, channels_last=self.channels_last, autocast=self._autocast)
        return sliding_window_logits(self.network, data, self.config["patch_size"], self.model.num_classes,
                                     run, out=out, region=region)

    def _weights(self, shape: Sequence[int], step: float) -> torch.Tensor:
        """nnU-Net's divisor: the sum of the windows' Gaussian weights per voxel (float16)."""
        return weight_sum(shape, self.config["patch_size"], step)

    def _resampled_logits(self, logits: torch.Tensor, shape: Sequence[int], spacing_from: Sequence[float],
                          spacing_to: Sequence[float]) -> np.ndarray:
        """Logits on the input (cropped) grid: nnU-Net's ``resampling_fn_probabilities`` (float16 in,
        float64 arithmetic, float16 out, as nnU-Net's)."""
        return np.ascontiguousarray(resample_to_shape(logits.numpy(), shape, spacing_from, spacing_to,
                                                      **self._prob_kw))

    def _to_probabilities(self, logits: torch.Tensor, shape: Sequence[int], spacing_from: Sequence[float],
                          spacing_to: Sequence[float]) -> np.ndarray:
        back = self._resampled_logits(logits, shape, spacing_from, spacing_to)
        return torch.softmax(torch.from_numpy(back).float(), 0).numpy()  # nnU-Net: softmax of float32

    def _ensemble(self, data: torch.Tensor, shape: Sequence[int], spacing_from: Sequence[float],
                  spacing_to: Sequence[float], region: tuple[slice, ...] | None, step: float) -> ClassMaps:
        """The folds combined, on the cropped input grid (one fold's maps in memory at a time)."""
        weights = self._weights(data.shape[1:], step)
        folds = self.model.folds
        if self.ensemble == "logits":
            # nnU-Net: each fold's float16 sum divided by the float16 weights, the folds added in float16,
            # then divided by their number
            acc = None
            for fold in folds:
                logits = self._fold_logits(data, fold, None, region, step)
                logits /= weights
                acc = logits if acc is None else acc.add_(logits)
            if len(folds) > 1:
                acc /= len(folds)
            return logit_mean_maps(self._to_probabilities(acc, shape, spacing_from, spacing_to), len(folds))
        vote = SctVote() if self.ensemble == "sct" else None
        probs = None
        for fold in folds:  # one fold at a time, as predict_single_npy_array with that fold alone
            logits = self._fold_logits(data, fold, None, region, step)
            logits /= weights
            back = self._resampled_logits(logits, shape, spacing_from, spacing_to)
            p = torch.softmax(torch.from_numpy(back).float(), 0).numpy()
            if vote is not None:
                vote.add(back, p)
            else:
                probs = p if probs is None else probs + p
        if vote is not None:
            return vote.result()
        return logit_mean_maps(probs / len(folds), len(folds))
