#!/usr/bin/env python3
"""Cost of model integrity checks at the size of the real lesion_ms release (~760 MB, 5 folds).

Installs a lesion_ms-shaped release (5 per-fold zips of 150 MB random checkpoints) from local files, then
times: locate() on the fast path (sizes + mtimes only), locate() after every mtime changed (re-hash, as
after a copy without `cp -a`), the same again in the same process (per-process cache), and the `verify`
command (full re-hash in a fresh process). Needs ~1.6 GB in $TMPDIR; removes it afterwards.

    OMP_NUM_THREADS=1 .venv/bin/python bench/models_integrity.py
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from bidsapp import models
from bidsapp.demo.modelfolder import PlansSpec, make_dataset_json, make_plans
from bidsapp.models import verify
from bidsapp.models.install import install

TRAINER = "nnUNetTrainerDAExt__nnUNetResEncUNetLPlans__3d_fullres"
FOLD_BYTES = 150 << 20


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-models-"))
    try:
        plans = make_plans(PlansSpec(network="ResidualEncoderUNet"))
        ds = make_dataset_json({"background": 0, "lesion": 1}, ["T2w"])
        zips = []
        for k in range(5):
            z = work / f"model_fold{k}.zip"
            with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
                zf.writestr(f"{TRAINER}/plans.json", json.dumps(plans))
                zf.writestr(f"{TRAINER}/dataset.json", json.dumps(ds))
                zf.writestr(f"{TRAINER}/fold_{k}/checkpoint_final.pth", os.urandom(FOLD_BYTES))
            zips.append(str(z))
        mdl = work / "models"
        res = {"install_s": _timed(lambda: install("lesion_ms", models_dir=mdl, origin=zips))}
        for z in zips:
            os.unlink(z)
        res["locate_fast_s"] = _timed(lambda: models.locate("lesion_ms", models_dir=mdl))
        for p in mdl.rglob("*.pth"):
            os.utime(p)
        verify._HASH_CACHE.clear()
        res["locate_rehash_s"] = _timed(lambda: models.locate("lesion_ms", models_dir=mdl))
        res["locate_again_same_process_s"] = _timed(lambda: models.locate("lesion_ms", models_dir=mdl))
        cmd = [sys.executable, "-m", "bidsapp.models", "verify", "--models-dir", str(mdl)]
        res["verify_cli_s"] = _timed(lambda: subprocess.run(cmd, check=True, capture_output=True))
        res = {k: round(v, 4) for k, v in res.items()}
        res["bytes"] = sum(p.stat().st_size for p in mdl.rglob("*") if p.is_file())
        print(json.dumps(res))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
