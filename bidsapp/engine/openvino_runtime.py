"""An nnU-Net network on OpenVINO's CPU runtime: the same float32 function as torch, computed faster.

The sliding-window loop calls ``backend(x)`` where it would call ``network(x)``::

    backend = fold_backend(model, fold, checkpoint_sha256=sha, cache=IrCache(write_dir=work / "openvino"),
                           threads=2)
    logits = backend(x)      # x: torch (N, C, *patch) float32 -> torch (N, classes, *patch) float32

The network (``network.build_network`` + the fold's weights, its instance norms written as
``axisnorm.AxisMeanInstanceNorm``: OpenVINO's own MVN kernel sums too long in float32) is traced once at
its smallest input (:func:`trace_shape`) and converted for the window's shape with
``openvino.convert_model``; the converted model (OpenVINO IR,
float32 weights) is cached under a name derived from :class:`ConversionKey` (checkpoint sha256, network,
window, batch, precision, OpenVINO version, graph version), so a changed checkpoint, runtime or graph
never meets a stale entry. Compiled with ``INFERENCE_PRECISION_HINT=f32`` (never bf16/fp16, whatever the CPU),
``PERFORMANCE_HINT=LATENCY`` and the worker's thread count. OpenVINO is imported on first use only.

Several workers, one conversion: entries are written to a temporary folder and renamed into place
(readers never see half an entry), under an advisory lock per entry (the second worker waits and then
reads the first one's entry; where the file system has no locks, the last rename wins and the loser's
copy is dropped). A read-only or unwritable cache still works: the model is converted in memory.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ModelError
from . import axisnorm
from .network import architecture, build_network
from .precision import OPENVINO_GRAPH

if TYPE_CHECKING:
    from .modelfolder import NnUNetModel

log = logging.getLogger(__name__)

#: the pin of requirements.txt; a run reports the version it found (part of the cache key)
REQUIREMENT = "openvino==2026.4.1"
PRECISION = "f32"
#: files of one cache entry; META records the key and the sha256 of the other two
XML, BIN, META = "model.xml", "model.bin", "meta.json"


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise ModelError(f"the OpenVINO backend needs {REQUIREMENT} (pip install {REQUIREMENT}), "
                         f"or use --backend torch") from exc
    return openvino


def runtime_version() -> str:
    """OpenVINO's full version string (``2026.4.1-22982-...``): builds differ in their kernels."""
    return str(_openvino().get_version())


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    return _openvino().Core()


# ---- what a converted model is specialised for ---------------------------------------------------
@dataclass(frozen=True)
class ConversionKey:
    """Everything the converted model depends on; equal keys give the same model, bit for bit."""

    checkpoint_sha256: str
    """sha256 of the fold's checkpoint file (the weights)."""
    network_sha256: str
    """sha256 of the plans' network (class, arguments, channels, classes): :func:`network_sha256`."""
    window: tuple[int, ...]
    """The input shape, ``(batch, channels, *patch)``; the model is static in it."""
    precision: str
    runtime: str
    """``runtime_version()``."""
    graph: str = OPENVINO_GRAPH
    """How the network is written for the conversion (``precision.OPENVINO_GRAPH``: ``axisnorm``)."""

    def name(self) -> str:
        """The cache entry's folder name: readable prefix, then a digest of every field."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]
        return f"{self.checkpoint_sha256[:12]}-{'x'.join(map(str, self.window))}-{self.precision}-{digest}"


def network_sha256(plans: dict, configuration: str, channels: int, classes: int) -> str:
    """sha256 of what ``network.build_network`` builds from these plans (deep supervision off)."""
    text = json.dumps({"architecture": architecture(plans, configuration), "channels": int(channels),
                       "classes": int(classes)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def model_key(model: NnUNetModel, checkpoint_sha256: str, batch: int = 1) -> ConversionKey:
    """The key of one fold of ``model`` (its checkpoint's sha256) for windows of the plans' patch."""
    patch = tuple(int(p) for p in model.config["patch_size"])
    return ConversionKey(
        checkpoint_sha256=checkpoint_sha256,
        network_sha256=network_sha256(model.plans, model.configuration, model.num_input_channels,
                                      model.num_classes),
        window=(int(batch), model.num_input_channels, *patch), precision=PRECISION, runtime=runtime_version())


# ---- the cache ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class IrCache:
    """Where converted models are looked up (``read_dirs``, then ``write_dir``) and stored
    (``write_dir``; None: never stored). Folders that do not exist are skipped."""

    read_dirs: tuple[Path, ...] = ()
    write_dir: Path | None = None

    def find(self, key: ConversionKey) -> Path | None:
        """The entry's ``model.xml`` where a complete, intact entry exists, else None."""
        dirs = [*self.read_dirs, *([self.write_dir] if self.write_dir is not None else [])]
        for folder in dirs:
            entry = Path(folder) / key.name()
            if (entry / META).is_file() and _intact(entry, key):
                return entry / XML
        return None

    @contextmanager
    def locked(self, key: ConversionKey) -> Iterator[None]:
        """Hold the entry's lock (one converter at a time); a no-op where it cannot be taken."""
        handle = None
        if self.write_dir is not None:
            try:
                self.write_dir.mkdir(parents=True, exist_ok=True)
                handle = open(self.write_dir / f".{key.name()}.lock", "a")  # noqa: SIM115 - held below
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError as exc:  # read-only, NFS without locks: convert unlocked
                log.debug("%s: no lock (%s)", self.write_dir, exc)
                if handle is not None:
                    handle.close()
                handle = None
        try:
            yield
        finally:
            if handle is not None:
                handle.close()  # closing releases the lock

    def store(self, key: ConversionKey, model: Any) -> Path | None:
        """Write ``model`` as the entry of ``key`` (atomically: a temporary folder renamed into place);
        the stored ``model.xml``, or None when the cache cannot be written (the caller keeps the
        model in memory)."""
        if self.write_dir is None:
            return None
        final = self.write_dir / key.name()
        try:
            self.write_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key.name()}.tmp-", dir=self.write_dir))
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the entry from the other users of a shared cache
        except OSError as exc:
            log.info("%s: cannot write the OpenVINO cache (%s); the model stays in memory", self.write_dir,
                     exc.strerror or exc)
            return None
        try:
            # compress_to_fp16 would round the weights: the cache must hold the float32 network
            _openvino().save_model(model, str(tmp / XML), compress_to_fp16=False)
            meta = {"key": asdict(key), "sha256": {n: _sha256(tmp / n) for n in (XML, BIN)}}
            (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
            _discard_if_broken(final, key)
            os.rename(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and _intact(final, key):
                return final / XML  # another worker stored the same entry first
            log.info("%s: cannot write the OpenVINO cache (%s); the model stays in memory", final,
                     exc.strerror or exc)
            return None
        return final / XML


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


#: entries this process has checked, with the (size, mtime, inode) of their files then: a fold reloaded
#: for the next image is not hashed again (~1 s for ResEnc-L's 390 MB of weights)
_CHECKED: dict[Path, tuple] = {}


def _stamp(entry: Path) -> tuple:
    return tuple((s.st_size, s.st_mtime_ns, s.st_ino) for s in (os.stat(entry / n) for n in (XML, BIN, META)))


def _intact(entry: Path, key: ConversionKey) -> bool:
    """The entry's meta names this key and its files have the recorded sha256 (a truncated or edited
    entry is never loaded)."""
    try:
        stamp = _stamp(entry)
        if _CHECKED.get(entry) == stamp:
            return True
        meta = json.loads((entry / META).read_text())
        ok = meta.get("key") == json.loads(json.dumps(asdict(key))) and all(
            _sha256(entry / n) == meta["sha256"][n] for n in (XML, BIN))
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if ok:
        _CHECKED[entry] = stamp
    elif entry.exists():
        log.warning("%s: damaged OpenVINO cache entry, not used", entry)
    return ok


def _discard_if_broken(entry: Path, key: ConversionKey) -> None:
    """Move a damaged entry out of the way (renamed first, so no reader sees it half deleted)."""
    if entry.exists() and not _intact(entry, key):
        trash = entry.with_name(f".{entry.name}.damaged-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(entry, trash)
        shutil.rmtree(trash, ignore_errors=True)


# ---- conversion and compilation -----------------------------------------------------------------
def convert(network: torch.nn.Module, window: Sequence[int]) -> Any:
    """``network`` (float32 weights) as an OpenVINO model static in ``window`` (N, C, *patch).

    Its instance norms become ``axisnorm.AxisMeanInstanceNorm`` (in place: the caller's network is built
    for this conversion), then it is traced once at :func:`trace_shape` without torch's trace check (which
    would run the network twice more) and given to ``openvino.convert_model`` with the window's shape."""
    ov = _openvino()
    window = tuple(int(w) for w in window)
    network = axisnorm.with_axis_mean_norms(network.eval())
    example = torch.zeros(trace_shape(network, window), dtype=torch.float32)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes (shape checks become constants: the model is static in the window anyway)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(network, example, check_trace=False)
        model = ov.convert_model(traced, example_input=example, input=[window])
    shape = tuple(model.output(0).get_partial_shape().to_shape())
    if shape[:1] + shape[2:] != window[:1] + window[2:]:  # a size the trace baked in would show here
        raise ValueError(f"converted output {shape} does not match the window {window}")
    return model


def trace_shape(network: torch.nn.Module, window: Sequence[int]) -> tuple[int, ...]:
    """The input the network is traced at: per spatial axis its encoder's total stride (the smallest input
    it takes, of which a plans' patch is a multiple), at most the window. Tracing runs the network once;
    at the window's size that cost seconds and hundreds of MB per ResEnc-L fold (a study's first image:
    162 s -> 81 s, and 1.7 GB less with memory-mapped checkpoints: bench/RESULTS-openvino.md). nnU-Net's
    networks bake no size into their graph, so the model converted for the window is the same (tests:
    bit-identical outputs)."""
    strides = getattr(getattr(network, "encoder", None), "strides", None)
    if not strides:
        return tuple(window)
    total = [int(np.prod([int(s[axis]) for s in strides])) for axis in range(len(window) - 2)]
    return (*window[:2], *(min(t, int(w)) for t, w in zip(total, window[2:], strict=True)))


def compile_model(model: Any, threads: int | None = None) -> Any:
    """``model`` compiled for the CPU in float32, for the latency of one request at a time."""
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": PRECISION,  # never bf16/fp16: SCT computes in float32 on a CPU
        "PERFORMANCE_HINT": "LATENCY",
        # workers are processes of their own: pinned threads of two workers would share cores
        "ENABLE_CPU_PINNING": False,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return _core().compile_model(model, "CPU", config)


class OpenVinoBackend:
    """A compiled network called as ``network(x)`` is in the sliding-window loop: ``x`` a torch tensor
    (N, C, *patch) float32, any N; returns new float32 logits (N, classes, *patch) on the CPU. Windows
    run ``batch`` at a time (the batch it was compiled for; a short last batch is zero-padded)."""

    def __init__(self, compiled: Any, key: ConversionKey, origin: str) -> None:
        self.compiled = compiled
        self.key = key
        self.origin = origin
        """``cache`` (read from the cache), ``converted`` (and stored) or ``converted in memory``."""
        self._request = compiled.create_infer_request()
        self._out_shape = tuple(int(d) for d in compiled.output(0).get_shape())

    @property
    def batch(self) -> int:
        return self.key.window[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        window = tuple(self.key.window[1:])
        if x.dim() != len(self.key.window) or tuple(x.shape[1:]) != window:
            raise ValueError(f"expected windows of shape (N, {', '.join(map(str, window))}), got "
                             f"{tuple(x.shape)}")
        data = x.detach().to(torch.float32).contiguous().numpy()
        out = torch.empty((data.shape[0], *self._out_shape[1:]), dtype=torch.float32)
        for i in range(0, data.shape[0], self.batch):
            chunk = data[i:i + self.batch]
            n = chunk.shape[0]
            if n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *window), np.float32)])
            result = self._request.infer({0: chunk}, share_inputs=True, share_outputs=True)
            # the request reuses its output buffer: copy before the next call
            out[i:i + n].copy_(torch.from_numpy(result[0][:n]))
        return out


def load_backend(key: ConversionKey, network: Callable[[], torch.nn.Module], *, cache: IrCache | None = None,
                 threads: int | None = None) -> OpenVinoBackend:
    """The backend of ``key``: from the cache when it holds the entry, else ``network()`` converted (and
    stored, under the entry's lock so concurrent workers convert once). ``network`` is called only on
    a miss. ModelError when OpenVINO is missing or cannot convert the network."""
    if key.runtime != runtime_version():
        raise ValueError(f"key for OpenVINO {key.runtime}, this is {runtime_version()}")
    cache = cache or IrCache()
    found, model, origin = cache.find(key), None, "cache"
    if found is None:
        with cache.locked(key):
            found = cache.find(key)  # another worker may have stored it while this one waited
            if found is None:
                start = time.perf_counter()
                model = _converted(key, network)
                stored = cache.store(key, model)
                origin = "converted" if stored is not None else "converted in memory"
                log.info("OpenVINO: converted %s in %.1f s (%s)", key.name(), time.perf_counter() - start,
                         stored.parent if stored is not None else "not cached")
    source = model if model is not None else _core().read_model(str(found))
    return OpenVinoBackend(compile_model(source, threads), key, origin)


def _converted(key: ConversionKey, network: Callable[[], torch.nn.Module]) -> Any:
    try:
        return convert(network(), key.window)
    except ModelError:
        raise
    except Exception as exc:  # the converter raises many types: its own words go to the log only
        log.warning("OpenVINO conversion of %s failed", key.name(), exc_info=True)
        raise ModelError(f"OpenVINO {key.runtime.split('-')[0]} cannot convert the network of checkpoint "
                         f"{key.checkpoint_sha256[:12]} ({type(exc).__name__}; the log has the converter's "
                         f"message); use --backend torch") from exc


def fold_network(model: NnUNetModel, fold: int | str) -> torch.nn.Module:
    """The fold's network as nnU-Net builds it (InstanceNorm, float32, eval), on the checkpoint's own
    tensors (no copy of the weights)."""
    with torch.device("meta"):
        net = build_network(model.plans, model.configuration, model.num_input_channels, model.num_classes)
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dicts[fold].items()}
    net.load_state_dict(state, assign=True)
    return net.eval()


def fold_backend(model: NnUNetModel, fold: int | str, *, checkpoint_sha256: str, batch: int = 1,
                 cache: IrCache | None = None, threads: int | None = None) -> OpenVinoBackend:
    """:func:`load_backend` for one fold of a loaded model folder (the network is built only when the
    cache lacks the entry)."""
    return load_backend(model_key(model, checkpoint_sha256, batch), lambda: fold_network(model, fold),
                        cache=cache, threads=threads)


__all__ = ["REQUIREMENT", "PRECISION", "ConversionKey", "IrCache", "OpenVinoBackend",
           "compile_model", "convert", "fold_backend", "fold_network", "load_backend", "model_key",
           "network_sha256", "runtime_version", "trace_shape"]
