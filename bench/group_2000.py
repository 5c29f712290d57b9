"""Group level on 2,000 images: build time of run_group, and the QC page's responsiveness in Chromium.

Synthesises N participant-level QC records (valid per the schema, 5 % failed, random entities and lesion
volumes) with small distinct PNGs for every view in a temporary output_dir, then times ``run_group``
(fresh process state per repetition is not needed: it reads everything from disk each time).

    .venv/bin/python bench/group_2000.py [--images 2000] [--reps 3] [--no-browser]

No peer: SCT's QC has no group build step (each job rewrites a shared datasets.js under a lock) and
MRIQC's group report needs MRIQC's own outputs, so the figure is compared with the target (<= 30 s).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bidsapp.group import run_group  # noqa: E402
from bidsapp.metrics import LesionStats  # noqa: E402
from bidsapp.qc import VIEWS, QcJob, build_record, qc_names  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SIZES = {"axial": (640, 324), "axialoverlay": (640, 324), "sagittal": (300, 560),
         "sagittaloverlay": (300, 560), "thumb": (112, 112)}
VARIANTS = 16   # distinct pictures per view, written to every image's own files (small, fast to make)


def _png(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    """A small picture of the right size (a smooth 4x4 field upsampled: a few kB)."""
    small = rng.integers(0, 255, (4, 4), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small, "L").resize(size, Image.BILINEAR).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def synthesise(out: Path, n: int, seed: int = 0) -> int:
    """Write n QC records + PNGs under out; returns bytes of PNG written."""
    rng = np.random.default_rng(seed)
    pictures = {view: [_png(rng, SIZES[view]) for _ in range(VARIANTS)] for view in VIEWS}
    total = 0
    contrasts = ["T2w", "T2starw", "UNIT1"]
    for i in range(n):
        sub, ses = f"{i // 2:04d}", ("M0", "M12")[i % 2]
        con = contrasts[i % 3]
        task = "lesion_ms_mp2rage" if con == "UNIT1" else "lesion_ms"
        src = f"sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_acq-sag_{con}.nii.gz"
        names = qc_names(src, task)
        (out / names["record"]).parent.mkdir(parents=True, exist_ok=True)
        if rng.random() < 0.05:
            rec = build_record(QcJob(src, task, "r1", False, runtime_s=1.0), status="failed",
                               error=f"{src}: synthetic failure {i}")
        else:
            vols = sorted(rng.lognormal(3.5, 1.0, rng.poisson(2.5)).round(3).tolist(), reverse=True)
            figures = {}
            for view in VIEWS:
                data = pictures[view][int(rng.integers(VARIANTS))]
                (out / names[view]).write_bytes(data)
                total += len(data)
                figures[view] = names[view]
            mask = src.replace(f"_{con}.nii.gz", f"_label-lesion_desc-{con}_mask.nii.gz")
            job = QcJob(src, task, "r1", False, runtime_s=float(rng.uniform(20, 90)), outputs={"mask": mask})
            rec = build_record(job, stats=LesionStats(len(vols), round(sum(vols), 3), vols), figures=figures)
        (out / names["record"]).write_text(json.dumps(rec, indent=2))
    (out / "dataset_description.json").write_text(json.dumps({"Name": "bench"}))
    return total


def time_group(out: Path, reps: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of run_group (CPU time is the fairer figure on a shared machine)."""
    wall, cpu = [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        code = run_group(out)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if code != 0:
            raise SystemExit(f"run_group exited {code}")
    return wall, cpu


def time_page(out: Path, reps: int) -> dict[str, list[float]]:
    """Open the page in headless Chromium: load to first table, next page, sort, filter (ms)."""
    from playwright.sync_api import sync_playwright

    res: dict[str, list[float]] = {"load_ms": [], "next_page_ms": [], "sort_ms": [], "filter_ms": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(reps):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            start = time.perf_counter()
            page.goto((out / "qc/index.html").as_uri())
            page.wait_for_selector("#rows tr")
            res["load_ms"].append((time.perf_counter() - start) * 1000)
            for key, action in (("next_page_ms", lambda p=page: p.keyboard.press("ArrowRight")),
                                ("sort_ms", lambda p=page: p.locator("#head th").nth(7).click()),
                                ("filter_ms", lambda p=page: p.locator("#f-sub").fill("01"))):
                # Measured inside the page: from the event to the end of the synchronous re-render.
                page.evaluate("window.__t = 0; document.addEventListener('keydown', () => "
                              "{window.__t = performance.now()}, {capture: true, once: true});"
                              "document.addEventListener('click', () => {window.__t = performance.now()},"
                              "{capture: true, once: true});"
                              "document.addEventListener('input', () => {window.__t = performance.now()},"
                              "{capture: true, once: true});")
                action()
                ms = page.evaluate("new Promise(r => requestAnimationFrame("
                                   "() => r(performance.now() - window.__t)))")
                res[key].append(ms)
            if errors:
                raise SystemExit(f"page errors: {errors}")
            page.close()
        browser.close()
    return res


def time_render(reps: int) -> tuple[tuple[int, ...], list[float], dict[str, int]]:
    """Participant-level cost: render_image_qc on a 320x320x60 phantom (0.7x0.7x3 mm) with its cord."""
    from bidsapp.demo.phantom import Grid, make_phantom
    from bidsapp.qc import render_image_qc

    grid = Grid(voxel_size=(0.7, 0.7, 3.0), fov_mm=(224, 224, 180))
    ph = make_phantom("T2w", rng=np.random.default_rng(0), grid=grid)
    times, out = [], {}
    for _ in range(reps):
        start = time.perf_counter()
        out = render_image_qc(ph.image, ph.lesion, ph.cord)
        times.append(time.perf_counter() - start)
    return ph.image.shape, times, {k: len(v) for k, v in out.items()}


def _fmt(values: list[float], unit: str) -> str:
    return f"min {min(values):.2f} / median {statistics.median(values):.2f} / max {max(values):.2f} {unit}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cordlesion-bench-group-") as tmp:
        out = Path(tmp) / "out"
        t0 = time.perf_counter()
        png_bytes = synthesise(out, args.images)
        print(f"synthesised {args.images} records + {png_bytes / 1e6:.1f} MB PNG "
              f"in {time.perf_counter() - t0:.1f} s")
        wall, cpu = time_group(out, args.reps)
        html = out / "qc/index.html"
        print(f"run_group on {args.images} images ({args.reps} reps): wall {_fmt(wall, 's')}; "
              f"CPU {_fmt(cpu, 's')}")
        print(f"index.html {html.stat().st_size / 1e6:.2f} MB, lesions.tsv "
              f"{(out / 'group/lesions.tsv').stat().st_size / 1e3:.0f} kB")
        if not args.no_browser and os.path.exists(CHROMIUM):
            for key, values in time_page(out, args.reps).items():
                print(f"page {key}: {_fmt(values, 'ms')}")
    shape, times, sizes = time_render(args.reps)
    print(f"render_image_qc on {shape} ({args.reps} reps): {_fmt(times, 's')}; PNG kB "
          + ", ".join(f"{k} {v / 1e3:.0f}" for k, v in sizes.items()))
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
