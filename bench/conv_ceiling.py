"""How much faster than nnU-Net can ANY engine be on the same windows? The convolution floor.

    .venv/bin/python bench/conv_ceiling.py [--threads 2] [--patch 32 128 128] [--reps 3]
        [--out bench/conv_ceiling.json]

Both engines run the same convolutions (oneDNN's, through torch) on the same windows; what an engine
can change is everything around them. This script takes the ResEnc-L-like network of
bench/engine_vs_nnunet.py at the given patch and, for one window:

1. times one forward pass as nnunetv2 runs it (InstanceNorm3d, NCDHW tensors, one window per pass)
   and as we run it (GroupNorm, channels-last 3D, two windows per pass), each under torch.profiler,
   and splits the time into convolution (``aten::mkldnn_convolution`` / ``aten::convolution``) and
   the rest;
2. counts the convolutions' floating-point operations (forward hooks: 2 * Cin/groups * Cout * k^3 per
   output voxel) and divides by the convolution time: the GFLOP/s the kernels reach, next to a large
   float32 matrix product on the same threads (the practical peak of this CPU);
3. prints the ceiling: nnU-Net's time per window over our convolution time per window, the speed-up an
   engine would reach if everything but the convolutions cost nothing.

Min over ``--reps`` repetitions after a warm-up. Each engine's figures come from the same process and
threads, one after the other.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_overrideable", "aten::_convolution")


def build(patch):
    from bidsapp.demo.modelfolder import make_plans
    from bidsapp.engine.network import build_network, random_state_dict

    plans = make_plans(network="ResidualEncoderUNet", patch_size=patch, spacing=[3.0, 0.7, 0.7],
                       base_features=32, max_features=320)
    net = build_network(plans, "3d_fullres", 1, 2)
    net.load_state_dict(random_state_dict(plans, "3d_fullres", 1, 2))
    return net.eval()


def conv_flops(net, x) -> float:
    """Multiply-adds x 2 of every Conv3d / ConvTranspose3d in one forward pass of ``x``."""
    import torch

    total = [0.0]

    def hook(mod, inp, out):
        k = 1
        for s in mod.kernel_size:
            k *= s
        if isinstance(mod, torch.nn.ConvTranspose3d):  # every input voxel scatters Cout * k^3
            total[0] += 2.0 * inp[0].numel() * mod.out_channels * k / mod.groups
        else:
            total[0] += 2.0 * out.numel() * (mod.in_channels // mod.groups) * k
    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with torch.inference_mode():
        net(x)
    for h in handles:
        h.remove()
    return total[0]


def profile(net, x, reps: int) -> dict:
    """Min wall time of a forward pass, and the convolution share of the best profiled pass."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    with torch.inference_mode():
        net(x)  # warm-up: oneDNN primitive cache
        walls = []
        for _ in range(reps):
            t0 = time.perf_counter()
            net(x)
            walls.append(time.perf_counter() - t0)
        with prof(activities=[ProfilerActivity.CPU]) as p:
            net(x)
    events = p.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS or "conv" in e.key.lower())
    share = conv / total if total else 0.0
    wall = min(walls)
    return {"wall_s": round(wall, 3), "conv_share": round(share, 3), "conv_s": round(wall * share, 3)}


def matmul_gflops(threads: int, n: int = 4096, reps: int = 3) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min((lambda t0: (torch.mm(a, b), time.perf_counter() - t0)[1])(time.perf_counter())
               for _ in range(reps))
    return 2.0 * n ** 3 / best / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--patch", nargs=3, type=int, default=[32, 128, 128])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "conv_ceiling.json")
    args = p.parse_args(argv)
    import torch

    from bidsapp.engine.network import instance_norms_as_group_norms

    torch.set_num_threads(args.threads)
    net = build(args.patch)
    one = torch.randn(1, 1, *args.patch)
    flops = conv_flops(net, one)  # per window
    nnunet = profile(net, one, args.reps)  # nnunetv2: InstanceNorm3d, NCDHW, one window per pass
    ours_net = instance_norms_as_group_norms(net).to(memory_format=torch.channels_last_3d)
    two = torch.randn(2, 1, *args.patch).contiguous(memory_format=torch.channels_last_3d)
    ours = profile(ours_net, two, args.reps)
    ours = {k: (round(v / 2, 3) if k != "conv_share" else v) for k, v in ours.items()}  # per window
    peak = matmul_gflops(args.threads)
    res = {
        "threads": args.threads, "patch": args.patch, "cpu_count": os.cpu_count(),
        "conv_gflop_per_window": round(flops / 1e9, 1),
        "nnunet_per_window": nnunet, "ours_per_window": ours,
        "conv_gflops_ours": round(flops / 1e9 / ours["conv_s"], 1),
        "conv_gflops_nnunet": round(flops / 1e9 / nnunet["conv_s"], 1),
        "matmul_gflops": round(peak, 1),
        "speedup_now": round(nnunet["wall_s"] / ours["wall_s"], 2),
        "ceiling_if_only_convolutions": round(nnunet["wall_s"] / ours["conv_s"], 2),
    }
    print(json.dumps(res, indent=2))
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
