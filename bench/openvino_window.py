"""One window, torch float32 vs OpenVINO float32 (issue 23): time, agreement, peak memory, ISA.

    .venv/bin/python bench/openvino_window.py [--threads 2] [--reps 5] [--networks resenc plain]
        [--patch 16 192 160] [--isa native avx2] [--variants] [--out bench/openvino_window.json]

Builds the checkpoints of bench/engine_vs_nnunet.py (ResEnc-L-like ``ResidualEncoderUNet`` and
``PlainConvUNet``, random He weights, last layer sharpened; plans spacing 3x0.7x0.7 mm, so the window is
the phantom's own voxels) and, in a fresh process per network and ISA, times one window:

- ``torch_nnunet``: the network as nnunetv2 runs it (InstanceNorm3d, NCDHW, one window per pass);
- ``torch_ours``: as our torch engine runs it (GroupNorm, channels-last 3D, two windows per pass; per window);
- ``openvino``: ``bidsapp.engine.openvino_runtime`` (converted through the cache, f32, LATENCY, one window);
- with ``--variants``: OpenVINO with two windows per call (per window) and the THROUGHPUT hint.

Repetitions alternate between the engines (load on a shared machine hits all alike); min and median of
``--reps`` after a warm-up. Agreement with ``torch_nnunet`` on the same window (the phantom's centre,
z-scored): argmax fraction and max |logit diff|. ``--isa avx2`` runs the child with ``ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2``; the kernels each engine then picked are recorded (OpenVINO's per-node
primitive types, torch's CPU capability), with OpenVINO's per-layer-type time from one profiled pass.
Peak memory (VmHWM) is taken in separate processes that load the fold and run one window with one engine:
``torch_nnunet``, ``openvino`` (the checkpoint's tensors still held, as now) and ``openvino_no_torch_weights``
(dropped before the backend loads from the cache: what a cache hit needs).
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
MARK = "@@window "
ISA_ENV = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
MEMORY_ENGINES = ("torch_nnunet", "openvino", "openvino_no_torch_weights")


# ---- child: one network, one ISA ---------------------------------------------------------------------
def _setup(folder: Path, threads: int):
    import torch
    from engine_vs_nnunet import phantom

    from bidsapp.engine.modelfolder import NnUNetModel

    torch.set_num_threads(threads)
    model = NnUNetModel.load(folder, folds=[0])
    patch = [int(p) for p in model.config["patch_size"]]
    vol = np.asarray(phantom().dataobj, np.float32).transpose(2, 1, 0)  # (z, y, x), as the network reads it
    start = [(s - p) // 2 for s, p in zip(vol.shape, patch, strict=True)]
    tile = vol[tuple(slice(a, a + p) for a, p in zip(start, patch, strict=True))]
    tile = (tile - tile.mean()) / tile.std()
    return model, torch.from_numpy(np.ascontiguousarray(tile)[None, None])


def _backend(model, cache_dir: Path, threads: int, batch: int = 1, hint: str | None = None):
    from bidsapp.derivatives import sha256_file
    from bidsapp.engine import openvino_runtime as ovr

    cache = ovr.IrCache(write_dir=cache_dir)
    t0 = time.perf_counter()
    sha = sha256_file(model.checkpoint_paths[0])
    backend = ovr.fold_backend(model, 0, checkpoint_sha256=sha, batch=batch, cache=cache, threads=threads)
    load_s = time.perf_counter() - t0
    if hint is not None:  # the same converted model, compiled with another performance hint
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": hint,
                  "INFERENCE_NUM_THREADS": threads}
        source = ovr._core().read_model(str(cache.find(backend.key)))
        backend = ovr.OpenVinoBackend(ovr._core().compile_model(source, "CPU", config), backend.key, "cache")
    return backend, load_s


def _engines(model, x, args, cache_dir: Path) -> tuple[dict, dict]:
    """name -> (callable on a batch, windows per call); and the OpenVINO load times."""
    import torch

    from bidsapp.engine import openvino_runtime as ovr
    from bidsapp.engine.network import instance_norms_as_group_norms

    nnunet = ovr.fold_network(model, 0)
    ours = instance_norms_as_group_norms(ovr.fold_network(model, 0)).to(memory_format=torch.channels_last_3d)
    two = torch.cat([x, x]).contiguous(memory_format=torch.channels_last_3d)
    ov, convert_s = _backend(model, cache_dir, args.threads)
    _, cached_s = _backend(model, cache_dir, args.threads)
    engines = {"torch_nnunet": (lambda: nnunet(x), 1), "torch_ours": (lambda: ours(two), 2),
               "openvino": (lambda: ov(x), 1)}
    if args.variants:
        ov2, _ = _backend(model, cache_dir, args.threads, batch=2)
        tput, _ = _backend(model, cache_dir, args.threads, hint="THROUGHPUT")
        x2 = torch.cat([x, x])
        engines |= {"openvino_2_per_call": (lambda: ov2(x2), 2), "openvino_throughput": (lambda: tput(x), 1)}
    return engines, {"convert_and_compile_s": round(convert_s, 2), "from_cache_s": round(cached_s, 2),
                     "ov_backend": ov}


def _ov_kernels(backend, x) -> dict:
    """Primitive type per layer type of the compiled model, and time per layer type of one pass."""
    from bidsapp.engine import openvino_runtime as ovr

    kinds = collections.defaultdict(collections.Counter)
    for op in backend.compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if "layerType" in rt and "primitiveType" in rt:
            kinds[rt["layerType"].astype(str)][rt["primitiveType"].astype(str)] += 1
    # one profiled pass of the same cached model (profiling is a compile option)
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
    cache = ovr.IrCache(write_dir=Path(os.environ["BENCH_CACHE"]))
    source = ovr._core().read_model(str(cache.find(backend.key)))
    request = ovr._core().compile_model(source, "CPU", config).create_infer_request()
    request.infer({0: x.numpy()})
    times = collections.Counter()
    for info in request.get_profiling_info():
        times[info.node_type] += info.real_time.total_seconds()
    total = sum(times.values()) or 1.0
    return {"primitives": {k: dict(v) for k, v in sorted(kinds.items())},
            "time_share": {k: round(v / total, 3) for k, v in times.most_common(8)}}


def child_time(args) -> dict:
    import torch

    model, x = _setup(Path(args.folder), args.threads)
    cache_dir = Path(os.environ["BENCH_CACHE"])
    engines, loads = _engines(model, x, args, cache_dir)
    outs, walls = {}, {name: [] for name in engines}
    with torch.inference_mode():
        for name, (call, _) in engines.items():
            outs[name] = call()[:1].float().contiguous().numpy()  # warm-up, and the logits compared
        for _ in range(args.reps):
            for name, (call, per_call) in engines.items():
                t0 = time.perf_counter()
                call()
                walls[name].append((time.perf_counter() - t0) / per_call)
    ref = outs["torch_nnunet"]
    res = {"per_window_s": {n: {"min": round(min(w), 3), "median": round(statistics.median(w), 3)}
                            for n, w in walls.items()},
           "agreement_with_torch_nnunet": {
               n: {"argmax": round(float((o.argmax(1) == ref.argmax(1)).mean()), 6),
                   "max_abs_diff": float(np.abs(o - ref).max()), "max_abs_logit": float(np.abs(ref).max())}
               for n, o in outs.items() if n != "torch_nnunet"},
           "openvino_load": {k: v for k, v in loads.items() if k != "ov_backend"},
           "openvino_kernels": _ov_kernels(loads["ov_backend"], x),
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    best = res["per_window_s"]
    res["speedup_min"] = {n: round(best["torch_nnunet"]["min"] / best[n]["min"], 2) for n in best}
    return res


def child_memory(args) -> dict:
    """VmHWM of a process that loads the model, prepares one engine and runs one window."""
    import torch

    model, x = _setup(Path(args.folder), args.threads)
    with torch.inference_mode():
        if args.engine.startswith("openvino"):  # from the cache the timing child filled: no conversion
            if args.engine == "openvino_no_torch_weights":  # what a cache hit needs: no checkpoint in memory
                model.state_dicts.clear()
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            backend, _ = _backend(model, Path(os.environ["BENCH_CACHE"]), args.threads)
            backend(x)
        else:
            from bidsapp.engine import openvino_runtime as ovr

            ovr.fold_network(model, 0)(x)
    hwm = [int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
           if line.startswith("VmHWM:")][0]
    return {"engine": args.engine, "peak_rss_mb": round(hwm / 1024)}


# ---- driver -------------------------------------------------------------------------------------------
def _run_child(args, folder: Path, isa: str, cache: Path, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--folder", str(folder), "--threads", str(args.threads),
           "--reps", str(args.reps), *(["--variants"] if args.variants else []), *extra]
    env = {**os.environ, **ISA_ENV[isa], "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT),
           "BENCH_CACHE": str(cache)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child {' '.join(extra) or 'time'} ({isa}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--networks", nargs="+", default=["resenc", "plain"], choices=["resenc", "plain"])
    p.add_argument("--patch", nargs=3, type=int, default=[16, 192, 160])
    p.add_argument("--isa", nargs="+", default=["native", "avx2"], choices=list(ISA_ENV))
    p.add_argument("--variants", action="store_true",
                   help="also OpenVINO 2 windows per call, THROUGHPUT hint")
    p.add_argument("--memory", action="store_true", help="also the peak RSS of each engine, own processes")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "openvino_window.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(MARK + json.dumps(child_memory(args) if args.engine else child_time(args)), flush=True)
        return 0
    from engine_vs_nnunet import _cpu, build_models

    results = {"command": " ".join(["python", *sys.argv]), "cpu": _cpu(), "threads": args.threads,
               "reps": args.reps, "patch": args.patch, "load_average": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="openvino-window-") as tmp:
        folders = build_models(Path(tmp), [3.0, 0.7, 0.7], args.patch, 1, args.networks)
        for name in args.networks:
            for isa in args.isa:
                cache = Path(tmp) / f"cache-{name}-{isa}"
                run = {"network": name, "isa": isa, **_run_child(args, folders[name], isa, cache)}
                if args.memory:
                    run["peak_rss_mb"] = {e: _run_child(args, folders[name], isa, cache, "--engine", e)
                                          ["peak_rss_mb"] for e in MEMORY_ENGINES}
                print(json.dumps(run), flush=True)
                results["runs"].append(run)
    results["load_average_after"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
