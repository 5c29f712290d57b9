"""ONNX engine for the legacy ``sct_deepseg_lesion`` models (``t2``, ``t2_ax``, ``t2s``) on onnxruntime.

The official files (``t2_lesion.onnx`` ...) take one float32 input ``input_1`` of shape
``(N, 1, 48, 48, 48)`` (channels first, SCT feeds N = 1) and return ``predictions`` of the same shape:
the sigmoid lesion probability of every voxel. :class:`OnnxModel` reads the names and the patch
shape from the file rather than assuming them, and feeds one patch at a time when the file fixes
the batch size.

Example::

    model = OnnxModel("t2_lesion.onnx", device="cpu")
    probs = model.run(np.zeros((2, 1, 48, 48, 48), np.float32))   # -> (2, 1, 48, 48, 48)
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import ModelError

log = logging.getLogger(__name__)

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"


def providers_for(device: str) -> list[str | tuple[str, dict]]:
    """onnxruntime execution providers for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``).

    ``auto`` takes CUDA when this onnxruntime build offers it. An explicit ``cuda`` that the build
    cannot give raises :class:`ModelError` instead of silently running on the CPU.
    """
    dev = str(device).lower()
    available = ort.get_available_providers()
    if dev == "cpu":
        return [_CPU]
    if dev == "auto":
        return [_CUDA, _CPU] if _CUDA in available else [_CPU]
    if dev.startswith("cuda"):
        if _CUDA not in available:
            raise ModelError(f"device {device!r}: this onnxruntime has no CUDA provider "
                             f"({', '.join(available)}); install onnxruntime-gpu or use --device cpu")
        index = int(dev.split(":", 1)[1]) if ":" in dev else 0
        return [(_CUDA, {"device_id": index}), _CPU]
    raise ModelError(f"device {device!r}: expected cpu, cuda, cuda:N or auto")


class OnnxModel:
    """One ONNX lesion model, loaded once and run on batches of patches.

    Attributes: ``path``, ``input_name``, ``output_name``, ``patch_shape`` (spatial, e.g. (48, 48, 48)),
    ``fixed_batch`` (the batch size the file fixes, or None), ``metadata`` (the file's metadata_props).
    """

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: ONNX model file not found")
        options = ort.SessionOptions()
        # SCT turns the CPU arena off: with it onnxruntime kept ~6 GB for a 5 MB model (SCT #3738, #4612)
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=providers_for(device))
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"{self.path}: cannot load ONNX model ({exc})") from exc
        self._read_signature()
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        log.debug("%s on %s: input %s %s, output %s", self.path.name, self.session.get_providers()[0],
                  self.input_name, self.patch_shape, self.output_name)

    def _read_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1 or len(inputs[0].shape) != 5:
            raise ModelError(f"{self.path}: expected one 5D input (N, 1, X, Y, Z), got "
                             f"{[(i.name, i.shape) for i in inputs]}")
        shape = inputs[0].shape
        if not all(isinstance(s, int) for s in shape[1:]) or shape[1] != 1:
            raise ModelError(f"{self.path}: input {inputs[0].name} shape {shape}, expected (N, 1, X, Y, Z)")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.patch_shape: tuple[int, int, int] = (int(shape[2]), int(shape[3]), int(shape[4]))
        self.fixed_batch: int | None = int(shape[0]) if isinstance(shape[0], int) else None

    @property
    def provider(self) -> str:
        """The execution provider onnxruntime actually uses."""
        return self.session.get_providers()[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """``(N, 1, *patch_shape)`` float32 patches -> ``(N, 1, *patch_shape)`` float32 probabilities."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 5 or batch.shape[1] != 1 or tuple(batch.shape[2:]) != self.patch_shape:
            raise ValueError(f"{self.path.name}: batch {batch.shape}, expected (N, 1, {self.patch_shape})")
        if len(batch) == 0:
            return np.zeros_like(batch)
        n = len(batch)
        step = self.fixed_batch or n
        if n % step:  # a file with a fixed batch size > 1: pad the last chunk with empty patches
            batch = np.concatenate([batch, np.zeros((step - n % step, *batch.shape[1:]), np.float32)])
        parts = [self.session.run([self.output_name], {self.input_name: batch[i:i + step]})[0]
                 for i in range(0, len(batch), step)]
        return np.concatenate(parts, axis=0)[:n].astype(np.float32, copy=False)
