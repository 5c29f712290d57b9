"""How much faster than nnU-Net can ANY engine be on the same windows? The convolution floor.

    .venv/bin/python bench/conv_ceiling.py [--threads 2] [--patch 32 128 128] [--reps 3]
        [--precision fp32|bf16] [--layers] [--out bench/conv_ceiling.json]

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

``--precision bf16``: our network runs as the engine runs it natively in bf16 (convolution weights
bf16 channels-last, bf16 input, ``torch.autocast``), with torch's own bf16 kernels whatever the CPU
(so on a CPU without bf16 dot products this measures torch's fallback, not the engine's emulation,
and takes minutes per window); nnU-Net's stays float32, its CPU mode. ``--layers`` times single
``Conv3d`` layers of nnU-Net sizes instead (issue 16's examples), channels-last, float32 vs bfloat16.
The CPU's flags and torch's capability are recorded: machines differ.
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
    from bidsapp.demo.modelfolder import PlansSpec, make_plans
    from bidsapp.engine.network import build_network, random_state_dict

    plans = make_plans(PlansSpec(network="ResidualEncoderUNet", patch_size=patch, spacing=[3.0, 0.7, 0.7],
                                 base_features=32, max_features=320))
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


#: (in = out channels, spatial shape) of single-layer timings: issue 16's examples
LAYERS = ((32, (32, 128, 128)), (128, (8, 32, 32)), (320, (4, 8, 8)))


def layer_timings(reps: int) -> list[dict]:
    """One 3x3x3 Conv3d per :data:`LAYERS` entry, batch 1, channels-last: min seconds in float32 and in
    bfloat16 (weights and input bf16), and the ratio."""
    import torch

    out = []
    with torch.inference_mode():
        for ch, shape in LAYERS:
            conv = torch.nn.Conv3d(ch, ch, 3, padding=1).to(memory_format=torch.channels_last_3d)
            x = torch.randn(1, ch, *shape).contiguous(memory_format=torch.channels_last_3d)
            row = {"channels": ch, "shape": list(shape)}
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                c, xi = conv.to(dtype), x.to(dtype)
                c(xi)
                best = min((lambda t0: (c(xi), time.perf_counter() - t0)[1])(time.perf_counter())
                           for _ in range(reps))
                row[f"{name}_s"] = round(best, 4)
            row["bf16_over_fp32"] = round(row["bf16_s"] / row["fp32_s"], 2)
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def bf16_network(net):
    """``net`` as the engine runs it natively in bf16: convolutions bf16, the rest float32."""
    import torch

    from bidsapp.engine.precision import convert_convolutions

    return convert_convolutions(net, torch.bfloat16)


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
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="our network's precision")
    p.add_argument("--layers", action="store_true", help="time single Conv3d layers, fp32 vs bf16, only")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "conv_ceiling.json")
    args = p.parse_args(argv)
    import contextlib

    import torch

    from bidsapp.engine.network import instance_norms_as_group_norms
    from bidsapp.engine.precision import cpu_features

    torch.set_num_threads(args.threads)
    if args.layers:
        res = {"threads": args.threads, "cpu_count": os.cpu_count(), "cpu": cpu_features().describe(),
               "torch": torch.__version__, "layers": layer_timings(args.reps)}
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        return 0
    net = build(args.patch)
    one = torch.randn(1, 1, *args.patch)
    flops = conv_flops(net, one)  # per window
    nnunet = profile(net, one, args.reps)  # nnunetv2: InstanceNorm3d, NCDHW, one window per pass
    ours_net = instance_norms_as_group_norms(net).to(memory_format=torch.channels_last_3d)
    two = torch.randn(2, 1, *args.patch).contiguous(memory_format=torch.channels_last_3d)
    autocast = contextlib.nullcontext()
    if args.precision == "bf16":
        ours_net, two = bf16_network(ours_net), two.to(torch.bfloat16)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    with autocast:
        ours = profile(ours_net, two, args.reps)
    ours = {k: (round(v / 2, 3) if k != "conv_share" else v) for k, v in ours.items()}  # per window
    peak = matmul_gflops(args.threads)
    res = {
        "threads": args.threads, "patch": args.patch, "cpu_count": os.cpu_count(),
        "cpu": cpu_features().describe(), "precision_ours": args.precision, "precision_nnunet": "fp32",
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
