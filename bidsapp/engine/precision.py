"""Which numeric precision the network runs in on a device, and how a reduced one is applied.

``resolve_precision("auto", device)`` is SCT 7.3's arithmetic on that device: "fp32" on a CPU (what SCT
and nnU-Net compute there, whatever the CPU model, so a mask never depends on the node a job landed on)
and "fp16" on CUDA (nnU-Net's own GPU mode: float16 autocast). bf16 and fp16 on a CPU run only when
asked for: faster on some CPUs, not SCT's masks. Whether a CPU has the dot products that make them
fast (``avx512_bf16`` / AMX in ``/proc/cpuinfo``, and a torch build whose oneDNN uses them) is read on the
machine that runs, never assumed; without them they are emulated. Importing this module imports no
torch (the CLIs resolve a precision before loading anything); the detection and the network helpers
import it when called.

How a reduced precision runs (``NnUNetPredictor`` applies it):

- native: convolution weights converted once to the precision (channels-last on the CPU), the image
  converted once, the forward pass under ``torch.autocast`` (ops without a reduced kernel, e.g. CPU
  ``avg_pool3d``, run in float32), logits accumulated in float32;
- emulated (the precision asked for explicitly where the hardware lacks it): float32 kernels on
  operands rounded to the precision (convolution weights once; each convolution's input and output
  per call). The products of two bfloat16 values are exact in float32 and the sums are float32, as
  in bf16 hardware, so the results are those of the precision but nothing gets faster. torch's own
  bfloat16 kernels on such a CPU are the reference loops, 20-200x slower than float32
  (bench/RESULTS-engine.md), which is why we do not run them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the functions that need it
    import torch

__all__ = ["ARITHMETIC", "OPENVINO_GRAPH", "PRECISIONS", "CpuFeatures", "add_rounding_hooks",
           "conv_state_keys",
           "convert_convolutions", "cpu_features", "emulation_warning", "is_emulated", "parse_cpu_flags",
           "resolve_precision", "torch_dtype"]

log = logging.getLogger(__name__)

#: the engine's arithmetic around the network, in the up-to-date parameters of every nnU-Net output: a new
#: value whenever a change to it moves voxels, so outputs of an older engine are computed again.
#: "sct7.3": SCT 7.3's per-fold path (its rounded spacing, nnunetv2-neuropoly's float16 window sums)
ARITHMETIC = "sct7.3"
#: how the network is written for OpenVINO (``engine.axisnorm``), in the up-to-date parameters of OpenVINO
#: outputs and in its cache key: "axis-mean-1", InstanceNorm as axis-by-axis means (here, free of torch,
#: so that the settings name it without importing torch; a change that moves a logit needs a new value)
OPENVINO_GRAPH = "axis-mean-1"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: /proc/cpuinfo flags of the dot-product instructions that make a reduced precision faster on a CPU
NATIVE_CPU_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU and torch build offer: ``torch_bf16`` / ``torch_fp16`` (oneDNN's own checks,
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` / ``_fp16_``; true on any AVX-512 CPU, even where
    bfloat16 is only converted, not computed), ``capability`` (``torch.backends.cpu.get_cpu_capability``)
    and ``flags`` (``/proc/cpuinfo``; None where there is none to read)."""

    torch_bf16: bool
    torch_fp16: bool
    capability: str
    flags: frozenset[str] | None

    def native(self, precision: str) -> bool:
        """True when ``precision`` has native dot products here. With the flags known, a flag of
        :data:`NATIVE_CPU_FLAGS` must be set; without them (not Linux), torch's capability must name
        AMX (the one capability that implies bfloat16 / float16 dot products)."""
        if precision == "fp32":
            return True
        built = self.torch_bf16 if precision == "bf16" else self.torch_fp16
        if self.flags is None:
            return built and "AMX" in self.capability.upper()
        return built and any(f in self.flags for f in NATIVE_CPU_FLAGS[precision])

    def describe(self) -> str:
        flags = "unknown" if self.flags is None else " ".join(
            sorted(f for f in self.flags if f.startswith(("avx512", "amx", "avx2")))) or "none"
        return (f"torch CPU capability {self.capability}, oneDNN bf16 {self.torch_bf16}, "
                f"fp16 {self.torch_fp16}; CPU flags: {flags}")


def parse_cpu_flags(cpuinfo: str) -> frozenset[str] | None:
    """The ``flags`` of the first processor in a ``/proc/cpuinfo`` text (None when absent)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's :class:`CpuFeatures` (read once per process)."""
    import torch

    try:
        flags = parse_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        flags = None
    mkldnn = torch.ops.mkldnn
    return CpuFeatures(torch_bf16=bool(mkldnn._is_mkldnn_bf16_supported()),
                       torch_fp16=bool(mkldnn._is_mkldnn_fp16_supported()),
                       capability=str(torch.backends.cpu.get_cpu_capability()), flags=flags)


def _device_type(device: Any) -> str:
    return str(getattr(device, "type", device)).split(":")[0]


def _cuda_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(requested: str, device: Any = "cpu", features: CpuFeatures | None = None) -> str:
    """The precision ("fp32", "bf16" or "fp16") to run ``requested`` in on ``device`` (a torch device
    or its name, already resolved: "cpu", "cuda", "cuda:1", ...). "auto": SCT's arithmetic there, fp16
    autocast on CUDA and fp32 everywhere else, on every CPU; an explicit precision is kept (see
    :func:`is_emulated`). ``features`` is unused by "auto" (kept so callers can pass a CPU's)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    if requested != "auto":
        return requested
    return "fp16" if _device_type(device) == "cuda" else "fp32"


def is_emulated(precision: str, device: Any = "cpu", features: CpuFeatures | None = None) -> bool:
    """True when ``precision`` on ``device`` has no native arithmetic and is therefore emulated (float32
    kernels on rounded operands): bf16 / fp16 on a CPU without their instructions, bf16 on a GPU
    without bfloat16, a reduced precision on any other device."""
    if precision == "fp32":
        return False
    kind = _device_type(device)
    if kind == "cpu":
        return not (features or cpu_features()).native(precision)
    if kind == "cuda":
        return precision == "bf16" and not _cuda_bf16()
    return True


def emulation_warning(precision: str, device: Any, features: CpuFeatures | None = None) -> str:
    """The one-line warning logged when ``precision`` is emulated on ``device``."""
    where = (features or cpu_features()).describe() if _device_type(device) == "cpu" else str(device)
    return (f"precision {precision} requested on {_device_type(device)} without native {precision} "
            f"arithmetic ({where}): emulated in float32 kernels on operands rounded to {precision}; "
            f"results as in {precision}, not faster than fp32")


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of "fp32" / "bf16" / "fp16"."""
    import torch

    return getattr(torch, _DTYPES[precision])


def _conv_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def conv_state_keys(network: torch.nn.Module) -> frozenset[str]:
    """State-dict keys of every convolution's weight and bias, under every name the module has
    (nnU-Net's decoder holds the encoder: ``decoder.encoder.*`` are the same tensors)."""
    keys = set()
    for name, module in network.named_modules(remove_duplicate=False):
        if isinstance(module, _conv_types()):
            keys.update(f"{name}.{p}" if name else p for p, v in module.named_parameters(recurse=False)
                        if v is not None)
    return frozenset(keys)


def convert_convolutions(network: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Every convolution's parameters in ``dtype`` (in place; norms and the rest stay float32)."""
    for module in network.modules():
        if isinstance(module, _conv_types()):
            module.to(dtype)
    return network


def add_rounding_hooks(network: torch.nn.Module, dtype: torch.dtype) -> list:
    """Emulation: round each convolution's input and output to ``dtype`` (values kept float32). The
    weights are rounded once by the caller. Returns the hook handles."""
    import torch

    def round_input(module, args):
        return tuple(a.to(dtype).float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)

    def round_output(module, args, out):
        return out.to(dtype).float()

    handles = []
    for module in network.modules():
        if isinstance(module, _conv_types()):
            handles.append(module.register_forward_pre_hook(round_input))
            handles.append(module.register_forward_hook(round_output))
    return handles
