"""OpenVINO's fused InstanceNorm (MVN) vs our axis-by-axis means (engine/axisnorm.py): accuracy against a
float64 run of the same network, 1 vs 2 threads, and the time of one window.

    .venv/bin/python bench/openvino_norm.py [--patch 16 192 160] [--reps 3] [--out bench/openvino_norm.json]

Networks: the ResEnc-L-like checkpoint of bench/engine_vs_nnunet.py (random He weights, last layer
sharpened) at ``--patch`` and the demo lesion_ms model at its own 32x64x64 window. Input: the phantom's
centre (z-scored) for the first, N(0, 1) noise for the demo. For each graph (``mvn``: the network converted
as is; ``axis``: our conversion, ``openvino_runtime.convert``) compiled at 1 and 2 threads: max and mean
|logit - float64|, the argmax agreement with float64, whether 1 and 2 threads are bit-identical, and the
minimum of ``--reps`` timed calls (after a warm-up). torch float32 on the same window is the peer.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine_vs_nnunet import _cpu, build_models, phantom  # noqa: E402 - after the path set-up

from bidsapp.engine import openvino_runtime as ovr  # noqa: E402
from bidsapp.engine.modelfolder import NnUNetModel  # noqa: E402
from bidsapp.models import locate  # noqa: E402


def _timed(call, reps: int) -> tuple[np.ndarray, float]:
    out = call()  # warm-up
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        out = call()
        best = min(best, time.perf_counter() - start)
    return out, best


def _graphs(model: NnUNetModel, window: tuple[int, ...]) -> dict:
    import openvino as ov

    example = torch.zeros(window)
    with torch.no_grad():
        plain = ov.convert_model(torch.jit.trace(ovr.fold_network(model, 0), example, check_trace=False),
                                 example_input=example)
    return {"mvn": plain, "axis": ovr.convert(ovr.fold_network(model, 0), window)}


def measure(model: NnUNetModel, x: torch.Tensor, reps: int) -> dict:
    with torch.inference_mode():
        reference = copy.deepcopy(ovr.fold_network(model, 0)).double()(x.double()).numpy()
    torch.set_num_threads(2)
    with torch.inference_mode():
        net = ovr.fold_network(model, 0)
        torch_out, torch_s = _timed(lambda: net(x).numpy(), reps)
    row = {"window": list(x.shape), "torch_fp32": _error(torch_out, reference) | {"s": round(torch_s, 3)}}
    for name, graph in _graphs(model, tuple(x.shape)).items():
        outs = {}
        for threads in (1, 2):
            request = ovr.compile_model(graph, threads).create_infer_request()
            outs[threads], seconds = _timed(lambda r=request: r.infer({0: x.numpy()})[0].copy(), reps)
            row[f"{name}_{threads}t"] = _error(outs[threads], reference) | {"s": round(seconds, 3)}
        row[f"{name}_1v2_max"] = float(np.abs(outs[1] - outs[2]).max())
        print(json.dumps({name: {k: v for k, v in row.items() if k.startswith(name)}}), flush=True)
    return row


def _error(out: np.ndarray, reference: np.ndarray) -> dict:
    diff = np.abs(out - reference)
    return {"max": float(diff.max()), "mean": float(diff.mean()),
            "argmax_agreement": float((out.argmax(1) == reference.argmax(1)).mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patch", nargs=3, type=int, default=[16, 192, 160])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "openvino_norm.json")
    args = p.parse_args(argv)
    results = {"command": " ".join(["python", *sys.argv]), "cpu": _cpu(), "openvino": ovr.runtime_version(),
               "torch": torch.__version__, "networks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_models(Path(tmp), (3.0, 0.7, 0.7), args.patch, 1, ["resenc"])["resenc"]
        model = NnUNetModel.load(folder, folds=[0])
        vol = np.asarray(phantom().dataobj, np.float32).transpose(2, 1, 0)  # (z, y, x)
        start = [(s - q) // 2 for s, q in zip(vol.shape, args.patch, strict=True)]
        tile = vol[tuple(slice(a, a + q) for a, q in zip(start, args.patch, strict=True))]
        x = torch.from_numpy(((tile - tile.mean()) / tile.std())[None, None].copy())
        results["networks"]["resenc_l"] = measure(model, x, args.reps)
    demo = NnUNetModel.load(locate("lesion_ms", demo=True).path, folds=[0])
    torch.manual_seed(1)
    x = torch.randn(1, demo.num_input_channels, *demo.config["patch_size"])
    results["networks"]["demo_lesion_ms"] = measure(demo, x, args.reps)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
