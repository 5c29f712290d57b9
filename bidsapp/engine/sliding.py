"""Sliding-window inference with nnU-Net's tiling: centred zero padding to the patch, evenly spread
tiles at step 0.5, Gaussian importance (sigma = patch / 8), optional mirroring TTA.

MONAI's ``sliding_window_inference`` clamps its last tile to the border instead of spreading the
tiles evenly, and builds its Gaussian analytically; both shift the logits by a few percent away from
nnU-Net's. We therefore keep nnU-Net's schedule and weights and write the loop ourselves (short,
several tiles per forward pass). The arithmetic is that of nnunetv2 (SCT 7.3's fork 2.6.2 and stock
2.8.1 alike, ``_internal_predict_sliding_window_return_logits``): the Gaussian is computed in float64
and stored in float16, each tile's logits (float32 on a CPU, float16 under CUDA autocast) are multiplied
by it and added IN FLOAT16 to a float16 sum, in nnU-Net's tile order; the weights are summed in float16
and the division is float16. The float16 sums are what SCT's masks are made of (17 % of a 32x96x96
Gaussian is subnormal in float16), so we keep them: docs/ENGINE.md.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy.ndimage import gaussian_filter


@lru_cache(maxsize=4)
def gaussian_weights(patch: tuple[int, ...], sigma_scale: float = 1.0 / 8, scale: float = 10.0) -> np.ndarray:
    """nnU-Net's ``compute_gaussian`` (float16): a blurred delta, max ``scale``, zeros replaced by the min.
    The float64 -> float16 conversion is torch's, as nnU-Net's (it can round differently from numpy's)."""
    tmp = np.zeros(patch)
    tmp[tuple(p // 2 for p in patch)] = 1
    g = torch.from_numpy(gaussian_filter(tmp, [p * sigma_scale for p in patch], 0, mode="constant", cval=0))
    g /= torch.max(g) / scale
    g = g.to(torch.float16)
    g[g == 0] = torch.min(g[g != 0])
    return g.numpy()


def tile_starts(image_size: Sequence[int], patch: Sequence[int], step: float = 0.5) -> list[list[int]]:
    """nnU-Net's ``compute_steps_for_sliding_window``: tile origins per axis, evenly spread."""
    starts = []
    for size, p in zip(image_size, patch, strict=True):
        n = int(np.ceil((size - p) / (p * step))) + 1
        stride = (size - p) / (n - 1) if n > 1 else 0
        starts.append([int(np.round(stride * i)) for i in range(n)])
    return starts


def pad_to_patch(data: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``pad_nd_image(data, patch, "constant", 0)``: centred padding (extra voxel at the high end)
    of the last axes up to ``patch``; returns the padded tensor and the slicer that undoes it."""
    spatial = data.shape[-len(patch):]
    pads, slicer = [], []
    for size, p in zip(spatial, patch, strict=True):
        total = max(p - size, 0)
        low = total // 2
        pads.append((low, total - low))
        slicer.append(slice(low, low + size))
    if any(sum(p) for p in pads):
        flat = [v for lo_hi in reversed(pads) for v in lo_hi]
        data = torch.nn.functional.pad(data, flat, mode="constant", value=0.0)
    return data, tuple(slicer)


def mirror_combinations(axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Flip-axis sets nnU-Net adds to the plain pass (all non-empty combinations), on 5D tensors."""
    if not axes:
        return []
    dims = [a + 2 for a in axes]
    return [c for r in range(1, len(dims) + 1) for c in itertools.combinations(dims, r)]


@dataclass(frozen=True)
class WindowRun:
    """How the windows run: ``mirror_axes`` (TTA), ``step`` (fraction of the patch), ``batch_size``
    (windows per forward pass), ``device``, ``channels_last`` (NDHWC windows, for a channels-last
    network) and ``autocast``: the reduced dtype the network computes in (None: as its weights, float32).
    """

    mirror_axes: tuple[int, ...] | None = None
    step: float = 0.5
    batch_size: int = 1
    device: torch.device | str = "cpu"
    channels_last: bool = False
    autocast: torch.dtype | None = None


def _forward(network: torch.nn.Module, x: torch.Tensor, mirror: list[tuple[int, ...]]) -> torch.Tensor:
    """The network's logits for ``x``, mirrored passes averaged: float16 as nnU-Net's under float16
    autocast, else float32 (a no-op cast in float32; bf16 logits are widened before the weighting)."""
    out = network(x)
    if out.dtype != torch.float16:
        out = out.float()
    for axes in mirror:
        out += torch.flip(network(torch.flip(x, axes)), axes)
    if mirror:
        out /= len(mirror) + 1
    return out


def sliding_window_logits(network: torch.nn.Module, data: torch.Tensor, patch: Sequence[int],
                          num_classes: int, run: WindowRun | None = None, *, out: torch.Tensor | None = None,
                          region: Sequence[slice] | None = None) -> torch.Tensor:
    """Gaussian-weighted sum of tile logits for ``data`` (c, x, y, z), as nnU-Net accumulates them.

    ``region`` (a box of ``data``'s voxels): only the tiles that overlap it run. Every tile covering a
    voxel of the box overlaps the box, so inside it the sum is exactly the whole image's; outside it
    the sum is partial (callers discard it).

    Returns the UNNORMALISED sum (num_classes, x, y, z) float16 on the CPU (divide by
    :func:`weight_sum`, in float16, as nnU-Net), added into ``out`` if given.
    """
    run = run or WindowRun()
    patch = tuple(int(p) for p in patch)
    padded, unpad = pad_to_patch(data, patch)
    spatial = tuple(padded.shape[1:])
    acc = torch.zeros((num_classes, *spatial), dtype=torch.float16)
    g = torch.from_numpy(gaussian_weights(patch)).to(run.device)
    mirror = mirror_combinations(run.mirror_axes)
    slicers = [tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
               for starts in itertools.product(*tile_starts(spatial, patch, run.step))]
    if region is not None:  # region in padded coordinates, then the tiles that overlap it
        region = [slice(r.start + u.start, r.stop + u.start) for r, u in zip(region, unpad, strict=True)]
        slicers = [t for t in slicers
                   if all(a.start < b.stop and b.start < a.stop for a, b in zip(t, region, strict=True))]
    padded = padded.to(run.device)
    autocast = contextlib.nullcontext()
    if run.autocast is not None:  # the image converted once, not each window
        padded = padded.to(run.autocast)
        autocast = torch.autocast(torch.device(run.device).type, dtype=run.autocast)
    for i in range(0, len(slicers), run.batch_size):
        batch = slicers[i:i + run.batch_size]
        x = torch.stack([padded[(slice(None), *s)] for s in batch])
        if run.channels_last:  # oneDNN's fast 3D convolutions want NDHWC (the network was converted too)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with autocast:
            logits = _forward(network, x, mirror)
        logits *= g
        logits = logits.cpu()
        for j, s in enumerate(batch):
            # nnU-Net: float16 sum += float32 (or float16) tile, rounded to float16 at each add
            acc[(slice(None), *s)] += logits[j]
    acc = acc[(slice(None), *unpad)]
    if out is None:
        return acc
    out += acc
    return out


def weight_sum(shape: Sequence[int], patch: Sequence[int], step: float = 0.5) -> torch.Tensor:
    """Sum of Gaussian weights per voxel of an image of ``shape`` (nnU-Net's divisor ``n_predictions``,
    summed in float16 in tile order as nnU-Net does)."""
    patch = tuple(int(p) for p in patch)
    spatial = [max(s, p) for s, p in zip(shape, patch, strict=True)]
    dummy = torch.zeros((1, *shape))
    _, unpad = pad_to_patch(dummy, patch)
    g = torch.from_numpy(gaussian_weights(patch))
    n = torch.zeros(spatial, dtype=torch.float16)
    for starts in itertools.product(*tile_starts(spatial, patch, step)):
        n[tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))] += g
    return n[unpad]
