"""lesion_ms on the full image vs on a crop around the cord (spinalcord first): speed and agreement.

    .venv/bin/python bench/lesion_ms_crop.py [--reps 3] [--threads 2] [--spacing 3.0 1.4 1.4]
        [--patch 32 96 96] [--n-phantoms 6] [--margins 15 30] [--skip-timing] [--skip-agreement]
        [--out bench/lesion_ms_crop.json]

Timing: throw-away model folders with random weights at official-like sizes (bidsapp.demo.modelfolder):
a ResEnc-L-like ``ResidualEncoderUNet`` as lesion_ms (features 32..320, 1-3-4-6-6-6 blocks) and a
``PlainConvUNet`` as spinalcord, both at the given plans spacing and patch. The image is the
320x320x60 phantom at 0.7x0.7x3 mm of bench/engine_vs_nnunet.py (body, cord-like tube, blobs).
Full path: lesion_ms on the whole image. Crop path (what ``pipelines`` runs): spinalcord on the whole
image with windows at the lesion_ms box rule's ``cord_tile_step`` (timed), the box around the cord,
lesion_ms on the whole image's windows that overlap the box. Also timed: the lesion pass alone (the
engine's "box" tiling, measured in bench/RESULTS-crop.md, was removed in issue 16). Random weights give
no meaningful cord, so the box is computed from the phantom's true tube (same function, same margins):
the time of every model pass is real, the box size is what a correct cord mask gives. Predictors are loaded
and warmed up first; repetitions alternate full / crop.

Agreement: the demo models (bidsapp/models/demo) through ``pipelines.segment`` with ``crop=False``
and ``crop=True`` on held-out phantoms (seeds not used in training) with lesions
inside the cord, T2w and T2starw, axial and sagittal, with a field of view wider than the demo
datasets' so the box really leaves tissue out: Dice full vs crop (whole image and inside the box),
the whole-image lesion voxels outside the box (and how many are true lesion), and each vs the ground
truth, for each in-plane margin in ``--margins``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def stats(values: list[float]) -> dict:
    return {"min": round(min(values), 2), "median": round(statistics.median(values), 2),
            "max": round(max(values), 2), "all": [round(v, 2) for v in values]}


# ---- timing -----------------------------------------------------------------------------------------
def build_models(dest: Path, spacing, patch, cord_spacing=None, cord_patch=None) -> dict[str, Path]:
    from bidsapp.demo.modelfolder import PlansSpec, make_dataset_json, make_plans, write_model_folder
    from bidsapp.engine.network import random_state_dict

    out = {}
    for key, network, labels, sp, pa in (
            ("lesion_ms", "ResidualEncoderUNet", {"background": 0, "lesion": 1}, spacing, patch),
            ("spinalcord", "PlainConvUNet", {"background": 0, "sc": 1}, cord_spacing or spacing,
             cord_patch or patch)):
        plans = make_plans(PlansSpec(network=network, patch_size=pa, spacing=sp, base_features=32,
                                     max_features=320))
        ds = make_dataset_json(labels, ["T2w"], "LPI")
        state = random_state_dict(plans, "3d_fullres", 1, 2, seed=0)
        out[key] = write_model_folder(dest / key, plans=plans, dataset_json=ds, fold_state_dicts={0: state})
    return out


def timing(args) -> dict:
    import torch
    from engine_vs_nnunet import SHAPE, phantom

    from bidsapp import boxes, tasks
    from bidsapp.engine import NnUNetModel, NnUNetPredictor

    torch.set_num_threads(args.threads)
    img = phantom()
    x, y = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in SHAPE[:2]], indexing="ij")
    tube = ((x - 0.05) ** 2 + (y + 0.1) ** 2) < 0.005 * np.log(2)  # where the tube is above half height
    cord = np.repeat(tube[:, :, None], SHAPE[2], axis=2)
    with tempfile.TemporaryDirectory() as tmp:
        folders = build_models(Path(tmp), args.spacing, args.patch, args.cord_spacing, args.cord_patch)
        lesion = NnUNetPredictor(NnUNetModel.load(folders["lesion_ms"]), device="cpu")
        sc = NnUNetPredictor(NnUNetModel.load(folders["spinalcord"]), device="cpu")

    def full():
        return lesion.predict(img)[1] > 0.5

    rule = tasks.get("lesion_ms").crop.box
    box = boxes.box_around_cord(cord, img.affine, rule)  # the ROI box

    def lesion_in_box():
        return lesion.predict(img, roi=box)[1] > 0.5

    def cord_pass():  # as pipelines runs it before lesion_ms: windows at the rule's cord_tile_step
        return sc.predict(img, tile_step=rule.cord_tile_step)

    def crop():
        cord_pass()  # the cord pass is part of the crop path's cost
        return lesion_in_box(), box

    t0 = time.perf_counter()
    _, box = crop()  # warm-up both predictors on their shapes
    warm_crop = time.perf_counter() - t0
    t0 = time.perf_counter()
    full()
    warm_full = time.perf_counter() - t0
    reps = {"full": [], "crop": [], "spinalcord": [], "lesion_in_box": []}
    agree = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        whole = full()
        reps["full"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cord_pass()
        reps["spinalcord"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        lesion_in_box()
        reps["lesion_in_box"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        part, _ = crop()
        reps["crop"].append(time.perf_counter() - t0)
        agree.append(dice(part[box], whole[box]))
    res = {k: stats(v) for k, v in reps.items()}
    res["dice_in_box_random_weights"] = min(agree)
    res.update(warmup_s={"full": round(warm_full, 2), "crop": round(warm_crop, 2)},
               box_voxels=[[s.start, s.stop] for s in box], image_shape=list(SHAPE),
               crop_shape=[s.stop - s.start for s in box],
               speedup_median=round(res["full"]["median"] / res["crop"]["median"], 2),
               speedup_min=round(res["full"]["min"] / res["crop"]["min"], 2),
               speedup_lesion_pass_median=round(res["full"]["median"] / res["lesion_in_box"]["median"], 2),
               lesion_plans={"spacing": list(args.spacing), "patch": lesion.model.config["patch_size"]},
               cord_plans={"spacing": list(sc.model.config["spacing"]),
                           "patch": sc.model.config["patch_size"]})
    return res


# ---- agreement --------------------------------------------------------------------------------------
def held_out_phantoms(n: int, seed0: int = 90_000):
    """Phantoms with lesions (inside the cord by construction), wider field of view than training."""
    from bidsapp.demo.phantom import AXIAL_ORIENTATIONS, SAGITTAL_ORIENTATIONS, Grid, make_phantom

    for i in range(n):
        rng = np.random.default_rng(seed0 + i)
        contrast = ("T2w", "T2starw")[i % 2]
        plane = "ax" if (i // 2) % 2 == 0 else "sag"
        if plane == "ax":
            geo = Grid(AXIAL_ORIENTATIONS[i % len(AXIAL_ORIENTATIONS)], (0.5, 0.5, 2.0), (100.0, 100.0, 70.0))
        else:
            geo = Grid(SAGITTAL_ORIENTATIONS[i % len(SAGITTAL_ORIENTATIONS)], (0.8, 0.8, 0.8),
                       (90.0, 90.0, 90.0))
        yield f"{contrast}-{plane}-{seed0 + i}", make_phantom(contrast, rng=rng, grid=geo)


def agreement(args) -> list[dict]:
    import torch

    from bidsapp import pipelines, tasks
    from bidsapp.pipelines import RunOptions

    torch.set_num_threads(args.threads)
    rows = []
    for name, ph in held_out_phantoms(args.n_phantoms):
        truth = np.asarray(ph.lesion.dataobj) > 0
        t0 = time.perf_counter()
        full = pipelines.segment(ph.image, task="lesion_ms",
                                 options=RunOptions(demo=True, crop=False, device="cpu"))
        t_full = time.perf_counter() - t0
        fmask = np.asarray(full.mask.dataobj) > 0
        row = {"image": name, "shape": list(ph.image.shape), "truth_voxels": int(truth.sum()),
               "full_s": round(t_full, 2), "dice_full_truth": round(dice(fmask, truth), 4), "margins": {}}
        for margin in args.margins:
            spec = _with_margin(tasks.get("lesion_ms"), float(margin))  # the bench passes its margins
            entry = {}
            for tiling in ("image",):  # the engine's one tiling of a box (issue 16 removed "box")
                t0 = time.perf_counter()
                cr = pipelines.segment(ph.image, task=spec,
                                       options=RunOptions(demo=True, crop=True, device="cpu"))
                t_crop = time.perf_counter() - t0
                cmask = np.asarray(cr.mask.dataobj) > 0
                box_v = cr.provenance.crop.box_voxels
                box = tuple(slice(a, b) for a, b in box_v)
                outside = np.ones(cmask.shape, bool)
                outside[box] = False
                kept = float(np.prod([b - a for a, b in box_v]) / np.prod(ph.image.shape[:3]))
                entry[tiling] = {
                    "crop_s": round(t_crop, 2), "box_voxels": box_v, "box_fraction": round(kept, 3),
                    "touches_box": cr.provenance.crop.mask_touches_box,
                    "same_grid": bool(np.array_equal(cr.mask.affine, ph.image.affine)
                                      and cr.mask.shape == ph.image.shape[:3]),
                    "dice_crop_full": round(dice(cmask, fmask), 4),
                    "dice_crop_full_in_box": round(dice(cmask[box], fmask[box]), 4),
                    "voxels_differing_in_box": int((cmask[box] ^ fmask[box]).sum()),
                    "full_lesion_voxels_outside_box": int(fmask[outside].sum()),
                    "of_which_true_lesion": int((fmask & truth)[outside].sum()),
                    "dice_crop_truth": round(dice(cmask, truth), 4)}
            row["margins"][str(margin)] = entry
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _with_margin(spec, margin_mm: float):
    """The task row with another in-plane box margin (rows are frozen: a modified copy)."""
    box = dataclasses.replace(spec.crop.box, margin_mm=margin_mm)
    return dataclasses.replace(spec, crop=dataclasses.replace(spec.crop, box=box))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--spacing", nargs=3, type=float, default=[3.0, 1.4, 1.4],
                   help="plans spacing of both timing models, nnU-Net axis order (z, y, x)")
    p.add_argument("--patch", nargs=3, type=int, default=[32, 96, 96])
    p.add_argument("--cord-spacing", nargs=3, type=float,
                   help="plans spacing of the spinalcord timing model (default: --spacing)")
    p.add_argument("--cord-patch", nargs=3, type=int, help="its patch (default: --patch)")
    p.add_argument("--n-phantoms", type=int, default=6)
    p.add_argument("--margins", nargs="+", type=float, default=[10.0, 30.0],
                   help="in-plane crop margins (mm) to measure agreement for")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--skip-agreement", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "lesion_ms_crop.json")
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    result = {"threads": args.threads, "cpu": os.cpu_count()}
    if not args.skip_agreement:
        rows = agreement(args)
        result["agreement"] = rows
        result["agreement_min_dice_crop_full"] = {
            f"{m} {t}": min(r["margins"][str(m)][t][key] for r in rows)
            for m in args.margins for t in ("image",) for key in ("dice_crop_full_in_box",)}
        print(json.dumps(result["agreement_min_dice_crop_full"]), flush=True)
    if not args.skip_timing:
        result["timing"] = timing(args)
        print(json.dumps(result["timing"]), flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
