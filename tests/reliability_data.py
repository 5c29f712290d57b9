"""Helpers shared by tests/test_reliability_*.py: tiny phantom BIDS datasets, bad images, output scans."""
from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from bidsapp.demo.dataset import save_nifti
from bidsapp.demo.phantom import Grid, make_phantom

REPO = Path(__file__).resolve().parents[1]
RUN_PY = REPO / "run.py"
#: One thread per process everywhere: the machine is shared and the results must not depend on it.
ENV_1THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class HalfThenENOSPC:
    """Stands in for a file object from ``os.fdopen``: writes half the bytes, then fails as a full disk
    does. ``hits`` (optional) collects the names written to."""

    def __init__(self, fh, hits: list | None = None):
        self.fh, self.hits = fh, hits

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def write(self, data):
        if self.hits is not None:
            self.hits.append(self.fh.name)
        self.fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def live_processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live (not zombie) process, read from /proc (no psutil)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if fields[0] != "Z":
            found.append((int(stat.parent.name), int(fields[1]), int(fields[2])))
    return found


#: the lesion mask of tiny_bids' subject n (``MASK.format(n="01")``)
MASK = "sub-{n}/anat/sub-{n}_acq-sag_label-lesion_desc-T2w_mask.nii.gz"


def tiny_bids(root: Path, n_subjects: int = 2, seed: int = 7) -> Path:
    """A BIDS dataset of ``n_subjects`` small sagittal T2w phantoms (about 30x36x60 voxels each)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "reliability phantoms", "BIDSVersion": "1.10.0", "Authors": ["cordlesion tests"]}))
    (root / "README").write_text("Tiny phantom dataset for the reliability tests.\n")
    for i in range(n_subjects):
        ph = make_phantom("T2w", rng=np.random.default_rng([seed, i]),
                          grid=Grid(fov_mm=(24.0, 28.0, 48.0), tilt_deg=3.0))
        write_image(root, f"sub-{i + 1:02d}", "sag", ph.image)
    return root


def write_image(root: Path, sub: str, acq: str, img: nib.Nifti1Image) -> Path:
    path = image_path(root, sub, acq)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_nifti(img, path)
    return path


def image_path(root: Path, sub: str, acq: str) -> Path:
    return root / sub / "anat" / f"{sub}_acq-{acq}_T2w.nii.gz"


def good_image(root: Path) -> nib.Nifti1Image:
    return nib.load(str(next(root.glob("sub-01/anat/*_T2w.nii.gz"))))


def add_bad_images(root: Path) -> dict[str, str]:
    """Add one bad image per case to sub-01 (as extra acq- labels); return ``{path: expected reason}``."""
    ref = good_image(root)
    data = np.asarray(ref.dataobj).astype(np.float32)
    anat = root / "sub-01" / "anat"
    bad: dict[str, str] = {}

    def put(acq: str, reason: str, img: nib.Nifti1Image | None = None, raw: bytes | None = None) -> Path:
        path = image_path(root, "sub-01", acq)
        if img is not None:
            save_nifti(img, path)
        elif raw is not None:
            path.write_bytes(raw)
        bad[str(path)] = reason
        return path

    good_bytes = image_path(root, "sub-01", "sag").read_bytes()
    put("trunc", "truncated or corrupt gzip data", raw=good_bytes[: len(good_bytes) // 2])
    put("notgz", "not gzip-compressed despite the .gz extension", raw=gzip.decompress(good_bytes))
    put("empty", "empty file (0 bytes)", raw=b"")
    put("twod", "expected a 3D image, got 2D", nib.Nifti1Image(data[:, :, 0], ref.affine))
    put("fourd", "expected a 3D image, got 4D", nib.Nifti1Image(np.stack([data, data], -1), ref.affine))
    nan = data.copy()
    nan[3, 3, 3] = np.nan
    put("nan", "NaN", nib.Nifti1Image(nan, ref.affine))
    put("zero", "image is all zero", nib.Nifti1Image(np.zeros_like(data), ref.affine))
    rgb = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    put("rgb", "RGB/structured data type", nib.Nifti1Image(rgb, ref.affine))
    link = image_path(root, "sub-01", "annex")
    link.symlink_to("../../.git/annex/objects/Qx/7v/MD5E-s9--0.nii.gz/MD5E-s9--0.nii.gz")
    bad[str(link)] = "datalad get"
    for path in bad:
        Path(path).with_name(Path(path).name.replace(".nii.gz", ".json")).write_text("{}")
    assert anat.is_dir()
    return bad


def drop_cli_log_handlers() -> None:
    """cli.main adds a handler bound to the current sys.stderr; under capsys that stream is closed after
    the test, so remove it (as cli does itself on its next call)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_cordlesion", False)]:
        root.removeHandler(handler)


def main_in_process(args: list) -> int:
    """``cli.main`` in this process, leaving it as found: torch threads (the runner sets them for
    --nprocs 1) and the log handler cli adds."""
    import torch

    from bidsapp import cli

    threads = torch.get_num_threads()
    try:
        return cli.main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
        drop_cli_log_handlers()


def run_app(args: list[str], *, timeout: float = 120, env: dict | None = None,
            **popen) -> subprocess.CompletedProcess:
    """``run.py`` in a subprocess (1 thread), output captured."""
    return subprocess.run([sys.executable, str(RUN_PY), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **ENV_1THREAD, **(env or {})}, cwd=REPO,
                          **popen)


def scan_outputs(output_dir: Path) -> dict[str, list[str]]:
    """Every visible output file: .nii.gz must load fully, .json must parse, .png must decode.

    Returns ``{"nifti": [...], "json": [...], "temp": [...hidden temporary files...]}`` (relative paths);
    raises AssertionError naming the first corrupt file."""
    found: dict[str, list[str]] = {"nifti": [], "json": [], "png": [], "temp": [], "other": []}
    for path in sorted(output_dir.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(output_dir).as_posix()
        if path.name.startswith(".") and ".tmp" in path.name:
            found["temp"].append(rel)
            continue
        if path.name.endswith(".nii.gz") or path.name.endswith(".nii"):
            try:
                img = nib.load(str(path))
                np.asarray(img.dataobj)
                if path.name.endswith(".gz"):
                    gzip.decompress(path.read_bytes())  # CRC and length of the whole stream
            except Exception as exc:
                raise AssertionError(f"corrupt NIfTI under a final name: {rel} ({exc})") from exc
            found["nifti"].append(rel)
        elif path.suffix == ".png":
            try:
                with Image.open(path) as png:
                    png.verify()  # reads the whole file: a truncated PNG fails
            except Exception as exc:
                raise AssertionError(f"corrupt PNG under a final name: {rel} ({exc})") from exc
            found["png"].append(rel)
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except ValueError as exc:
                raise AssertionError(f"corrupt JSON under a final name: {rel} ({exc})") from exc
            found["json"].append(rel)
        else:
            found["other"].append(rel)
    return found


def masks(output_dir: Path, pattern: str = "*_mask.nii.gz") -> dict[str, bytes]:
    """``{relative path: bytes}`` of the output images matching ``pattern`` (masks by default)."""
    return {p.relative_to(output_dir).as_posix(): p.read_bytes()
            for p in sorted(output_dir.glob(f"sub-*/**/{pattern}"))}


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


class Reference:
    """A clean run's mask bytes and wall time (the yardstick for kills, concurrency, determinism)."""

    def __init__(self, output_dir: Path, seconds: float, log: str):
        self.output_dir = output_dir
        self.seconds = seconds
        self.work_seconds = _work_seconds(log) or seconds / 2
        self.masks = masks(output_dir)
        self.probsegs = masks(output_dir, "*_probseg.nii.gz")


_REFERENCES: dict[str, Reference] = {}


def _work_seconds(log: str) -> float:
    """Seconds the images took: the sum of the runner's "done in X s" lines."""
    import re

    return sum(float(x) for x in re.findall(r" done in ([0-9.]+) s", log))


def reference_run(tmp_path_factory, bids: Path, *extra: str) -> Reference:
    """Run the app once on ``bids`` (subprocess, 1 process, 1 thread), cached for the session."""
    key = f"{bids}|{' '.join(extra)}"
    if key not in _REFERENCES:
        out = tmp_path_factory.mktemp("reference") / "out"
        start = time.monotonic()
        res = run_app([bids, out, "participant", "--demo", "--skip_bids_validator", "--nprocs", "1",
                       "--omp-nthreads", "1", *extra])
        assert res.returncode == 0, res.stderr[-3000:]
        _REFERENCES[key] = Reference(out, time.monotonic() - start, res.stderr)
        assert _REFERENCES[key].masks, "the reference run wrote no mask"
    return _REFERENCES[key]
