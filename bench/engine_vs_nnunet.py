"""Our nnU-Net engine vs nnunetv2's nnUNetPredictor: same checkpoint, same image, CPU, fixed threads.

    .venv/bin/python bench/engine_vs_nnunet.py [--reps 3] [--threads 2] [--networks resenc plain]
        [--spacing 3.0 2.8 2.8] [--patch 32 64 64] [--folds 1] [--with-baseline]
        [--precision auto|fp32|bf16|fp16] [--compile] [--out bench/engine_vs_nnunet.json]

Builds throw-away model folders (random He-initialised weights, last layer sharpened so the lesion
class wins in a sizeable region): a ResEnc-L-like ``ResidualEncoderUNet`` (nnUNetPlannerResEncL:
features 32..320, 1-3-4-6-6-6 blocks) and a ``PlainConvUNet`` (default planner: 2 convs per stage),
with the given plans spacing and patch. The image is a 320x320x60 phantom at 0.7x0.7x3 mm, which
both engines resample to the plans spacing. Each engine runs in its own process, loaded once and
warmed up; the timed repetitions of the whole path (image array in, probabilities on the input grid
out, TTA off) ALTERNATE between the engines, so load from other jobs on a shared machine hits both
alike. Reported per engine: wall and process-CPU seconds (min / median / max), peak RSS (VmHWM of
the worker), and the agreement of the outputs (Dice of p(lesion) > 0.5, mean |p diff|).
``--with-baseline`` adds our engine with its CPU levers off (InstanceNorm, NCDHW, 1 tile per pass).
``--precision``: ours (default ``auto``, the engine's default; the precision it resolved to on this
machine is recorded, with the CPU's flags); nnU-Net runs float32, its CPU mode. ``--compile`` wraps our
network in ``torch.compile`` (inductor): the warm-up (first image, compile included) is recorded too.

``--whole-process`` (issue 23 item 3): what a user pays per image. Each repetition starts a fresh process
per engine, alternating which goes first: ours is ``python -m bidsapp.segment -i IMAGE -t FOLDER -o MASK
--device cpu --threads N`` (our defaults: ``--backend auto``, OpenVINO here; ``--backend X`` passed on),
nnU-Net's is a script that builds ``nnUNetPredictor`` (CPU, float32), predicts the saved image and writes the
argmax. Wall seconds and peak RSS (``os.wait4``) per process; Dice and differing voxels of the two masks.
Our runs share one OpenVINO cache (``$CORDLESION_OPENVINO_CACHE``), as a study's images do: an untimed first
run fills it (its wall time and peak RSS, conversion included, are recorded as ``first_run_ours``).
``--isa native avx2``: as is and limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``). The
issue's case (16 windows of 16x192x160)::

    bench/engine_vs_nnunet.py --whole-process --networks resenc --shape 240 240 40 --spacing 3.0 0.7 0.7 \\
        --patch 16 192 160 --reps 3 --threads 2 --isa native avx2 [--backend openvino]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPE, ZOOMS = (320, 320, 60), (0.7, 0.7, 3.0)
MARK = "@@bench "


# ---- setup ------------------------------------------------------------------------------------------
def phantom(seed: int = 0, shape=SHAPE):
    """``shape`` (320x320x60) RAS image at 0.7x0.7x3 mm: a zero border, a body, a cord-like tube, blobs,
    noise."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    data = 200 + 150 * np.exp(-(x ** 2 + y ** 2) / 0.4)
    data += 400 * np.exp(-((x - 0.05) ** 2 + (y + 0.1) ** 2) / 0.005)
    for c in ([0.2, -0.3, 0.1], [-0.3, 0.2, -0.4], [0.05, -0.1, 0.5]):
        data += 300 * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 0.01)
    data += rng.normal(0, 10, tuple(shape)).astype(np.float32)
    data[:12], data[-12:] = 0, 0
    aff = np.diag([*ZOOMS, 1.0])
    aff[:3, 3] = [-s * z / 2 for s, z in zip(shape, ZOOMS, strict=True)]  # centred: -112, -112, -90
    img = nib.Nifti1Image(data.astype(np.float32), aff)
    img.set_qform(aff, 1)
    img.set_sform(aff, 1)
    return img


def _sharpen(state: dict, plans: dict, patch) -> dict:
    """Scale the last layer so logits are decisive; bias at the median so ~half the tile is lesion."""
    import torch

    from bidsapp.demo.modelfolder import clone_shared
    from bidsapp.engine.network import build_network

    net = build_network(plans, "3d_fullres", 1, 2)
    net.load_state_dict(state)
    w = [k for k in state if k.startswith("decoder.seg_layers") and k.endswith("weight")][-1]
    x = torch.from_numpy(np.asarray(phantom().dataobj).transpose(2, 1, 0)[None, None].copy())
    x = (x - x.mean()) / x.std()
    z0, y0 = max(0, (x.shape[2] - patch[0]) // 2), (x.shape[3] - patch[1]) // 2
    tile = x[:, :, z0:z0 + patch[0], y0:y0 + patch[1], y0:y0 + patch[2]]
    short = [p - t for p, t in zip(patch, tile.shape[2:], strict=True)]  # a patch deeper than the phantom
    tile = torch.nn.functional.pad(tile, [v for s in reversed(short) for v in (0, max(s, 0))])
    with torch.inference_mode():
        diff = (lambda o: o[0, 1] - o[0, 0])(net(tile)).flatten()
    scale = 8.0 / float(diff.std() + 1e-6)
    state = clone_shared(state)  # aliases (decoder.encoder., all_modules) stay one tensor, as in nnU-Net
    state[w] *= scale
    b = w[: -len("weight")] + "bias"
    state[b] *= scale
    shift = float(torch.quantile(diff[:: max(1, diff.numel() // 100000)] * scale, 0.6))
    state[b][1] -= shift / 2
    state[b][0] += shift / 2
    return state


def build_models(dest: Path, spacing, patch, folds: int, networks) -> dict[str, Path]:
    from bidsapp.demo.modelfolder import (
        PlansSpec,
        make_dataset_json,
        make_plans,
        random_state_dict,
        write_model_folder,
    )

    out = {}
    for key, network in (("resenc", "ResidualEncoderUNet"), ("plain", "PlainConvUNet")):
        if key not in networks:
            continue
        plans = make_plans(PlansSpec(network=network, patch_size=patch, spacing=spacing, base_features=32,
                                     max_features=320))
        ds = make_dataset_json({"background": 0, "lesion": 1}, ["T2w"], "LPI")
        states = {f: _sharpen(random_state_dict(plans, "3d_fullres", 1, 2, seed=f), plans,
                              plans["configurations"]["3d_fullres"]["patch_size"]) for f in range(folds)}
        out[key] = write_model_folder(dest / key, plans=plans, dataset_json=ds, fold_state_dicts=states)
    return out


# ---- workers (one process per engine) ---------------------------------------------------------------
def _ours(folder: Path, args):

    from bidsapp.engine import Levers, NnUNetModel, NnUNetPredictor

    levers = Levers(batch_size=1, channels_last=False, fast_norm=False) if args.baseline else None
    pred = NnUNetPredictor(NnUNetModel.load(folder), device="cpu", precision=args.precision, levers=levers)
    if args.compile:
        pred.network.compile()  # in place: the state-dict keys stay the same for fold switches

    def predict(image):
        return pred.predict(image)
    predict.precision = pred.precision + " (emulated)" * pred.precision_emulated
    return predict


def _nnunet(folder: Path, args):
    sys.path.insert(0, str(ROOT / "tests"))
    from engine_models import oracle_predictor, oracle_probabilities

    pred = oracle_predictor(folder, tta=False)

    def predict(image):
        return oracle_probabilities(pred, image)
    predict.precision = "fp32"
    return predict


def _peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would include the parent's peak, inherited over fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> None:
    """Load, warm up, then one timed prediction per line read on stdin; JSON lines on stdout."""
    import torch

    torch.set_num_threads(args.threads)
    img = phantom()
    predict = {"ours": _ours, "nnunet": _nnunet}[args.worker](Path(args.folder), args)
    warm = time.perf_counter()
    probs = predict(img)  # warm-up (first-call allocations, oneDNN primitive cache, compilation)
    warm = time.perf_counter() - warm
    print(MARK + json.dumps({"ready": True, "rss_mb": _peak_rss_mb(), "warmup_s": warm,
                             "precision": predict.precision}), flush=True)
    for _ in sys.stdin:
        wall, cpu = time.perf_counter(), time.process_time()
        probs = predict(img)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(MARK + json.dumps({"wall_s": wall, "cpu_s": cpu, "rss_mb": _peak_rss_mb()}), flush=True)
    np.save(args.save, probs[1].astype(np.float32))


# ---- whole processes (issue 23 item 3) ----------------------------------------------------------------
def nnunet_once(args) -> None:
    """One whole nnUNetPredictor run (its CPU mode, float32): load, read the image, predict, write the
    mask."""
    import nibabel as nib
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from engine_models import oracle_predictor, oracle_probabilities

    torch.set_num_threads(args.threads)
    img = nib.load(args.image)
    probs = oracle_probabilities(oracle_predictor(Path(args.folder), tta=False), img)
    nib.save(nib.Nifti1Image(probs.argmax(0).astype(np.uint8), img.affine, img.header), args.save)


def _whole_commands(folder: Path, image: Path, tmp: Path, args) -> dict[str, list[str]]:
    from processes import SEGMENT, backend_option

    ours = [*SEGMENT, "-i", str(image), "-t", str(folder), "-o", str(tmp / "ours.nii.gz"), "--device", "cpu",
            "--threads", str(args.threads), *backend_option(args.backend, SEGMENT)]
    if args.precision != "auto":
        ours += ["--precision", args.precision]
    nnunet = [sys.executable, __file__, "--nnunet-once", "--folder", str(folder), "--image", str(image),
              "--save", str(tmp / "nnunet.nii.gz"), "--threads", str(args.threads)]
    return {"ours": ours, "nnunet": nnunet}


def run_whole(folder: Path, tmp: Path, args) -> list[dict]:
    """Per ISA: ``--reps`` whole processes of each engine, alternating (the first engine alternates too);
    wall s and peak RSS of each, the masks' agreement."""
    import nibabel as nib
    from processes import checked, env_for, timed

    image = tmp / "image.nii.gz"
    nib.save(phantom(shape=tuple(args.shape)), image)
    cmds = _whole_commands(folder, image, tmp, args)
    # the study's cache of converted networks (OpenVINO): the first run fills it (timed apart, untimed for
    # the table), the timed runs read it, as every image after a study's first does
    cache = {"CORDLESION_OPENVINO_CACHE": str(tmp / "openvino-cache")}
    first = checked(timed(cmds["ours"], env_for(args.isa[0], args.threads, **cache)), "ours (first run)")
    out = [{"first_run_ours": {"isa": args.isa[0], "wall_s": round(first["wall_s"], 2),
                               "peak_rss_mb": first["peak_rss_mb"]}}]
    print(json.dumps(out[0]), flush=True)
    for isa in args.isa:
        reps: dict[str, list[dict]] = {e: [] for e in cmds}
        for k in range(args.reps):
            for engine in (list(cmds) if k % 2 == 0 else list(cmds)[::-1]):
                res = checked(timed(cmds[engine], env_for(isa, args.threads, **cache)), f"{engine} ({isa})")
                reps[engine].append({"wall_s": round(res["wall_s"], 2), "peak_rss_mb": res["peak_rss_mb"]})
        a = np.asarray(nib.load(tmp / "ours.nii.gz").dataobj) > 0
        b = np.asarray(nib.load(tmp / "nnunet.nii.gz").dataobj) == 1
        row = {"isa": isa, **{e: _whole_stats(r) for e, r in reps.items()},
               "dice": round(float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1)), 5),
               "voxels_differ": int((a != b).sum()), "lesion_fraction": round(float(b.mean()), 3)}
        medians = {e: row[e]["wall_s"]["median"] for e in cmds}
        row["speedup_wall_median"] = round(medians["nnunet"] / medians["ours"], 2)
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def _whole_stats(reps: list[dict]) -> dict:
    walls = [r["wall_s"] for r in reps]
    return {"wall_s": {"min": min(walls), "median": round(statistics.median(walls), 2), "max": max(walls),
                       "all": walls}, "peak_rss_mb": max(r["peak_rss_mb"] for r in reps)}


# ---- driver -----------------------------------------------------------------------------------------
def _start(engine: str, folder: Path, save: Path, args, baseline: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", engine, "--folder", str(folder), "--save", str(save),
           "--threads", str(args.threads), "--precision", args.precision]
    cmd += (["--baseline"] if baseline else []) + (["--compile"] if args.compile and engine == "ours" else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def _ask(proc: subprocess.Popen, line: str | None) -> dict:
    if line is not None:
        proc.stdin.write(line)
        proc.stdin.flush()
    while True:  # nnunetv2 prints its own chatter on stdout: skip to our marked line
        out = proc.stdout.readline()
        if not out:
            raise SystemExit(f"worker {proc.args[3]} died (exit {proc.wait()})")
        if out.startswith(MARK):
            return json.loads(out[len(MARK):])


def run_interleaved(folder: Path, tmp: Path, name: str, args) -> dict[str, dict]:
    """Both engines loaded side by side; repetitions alternate so load from other jobs hits both."""
    engines = {"ours": (False,), "nnunet": (False,)}
    if args.with_baseline:
        engines["ours_no_levers"] = (True,)
    procs = {e: _start(e.split("_")[0] if e != "nnunet" else e, folder, tmp / f"{name}_{e}.npy", args, *opt)
             for e, opt in engines.items()}
    runs = {e: {"load": _ask(p, None), "reps": []} for e, p in procs.items()}
    for _ in range(args.reps):
        for e, p in procs.items():
            runs[e]["reps"].append(_ask(p, "go\n"))
    for p in procs.values():
        p.stdin.close()
        if p.wait() != 0:
            raise SystemExit(f"worker {p.args[3]} failed")
    return runs


def summarise(name: str, runs: dict, probs: dict) -> dict:
    def stats(key: str, reps: list) -> dict:
        v = [r[key] for r in reps]
        return {"min": round(min(v), 2), "median": round(statistics.median(v), 2), "max": round(max(v), 2)}

    out = {"network": name}
    for e, r in runs.items():
        out[e] = {"precision": r["load"]["precision"], "warmup_s": round(r["load"]["warmup_s"], 2),
                  "wall_s": stats("wall_s", r["reps"]), "cpu_s": stats("cpu_s", r["reps"]),
                  "peak_rss_mb": round(max(x["rss_mb"] for x in r["reps"]))}
    a, b = probs["ours"] > 0.5, probs["nnunet"] > 0.5
    out["speedup_wall_median"] = round(out["nnunet"]["wall_s"]["median"] / out["ours"]["wall_s"]["median"], 2)
    out["speedup_cpu_median"] = round(out["nnunet"]["cpu_s"]["median"] / out["ours"]["cpu_s"]["median"], 2)
    out["dice"] = round(float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1)), 5)
    out["mean_abs_prob_diff"] = float(np.abs(probs["ours"] - probs["nnunet"]).mean())
    out["lesion_fraction"] = round(float(b.mean()), 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--with-baseline", action="store_true", help="also time our engine without the CPU levers")
    p.add_argument("--networks", nargs="+", default=["resenc", "plain"], choices=["resenc", "plain"])
    p.add_argument("--spacing", nargs=3, type=float, default=[3.0, 2.8, 2.8],
                   help="plans spacing, nnU-Net order [z, y, x] (image is 0.7x0.7x3 mm)")
    p.add_argument("--patch", nargs=3, type=int, default=[32, 64, 64])
    p.add_argument("--folds", type=int, default=1)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="our engine's precision (nnU-Net: float32)")
    p.add_argument("--compile", action="store_true", help="torch.compile (inductor) our network")
    p.add_argument("--whole-process", action="store_true",
                   help="each repetition a whole process per engine (bidsapp.segment vs nnUNetPredictor)")
    p.add_argument("--shape", nargs=3, type=int, default=list(SHAPE), help="phantom shape (0.7x0.7x3 mm)")
    p.add_argument("--isa", nargs="+", default=["native"], choices=["native", "avx2"],
                   help="--whole-process: as is, and/or limited to AVX2")
    p.add_argument("--backend", help="--whole-process: our --backend (torch|openvino|auto), once wired")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "engine_vs_nnunet.json")
    p.add_argument("--worker", choices=["ours", "nnunet"], help=argparse.SUPPRESS)
    p.add_argument("--nnunet-once", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--image", help=argparse.SUPPRESS)
    p.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker or args.nnunet_once:
        (worker if args.worker else nnunet_once)(args)
        return 0
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    if args.whole_process:
        return main_whole(args)
    results = {"command": " ".join(["python", *sys.argv]), "image": {"shape": SHAPE, "zooms_mm": ZOOMS},
               "plans_spacing": args.spacing, "patch": args.patch, "threads": args.threads,
               "reps": args.reps, "folds": args.folds, "cpu": _cpu(), "precision": args.precision,
               "compile": args.compile, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        folders = build_models(Path(tmp), args.spacing, args.patch, args.folds, args.networks)
        for name in args.networks:
            runs = run_interleaved(folders[name], Path(tmp), name, args)
            probs = {e: np.load(Path(tmp) / f"{name}_{e}.npy") for e in ("ours", "nnunet")}
            res = summarise(name, runs, probs)
            results["results"].append(res)
            print(json.dumps(res), flush=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def main_whole(args) -> int:
    results = {"command": " ".join(["python", *sys.argv]), "mode": "whole processes",
               "image": {"shape": args.shape, "zooms_mm": ZOOMS}, "plans_spacing": args.spacing,
               "patch": args.patch, "threads": args.threads, "reps": args.reps, "folds": args.folds,
               "cpu": _cpu(), "backend": args.backend, "backend_resolved": _backend(args),
               "load_average": os.getloadavg(), "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        folders = build_models(Path(tmp), args.spacing, args.patch, args.folds, args.networks)
        for name in args.networks:
            work = Path(tmp) / f"run-{name}"
            work.mkdir()
            results["results"].append({"network": name, "runs": run_whole(folders[name], work, args)})
    results["load_average_after"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def _backend(args) -> str:
    """What our command resolves ``--backend`` (default auto) to here, in the run's precision."""
    from bidsapp.settings import resolve_run_backend, resolve_run_precision

    return resolve_run_backend(args.backend or "auto", "cpu", resolve_run_precision(args.precision, "cpu"))


def _cpu() -> str:
    from bidsapp.engine.precision import cpu_features

    name = f"{os.cpu_count()} CPUs"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
                break
    except OSError:
        pass
    return f"{name}; {cpu_features().describe()}"


if __name__ == "__main__":
    sys.exit(main())
