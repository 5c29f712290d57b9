"""The whole default lesion_ms per image (5 folds + the cord pass) at full size, ours vs the real SCT 7.3.

    .venv/bin/python bench/lesion_ms_vs_sct.py [--reps 3] [--threads 2] [--patch 64 192 160]
        [--cord-patch 64 192 160] [--features 32 320] [--isa native] [--backend openvino]
        [--skip-sct] [--out bench/lesion_ms_vs_sct.json]

Issue 23 item 3. Release-shaped checkpoints with random weights (last layer sharpened, so the lesion
class wins in a sizeable region; each fold its own seed): ``lesion_ms`` as r20250909 (ResEnc-L,
features 32..320, 5 folds, ``nnUNetResEncUNetL1x1x1_Model2_Plans``: 1 mm plans, so resampling is part
of the work) and ``spinalcord`` (PlainConvUNet, ``fold_all``, 1 mm plans). The release's patch is not
known here: ``--patch`` / ``--cord-patch`` (default 64x192x160). Both are installed into a models folder
with ``python -m bidsapp.models install`` (``--origin`` = the folders), as a user would.

The image is bench/engine_vs_nnunet.py's phantom, 320x320x60 at 0.7x0.7x3 mm. Each repetition is a study
of two such images (seeds 0 and 1, ``sub-01``, ``sub-02``) run as a whole process by the BIDS App
(``run.py BIDS OUT participant --models-dir M -w WORK --omp-nthreads N --skip-bids-validator``, a fresh
output and work folder each time; ``--backend`` passed on once the option exists): the run's wall time
and peak RSS, and each image's ``RunTimeSeconds`` from its mask sidecar. The first image of a study pays
what the second does not (model load, the OpenVINO conversion unless its cache holds it): the cache's
effect is image 1 vs image 2. Then SCT 7.3 on ``sub-01``'s image, as its users run it:
``sct_deepseg lesion_ms`` and ``sct_deepseg spinalcord`` (``tests/sct_real.py``: ``run_sct.sh`` serves
the model zip and installs it first; only the ``sct_deepseg -i`` run is timed, from a shell trace,
which also leaves out the wait for the lock other runs of SCT hold). Repetitions alternate ours / SCT.
Agreement on ``sub-01``: Dice and differing voxels of the lesion masks and of the cord masks.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine_vs_nnunet import _cpu, _sharpen, phantom  # noqa: E402 - after the path set-up
from processes import ISA_ENV, backend_option, checked, env_for, timed  # noqa: E402

RUN_PY = [sys.executable, str(ROOT / "run.py")]
CORD_DATASET = "Dataset101_contrastAgnosticSC"


# ---- models -----------------------------------------------------------------------------------------
def build_models(dest: Path, args) -> dict[str, Path]:
    """The two release-shaped trainer folders (random, sharpened weights)."""
    from bidsapp.demo.modelfolder import PlansSpec, make_dataset_json, make_plans, write_model_folder
    from bidsapp.engine.network import random_state_dict
    from tests.sct_oracle import LESION_DATASET, LESION_PLANS, LESION_TRAINER

    base, top = args.features
    specs = {
        "lesion_ms": (PlansSpec(network="ResidualEncoderUNet", patch_size=args.patch, spacing=[1.0] * 3,
                                base_features=base, max_features=top, plans_name=LESION_PLANS,
                                dataset_name=LESION_DATASET), ["T2w"], {"background": 0, "lesion": 1},
                      None, LESION_TRAINER, range(5)),
        "spinalcord": (PlansSpec(network="PlainConvUNet", patch_size=args.cord_patch, spacing=[1.0] * 3,
                                 base_features=base, max_features=top, dataset_name=CORD_DATASET),
                       ["T2w"], {"background": 0, "sc": 1}, "RPI", "nnUNetTrainer", ["all"]),
    }
    out = {}
    for name, (spec, channels, labels, orientation, trainer, folds) in specs.items():
        plans = make_plans(spec)
        patch = plans["configurations"]["3d_fullres"]["patch_size"]
        states = {f: _sharpen(random_state_dict(plans, "3d_fullres", 1, 2, seed=k), plans, patch)
                  for k, f in enumerate(folds)}
        out[name] = write_model_folder(dest / name, plans=plans, dataset_json=make_dataset_json(
            labels, channels, orientation), trainer=trainer, fold_state_dicts=states)
    return out


def install_models(folders: dict[str, Path], models_dir: Path) -> None:
    from bidsapp.models.install import install

    for name, folder in folders.items():
        install(name, models_dir=models_dir, origin=[str(folder)])


def write_study(bids: Path, shape) -> list[Path]:
    """Two subjects, one T2w each (phantom seeds 0 and 1; 320x320x60 at 0.7x0.7x3 mm by default)."""
    import nibabel as nib

    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))
    paths = []
    for k in range(2):
        path = bids / f"sub-0{k + 1}" / "anat" / f"sub-0{k + 1}_T2w.nii.gz"
        path.parent.mkdir(parents=True)
        nib.save(phantom(seed=k, shape=tuple(shape)), path)
        paths.append(path)
    return paths


# ---- one repetition of each side --------------------------------------------------------------------
def ours_study(bids: Path, tmp: Path, models_dir: Path, rep: int, args) -> dict:
    out, work = tmp / f"out-{rep}", tmp / f"work-{rep}"
    cmd = [*RUN_PY, str(bids), str(out), "participant", "--models-dir", str(models_dir), "-w", str(work),
           "--omp-nthreads", str(args.threads), "--skip-bids-validator",
           *backend_option(args.backend, RUN_PY)]
    res = checked(timed(cmd, env_for(args.isa, args.threads)), "our BIDS App run")
    images = {}
    for sidecar in sorted(out.glob("sub-*/anat/*_label-lesion_desc-T2w_mask.json")):
        images[sidecar.name.split("_")[0]] = json.loads(sidecar.read_text())["Provenance"]["RunTimeSeconds"]
    return {"wall_s": round(res["wall_s"], 2), "peak_rss_mb": res["peak_rss_mb"], "image_s": images,
            "out": str(out)}


def sct_run(sct, task: str, zip_path: Path, image: Path, out: Path, args) -> dict:
    """``run_sct.sh`` under a timestamped shell trace: the ``sct_deepseg -i`` run alone is timed."""
    env = env_for(args.isa, args.threads, SCT_ORACLE_ROOT=str(sct.root))
    # PS4 is set inside the shell: bash run as root ignores a PS4 from the environment
    trace = 'PS4="+\\${EPOCHREALTIME} "; set -x; . "$0" "$@"'
    res = checked(timed(["bash", "-c", trace, str(sct.peer / "run_sct.sh"), task, zip_path, image, out], env),
                  f"SCT 7.3 sct_deepseg {task}")
    stamps = re.findall(r"^\++(\d+\.\d+) (.*)$", res["stderr"], flags=re.MULTILINE)
    start = next(float(t) for t, line in stamps if "sct_deepseg" in line and " -i " in line)
    end = next(float(t) for t, line in stamps if float(t) > start and "run_sct.sh: wrote" in line)
    return {"deepseg_s": round(end - start, 2), "script_s": round(res["wall_s"], 2),
            "peak_rss_mb": res["peak_rss_mb"]}


def agreement(ours_out: Path, sct_masks: dict[str, Path]) -> dict:
    import nibabel as nib

    found = {"lesion": next(ours_out.glob("sub-01/anat/*_label-lesion_desc-T2w_mask.nii.gz")),
             "cord": next(ours_out.glob("sub-01/anat/*_label-SC_desc-T2w_mask.nii.gz"), None)}
    res = {}
    for what, path in found.items():
        if path is None or what not in sct_masks:
            continue
        a = np.asarray(nib.load(path).dataobj) > 0
        b = np.asarray(nib.load(sct_masks[what]).dataobj) > 0
        res[what] = {"dice": round(float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1)), 5),
                     "voxels_differ": int((a != b).sum()), "fraction": round(float(b.mean()), 4)}
    return res


# ---- driver -----------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict:
    return {"min": round(min(values), 2), "median": round(statistics.median(values), 2),
            "max": round(max(values), 2), "all": [round(v, 2) for v in values]}


def run(tmp: Path, args) -> dict:
    from tests.sct_real import install as install_sct
    from tests.sct_real import model_zip

    folders = build_models(tmp / "folders", args)
    models_dir = tmp / "models"
    install_models(folders, models_dir)
    images = write_study(tmp / "bids", args.shape)
    sct = None if args.skip_sct else install_sct()
    zips = {} if sct is None else {n: model_zip(f, tmp / f"{n}.zip") for n, f in folders.items()}
    ours, theirs = [], []
    for rep in range(args.reps):
        ours.append(ours_study(tmp / "bids", tmp, models_dir, rep, args))
        if sct is not None:
            masks = {"lesion": tmp / f"sct-lesion-{rep}.nii.gz", "cord": tmp / f"sct-cord-{rep}.nii.gz"}
            done = {task: sct_run(sct, task, zips[task], images[0], masks[what], args)
                    for task, what in (("lesion_ms", "lesion"), ("spinalcord", "cord"))}
            theirs.append({**done, "agreement": agreement(Path(ours[-1]["out"]), masks)})
        print(json.dumps({"rep": rep, "ours": ours[-1], "sct": theirs[-1] if theirs else None}), flush=True)
    return summarise(ours, theirs)


def summarise(ours: list[dict], theirs: list[dict]) -> dict:
    first = [r["image_s"].get("sub-01", float("nan")) for r in ours]
    second = [r["image_s"].get("sub-02", float("nan")) for r in ours]
    out = {"ours": {"study_wall_s": _stats([r["wall_s"] for r in ours]),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in ours),
                    "first_image_s": _stats(first), "second_image_s": _stats(second)},
           "reps": {"ours": ours, "sct": theirs}}
    if theirs:
        per_image = [t["lesion_ms"]["deepseg_s"] + t["spinalcord"]["deepseg_s"] for t in theirs]
        out["sct"] = {"per_image_s": _stats(per_image),
                      "lesion_ms_s": _stats([t["lesion_ms"]["deepseg_s"] for t in theirs]),
                      "spinalcord_s": _stats([t["spinalcord"]["deepseg_s"] for t in theirs]),
                      "peak_rss_mb": max(max(t["lesion_ms"]["peak_rss_mb"], t["spinalcord"]["peak_rss_mb"])
                                         for t in theirs)}
        out["speedup_second_image_median"] = round(out["sct"]["per_image_s"]["median"] /
                                                   out["ours"]["second_image_s"]["median"], 2)
        out["speedup_first_image_median"] = round(out["sct"]["per_image_s"]["median"] /
                                                  out["ours"]["first_image_s"]["median"], 2)
        out["agreement_last_rep"] = theirs[-1]["agreement"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--patch", nargs=3, type=int, default=[64, 192, 160], help="lesion_ms patch [z, y, x]")
    p.add_argument("--cord-patch", nargs=3, type=int, default=[64, 192, 160], help="spinalcord patch")
    p.add_argument("--features", nargs=2, type=int, default=[32, 320], metavar=("FIRST", "MAX"),
                   help="features of the first stage and the most of any stage (ResEnc-L: 32 320)")
    p.add_argument("--shape", nargs=3, type=int, default=[320, 320, 60], help="image shape (0.7x0.7x3 mm)")
    p.add_argument("--isa", default="native", choices=list(ISA_ENV))
    p.add_argument("--backend", help="our --backend (torch|openvino|auto), once the option exists")
    p.add_argument("--skip-sct", action="store_true", help="ours only (no SCT 7.3 here)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "lesion_ms_vs_sct.json")
    args = p.parse_args(argv)
    head = {"command": " ".join(["python", *sys.argv]), "cpu": _cpu(), "isa": args.isa, "shape": args.shape,
            "threads": args.threads, "reps": args.reps, "patch": args.patch, "cord_patch": args.cord_patch,
            "features": args.features, "backend": args.backend, "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="lesion-ms-vs-sct-") as tmp:
        res = {**head, **run(Path(tmp), args), "load_average_after": os.getloadavg()}
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "reps"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
