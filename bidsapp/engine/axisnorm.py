"""Instance normalisation written for OpenVINO: its statistics summed one spatial axis at a time.

OpenVINO fuses ``InstanceNorm`` into its MVN kernel, which, on the channel-blocked layout its convolutions
leave, sums a channel's whole window in one float32 running sum per thread. On an nnU-Net window that sum
runs over ~500,000 voxels: the logits of a ResEnc-L network at 16x192x160 ended up 6.7e-3 from a float64
reference at 2 threads and 1.6e-2 at 1 thread (torch float32: 8e-5), and the result depended on the thread
count. :class:`AxisMeanInstanceNorm` computes the same function as ``nn.InstanceNorm*d`` (mean, biased
variance, ``eps`` inside the square root, per-channel affine) with means taken one axis at a time (last
axis first): every float32 sum is at most one axis long (<= a few hundred terms), each output is summed by
one thread in a fixed order, so the result is the same for any thread count and within 2x of torch's
error (tests/test_axisnorm.py, bench/openvino_norm.py). The price: ~5-10 % of the network's time.

Only the graph handed to OpenVINO uses it (``openvino_runtime.convert``); torch runs the original layers.
A change here that moves a logit needs a new ``precision.OPENVINO_GRAPH`` (the cache key and the
up-to-date parameters carry it, so no entry or output built before meets it).
"""
from __future__ import annotations

import torch
from torch import nn

_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


class AxisMeanInstanceNorm(nn.Module):
    """``nn.InstanceNorm*d`` (batch statistics, optional affine) with axis-by-axis means."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.eps = float(norm.eps)
        self.weight = norm.weight  # None without affine; the checkpoint's own tensors, not copies
        self.bias = norm.bias

    @staticmethod
    def _mean(x: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-channel mean over the spatial axes, shaped (N, C, 1, ...)."""
        spatial = x.dim() - 2
        axis, keep = x.dim() - 1, True
        for _ in range(spatial):
            # keepdim alternates: OpenVINO merges consecutive reductions alike in keep_dims into one
            # (ReduceMerge), which would give back the long single sum
            x = x.mean(dim=axis, keepdim=keep)
            axis, keep = axis - 1, not keep
        while x.dim() < spatial + 2:
            x = x.unsqueeze(-1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self._mean(x)
        scale = torch.rsqrt(self._mean(centred * centred) + self.eps)
        if self.weight is None:
            return centred * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return centred * (scale * self.weight.view(shape)) + self.bias.view(shape)


def with_axis_mean_norms(network: nn.Module) -> nn.Module:
    """``network`` with every instance norm that uses batch statistics replaced, in place; returned."""
    for name, child in network.named_children():
        if isinstance(child, _INSTANCE_NORMS) and not child.track_running_stats:
            setattr(network, name, AxisMeanInstanceNorm(child))
        else:
            with_axis_mean_norms(child)
    return network


__all__ = ["AxisMeanInstanceNorm", "with_axis_mean_norms"]
