"""Which runtime computes the nnU-Net networks (``--backend``), and the OpenVINO folds of a predictor.

``torch`` runs the network modules; ``openvino`` (CPU, float32 only) runs each fold's network converted
by ``openvino_runtime`` (the same float32 function, faster on a CPU: bench/RESULTS-openvino.md).
``auto``: OpenVINO on the CPU in float32 where it imports, torch otherwise (CUDA, reduced precisions).
Its results do not depend on the thread count (the instance norms it computes: ``axisnorm``).

Converted models are cached (``openvino_runtime.IrCache``): read from ``<model folder>/openvino`` (an
installer may fill it), written to ``$CORDLESION_OPENVINO_CACHE`` (the BIDS App sets it to
``<work dir>/openvino``) or, for the single-image command, ``$XDG_CACHE_HOME/cordlesion/openvino``.
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    import torch

    from .modelfolder import NnUNetModel
    from .openvino_runtime import ConversionKey, IrCache, OpenVinoBackend

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino")
#: the write folder of the converted models (the BIDS App: ``<work dir>/openvino``)
CACHE_ENV = "CORDLESION_OPENVINO_CACHE"
#: a model folder's subfolder read as a cache of converted models
MODEL_CACHE = "openvino"


def resolve_backend(requested: str, device: str, precision: str) -> str:
    """``torch`` or ``openvino`` for ``--backend`` ``requested`` on ``device`` (a resolved ``cpu``/``cuda``,
    as str or torch.device) in ``precision`` (resolved). ValueError where OpenVINO cannot serve: CUDA, or
    a reduced precision (its f32 path is the only one that computes SCT's arithmetic)."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {requested!r}")
    cpu_fp32 = str(device).split(":")[0] == "cpu" and precision == "fp32"
    if requested == "auto":
        return "openvino" if cpu_fp32 and openvino_installed() else "torch"
    if requested == "openvino" and not cpu_fp32:
        raise ValueError(f"--backend openvino runs float32 on a CPU only (here: {precision} on {device}); "
                         "use --backend torch")
    return requested


def openvino_installed() -> bool:
    """Whether OpenVINO can be imported here, without importing it (``--backend auto``)."""
    return importlib.util.find_spec("openvino") is not None


def write_dir() -> Path:
    """Where converted models are stored: ``$CORDLESION_OPENVINO_CACHE``, else the user's cache folder."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cordlesion" / MODEL_CACHE


@lru_cache(maxsize=64)
def file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a checkpoint (cached per process by path, size and mtime)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_sha256(path: Path) -> str:
    st = os.stat(path)
    return file_sha256(str(path), st.st_size, st.st_mtime_ns)


class OpenVinoFolds:
    """The compiled network of one fold at a time (a compiled ResEnc-L fold holds about twice its
    checkpoint: bench/RESULTS-openvino.md); :meth:`network` releases the previous fold's before it
    compiles the next. The checkpoint tensors of a fold whose converted model is in the cache are let go
    (read again from the checkpoint file only if the entry disappears), so with a filled cache the process
    holds one compiled fold, not the folds' weights too. Threads: torch's count in this process
    (``--omp-nthreads`` / ``--threads``, set once per worker)."""

    def __init__(self, model: NnUNetModel, cache: IrCache | None = None,
                 threads: Callable[[], int] | None = None) -> None:
        from .openvino_runtime import IrCache, runtime_version

        runtime_version()  # OpenVINO missing: ModelError now, not at the first image
        self.model = model
        self.cache = cache or IrCache((Path(model.folder) / MODEL_CACHE,), write_dir())
        self._threads = threads or _torch_threads
        self.fold: int | str | None = None
        self.threads: int | None = None
        self.current: OpenVinoBackend | None = None
        self.origins: list[str] = []
        """Where each compiled fold came from (``cache``, ``converted``, ``converted in memory``)."""
        for fold in model.folds:
            if self.cache.find(self._key(fold)) is not None:
                self._let_go(fold)

    def network(self, fold: int | str) -> OpenVinoBackend:
        """The compiled network of ``fold`` (compiled now unless it is the current one)."""
        from .openvino_runtime import load_backend

        threads = self._threads()  # a compiled model keeps its thread count, and the count moves the sums
        if fold == self.fold and self.current is not None and threads == self.threads:
            return self.current
        self.current, self.fold = None, None
        gc.collect()  # the compiled model's memory goes before the next fold's is allocated
        self.current = load_backend(self._key(fold), lambda: self._network(fold), cache=self.cache,
                                    threads=threads)
        self.fold, self.threads = fold, threads
        self.origins.append(self.current.origin)
        if self.current.origin == "converted":  # stored: the next process reads the cache
            self._let_go(fold)
        log.info("OpenVINO: fold %s from %s", fold, self.current.origin)
        return self.current

    def _key(self, fold: int | str) -> ConversionKey:
        from .openvino_runtime import model_key

        path = self.model.checkpoint_paths[fold]
        try:
            return model_key(self.model, checkpoint_sha256(path), batch=1)
        except OSError as exc:
            raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from exc

    def _network(self, fold: int | str) -> torch.nn.Module:
        """The fold's torch network for a conversion, its weights read again if they were let go."""
        from .modelfolder import load_checkpoint
        from .openvino_runtime import fold_network

        if not self.model.state_dicts.get(fold):
            path = self.model.checkpoint_paths[fold]
            self.model.state_dicts[fold] = load_checkpoint(path)["network_weights"]
        return fold_network(self.model, fold)

    def _let_go(self, fold: int | str) -> None:
        self.model.state_dicts[fold] = {}
        gc.collect()
        return_freed_heap()


def return_freed_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them, so the originals of converted or released
    weights would stay in the process's memory, ~250 MB for ResEnc-L); a no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


__all__ = ["BACKENDS", "CACHE_ENV", "MODEL_CACHE", "OpenVinoFolds", "checkpoint_sha256", "openvino_installed",
           "resolve_backend", "return_freed_heap", "write_dir"]
