"""Calibrate bidsapp.guards' memory estimate against measured peaks (docs/RELIABILITY.md, section 8).

    .venv/bin/python bench/guards_calibration.py [--threads 2] [--skip-forward] [--skip-predict]
        [--out bench/guards_calibration.json]

Two measurements, each in a fresh process, peak = VmHWM of that process:
- ``forward``: one forward pass (batch of windows, channels-last, GroupNorm, inference mode) of the
  demo networks and of a ResEnc-L-like / PlainConvUNet (nnU-Net planners, 32..320 features) with
  random weights: bytes per window voxel and first-stage feature, against
  ``ACT_BYTES_PER_FEATURE * f + ACT_BYTES_PER_VOXEL``;
- ``predict``: ``NnUNetPredictor.predict`` of a demo model on phantoms of several shapes and voxel
  sizes: the process's peak and its growth during the call (``peak - RSS before``) against
  ``memory.estimate_memory`` (total, and its part beyond the worker baseline and the weights).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "bidsapp" / "models" / "demo"
FORWARD = [("demo:spinalcord", None, 2), ("demo:lesion_ms", None, 2), ("demo:lesion_ms_mp2rage", None, 2),
           ("PlainConvUNet", (32, 64, 64), 2), ("ResidualEncoderUNet", (32, 64, 64), 2),
           ("ResidualEncoderUNet", (32, 128, 128), 2), ("ResidualEncoderUNet", (64, 128, 128), 1)]
PREDICT = [((64, 64, 40), (1.0, 1.0, 1.0), "lesion_ms"), ((100, 100, 30), (1.4, 1.4, 3.0), "spinalcord"),
           ((100, 100, 30), (1.4, 1.4, 3.0), "lesion_ms"), ((160, 160, 40), (0.7, 0.7, 3.0), "lesion_ms"),
           ((240, 240, 60), (0.7, 0.7, 3.0), "lesion_ms")]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _plans(kind: str, patch):
    from bidsapp.demo.modelfolder import PlansSpec, make_plans

    if kind.startswith("demo:"):
        return json.loads(next((DEMO / kind[5:]).glob("*__*__*/plans.json")).read_text())
    return make_plans(PlansSpec(network=kind, patch_size=patch, spacing=(3.0, 0.7, 0.7), base_features=32,
                                max_features=320))


def forward_child(kind: str, patch, batch: int) -> dict:
    import torch

    from bidsapp import memory
    from bidsapp.engine.network import architecture, build_network, instance_norms_as_group_norms

    plans = _plans(kind, patch)
    patch = plans["configurations"]["3d_fullres"]["patch_size"]
    f0 = architecture(plans, "3d_fullres")["arch_kwargs"]["features_per_stage"][0]
    net = instance_norms_as_group_norms(build_network(plans, "3d_fullres", 1, 2))
    net = net.to(memory_format=torch.channels_last_3d)
    x = torch.randn(batch, 1, *patch).contiguous(memory_format=torch.channels_last_3d)
    half = x[:, :, : patch[0] // 2, : patch[1] // 2, : patch[2] // 2].contiguous(
        memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        net(half)  # first-call allocations (oneDNN primitives) are not the window's
        before = _status("VmRSS")
        net(x)
    peak = _status("VmHWM") - before
    vox = batch * patch[0] * patch[1] * patch[2]
    model = (memory.ACT_BYTES_PER_FEATURE * f0 + memory.ACT_BYTES_PER_VOXEL) * vox
    return {"network": kind, "patch": patch, "batch": batch, "features": f0,
            "peak_mb": round(peak / 2 ** 20, 1),
            "bytes_per_voxel_feature": round(peak / (vox * f0), 1), "model_mb": round(model / 2 ** 20, 1),
            "model_over_peak": round(model / peak, 2)}


def predict_child(shape, zooms, task: str) -> dict:
    import nibabel as nib
    import numpy as np

    from bidsapp import guards, memory
    from bidsapp.engine import NnUNetModel, NnUNetPredictor

    folder = next((DEMO / task).glob("*__*__*"))
    rng = np.random.default_rng(0)
    g = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    data = 200 + 300 * np.exp(-(g[0] ** 2 + g[1] ** 2) / 0.05) + rng.normal(0, 10, shape)
    img = nib.Nifti1Image(data.astype(np.float32), np.diag([*zooms, 1.0]))
    est = memory.estimate_memory(shape, zooms, img.affine, [guards.nnunet_plan(task, folder)])
    predictor = NnUNetPredictor(NnUNetModel.load(folder), device="cpu")
    before = _status("VmRSS")
    probs = predictor.predict(img)
    mask = probs.argmax(0) == 1  # what the pipelines do next (int64 argmax)
    peak = _status("VmHWM")
    del mask
    variable = est.total_bytes - est.parts["worker"] - est.parts["weights"]
    return {"shape": list(shape), "zooms_mm": list(zooms), "model": task, "grid": list(est.grid),
            "rss_before_mb": round(before / 2 ** 20), "peak_mb": round(peak / 2 ** 20),
            "growth_mb": round((peak - before) / 2 ** 20), "estimate_mb": round(est.total_bytes / 2 ** 20),
            "estimate_beyond_baseline_mb": round(variable / 2 ** 20),
            "estimate_over_peak": round(est.total_bytes / peak, 2)}


def _run(args: argparse.Namespace, what: str, case) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--child", what, json.dumps(case), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-forward", action="store_true")
    p.add_argument("--skip-predict", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "guards_calibration.json")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        case = json.loads(args.child[1])
        fn = forward_child if args.child[0] == "forward" else predict_child
        print(json.dumps(fn(*case)), flush=True)
        return 0
    results = {"command": " ".join(["python", *sys.argv]), "threads": args.threads, "forward": [],
               "predict": []}
    plan = (("forward", FORWARD, args.skip_forward), ("predict", PREDICT, args.skip_predict))
    for what, cases, skip in plan:
        for case in [] if skip else cases:
            row = _run(args, what, case)
            results[what].append(row)
            print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
