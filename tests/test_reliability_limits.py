"""Issue 19 through the whole app: no single image can take a run down (docs/RELIABILITY.md, section 8).

Odd voxel sizes and an image too big for a small ``--mem`` are refused from the header while the other
images land; ``--image-timeout`` kills a pathological image's worker; SIGTERM mid-run stops cleanly
(exit 143, no worker left, no partial file) and a re-run completes the rest.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from reliability_data import (
    ENV_1THREAD,
    MASK,
    RUN_PY,
    copy_dataset,
    image_path,
    live_processes,
    main_in_process,
    scan_outputs,
    tiny_bids,
)

from bidsapp import guards, memory
from bidsapp.demo.dataset import save_nifti
from bidsapp.models import locate
from bidsapp.settings import resolve_run_backend, resolve_run_precision

FAST = ["--demo", "--skip_bids_validator", "--omp-nthreads", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Read-only tiny dataset (2 subjects); copy it before changing it."""
    return tiny_bids(tmp_path_factory.mktemp("rel_limits") / "bids", n_subjects=2)


def _with_zooms(img: nib.Nifti1Image, zooms) -> nib.Nifti1Image:
    """The same voxels under a header claiming other voxel sizes (a wrong but readable header)."""
    out = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), np.diag([*zooms, 1.0]))
    out.set_qform(out.affine, 1)
    out.set_sform(out.affine, 1)
    return out


def _put(bids: Path, acq: str, img: nib.Nifti1Image) -> str:
    path = image_path(bids, "sub-01", acq)
    save_nifti(img, path)
    return str(path)


def _main(args: list, capsys) -> tuple[int, str]:
    code = main_in_process(args)
    return code, capsys.readouterr().err


def _failed(err: str) -> list[str]:
    return [line for line in err.splitlines() if "FAILED" in line]


def _good_ones_landed(out: Path) -> None:
    for n in ("01", "02"):
        assert (out / MASK.format(n=n)).is_file()
        assert (out / MASK.format(n=n).replace(".nii.gz", ".json")).is_file()
    assert scan_outputs(out)["temp"] == []


def _qc_status(out: Path, acq: str) -> dict:
    record = next((out / "sub-01" / "figures").glob(f"sub-01_acq-{acq}_T2w_desc-*_qc.json"))
    return json.loads(record.read_text())


def test_odd_voxel_sizes_are_refused_and_the_others_land(tiny, tmp_path, capsys):
    bids = copy_dataset(tiny, tmp_path / "bids")
    good = nib.load(str(image_path(bids, "sub-01", "sag")))
    bad = {_put(bids, "vox15", _with_zooms(good, (15.0, 15.0, 15.0))): "15 mm is coarser than the 10 mm",
           _put(bids, "vox20", _with_zooms(good, (0.7, 0.7, 20.0))): "20 mm is coarser than the 10 mm",
           _put(bids, "micro", _with_zooms(good, (0.001, 0.001, 0.001))): "0.001 mm is finer than the 0.1 mm"}
    out = tmp_path / "out"
    code, err = _main([bids, out, "participant", *FAST, "--nprocs", "1"], capsys)
    assert code == 1, err
    failed = _failed(err)
    assert len(failed) == 3, failed
    for path, reason in bad.items():
        lines = [line for line in failed if path in line]
        assert len(lines) == 1 and reason in lines[0] and "--allow-unusual-geometry" in lines[0], lines
    assert "ZeroDivisionError" not in err and "Traceback" not in err
    assert "15 mm is coarser" in json.dumps(_qc_status(out, "vox15"))
    _good_ones_landed(out)


def test_override_lets_unusual_geometry_run_but_memory_and_grid_still_guard(tiny, tmp_path, capsys):
    bids = copy_dataset(tiny, tmp_path / "bids")
    good = nib.load(str(image_path(bids, "sub-01", "sag")))
    vox15 = _put(bids, "vox15", _with_zooms(good, (15.0, 15.0, 15.0)))
    micro = _put(bids, "micro", _with_zooms(good, (0.001, 0.001, 0.001)))
    thick = _put(bids, "thick", _with_zooms(good, (0.8, 0.8, 12.0)))  # unusual, cheap: it runs
    out = tmp_path / "out"
    code, err = _main([bids, out, "participant", *FAST, "--nprocs", "1", "--allow-unusual-geometry",
                       "--mem", "4G"], capsys)
    assert code == 1, err
    failed = _failed(err)
    assert len(failed) == 2, failed
    assert any(vox15 in line and "needs about" in line and "from --mem 4G" in line for line in failed)
    assert any(micro in line and "too small to segment" in line for line in failed)
    assert "accepted: --allow-unusual-geometry" in err and "ZeroDivisionError" not in err
    assert (out / "sub-01" / "anat" / "sub-01_acq-thick_label-lesion_desc-T2w_mask.nii.gz").is_file(), thick
    _good_ones_landed(out)


def test_an_image_over_a_small_mem_is_refused_and_the_others_land(tiny, tmp_path, capsys):
    """A plausible but coarse image (5 mm voxels, 40^3): resampled to the lesion model's grid it needs
    more than the good images; --mem sits between the two estimates."""
    bids = copy_dataset(tiny, tmp_path / "bids")
    rng = np.random.default_rng(0)
    big = nib.Nifti1Image((100 + rng.random((40, 40, 40)) * 50).astype(np.float32), np.diag([5.0] * 3 + [1]))
    path = _put(bids, "coarse", big)
    backend = resolve_run_backend("auto", "auto", resolve_run_precision("auto", "auto"))  # the run's
    plans = guards.task_plans({m: locate(m, demo=True).path for m in ("spinalcord", "lesion_ms")},
                              backend=backend)
    good = nib.load(str(image_path(bids, "sub-01", "sag")))

    def estimate(img):
        return memory.estimate_memory(img.shape, img.header.get_zooms(), img.affine, plans).total_bytes

    assert estimate(big) > 1.2 * estimate(good)
    mem_mb = int((estimate(big) + estimate(good)) / 2 / 2 ** 20)
    out = tmp_path / "out"
    code, err = _main([bids, out, "participant", *FAST, "--nprocs", "1", "--mem", f"{mem_mb}MB"], capsys)
    assert code == 1, err
    failed = _failed(err)
    assert len(failed) == 1 and path in failed[0], failed
    assert "needs about" in failed[0] and f"more than the limit ({memory.format_bytes(mem_mb * 2 ** 20)} " \
        f"from --mem {mem_mb}MB)" in failed[0], failed[0]
    _good_ones_landed(out)


def test_image_timeout_kills_one_pathological_image_and_the_others_land(tiny, tmp_path, capsys):
    """8 mm voxels are plausible, but resampled to the demo lesion grid this image is ~45 million voxels:
    minutes of work. With --image-timeout its worker is killed, a new one does the rest."""
    bids = copy_dataset(tiny, tmp_path / "bids")
    good = nib.load(str(image_path(bids, "sub-01", "sag")))
    slow = _put(bids, "slow", _with_zooms(good, (8.0, 8.0, 8.0)))
    out = tmp_path / "out"
    start = time.monotonic()
    code, err = _main([bids, out, "participant", *FAST, "--nprocs", "1", "--image-timeout", "20",
                       "--no-crop"], capsys)
    assert code == 1, err
    failed = _failed(err)
    assert len(failed) == 1 and slow in failed[0] and "--image-timeout 20" in failed[0], failed
    assert time.monotonic() - start < 240
    assert "timeout" in json.dumps(_qc_status(out, "slow")).lower()
    _good_ones_landed(out)


# ---- SIGTERM mid-run ----------------------------------------------------------------------------
def _group_alive(pgid: int) -> list[int]:
    """Live processes of a process group."""
    return [pid for pid, _, group in live_processes() if group == pgid]


def _complete_outputs(out: Path) -> list[str]:
    """Every final-named NIfTI loads (scan_outputs) and has its sidecar; returns the masks."""
    found = scan_outputs(out)
    assert found["temp"] == [], found["temp"]
    for rel in found["nifti"]:
        if "/anat/" in rel:
            assert (out / rel.replace(".nii.gz", ".json")).is_file(), f"{rel} without its sidecar"
    return sorted(m for m in found["nifti"] if m.endswith("_mask.nii.gz") and "label-lesion" in m)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_stops_cleanly_and_a_rerun_completes(tmp_path, signum, code):
    """As SLURM's time limit or scancel does, the signal goes to the whole process group (the app and
    its workers); Ctrl-C likewise."""
    bids = tiny_bids(tmp_path / "bids", n_subjects=5)
    out = tmp_path / "out"
    args = [sys.executable, str(RUN_PY), str(bids), str(out), "participant", *FAST, "--nprocs", "2"]
    env = {**os.environ, **ENV_1THREAD}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    seen = []
    deadline = time.monotonic() + 180
    for line in proc.stderr:  # the first image done: the others are running or waiting
        seen.append(line)
        if "[1/5]" in line or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signum)
    try:
        _, rest = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    err = "".join(seen) + rest
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "summary:" in err and "re-run the same command" in err, err[-3000:]
    time.sleep(0.5)
    assert _group_alive(proc.pid) == [], "worker processes left behind"
    done = _complete_outputs(out)
    assert 1 <= len(done) < 5, done
    rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(_complete_outputs(out)) == 5
    # an image stopped between its sidecar and its QC record is complete but not up to date: redone
    counts = re.search(r"summary: (\d+) done, (\d+) up to date, 0 failed", rerun.stderr)
    assert counts and 1 <= int(counts[2]) <= len(done) and int(counts[1]) + int(counts[2]) == 5, counts


def test_single_image_command_has_the_same_guards(tiny, tmp_path, capsys):
    from bidsapp import segment

    good = nib.load(str(image_path(tiny, "sub-01", "sag")))
    coarse, micro = tmp_path / "coarse.nii.gz", tmp_path / "micro.nii.gz"
    save_nifti(_with_zooms(good, (15.0, 15.0, 15.0)), coarse)
    save_nifti(_with_zooms(good, (0.001, 0.001, 0.001)), micro)
    cases = [([coarse], "15 mm is coarser than the 10 mm"),
             ([coarse, "--allow-unusual-geometry", "--mem", "2G"],
              "more than the limit (2.0 GB from --mem 2G)"),
             ([micro, "--allow-unusual-geometry"], "too small to segment")]
    for (image, *extra), reason in cases:
        out = tmp_path / "mask.nii.gz"
        code = segment.main(["-t", "lesion_ms", "-i", str(image), "-o", str(out), "--demo", *extra])
        err = capsys.readouterr().err
        assert code == 65 and reason in err and str(image) in err and not out.exists(), err


@pytest.mark.parametrize("exc, sentence, raw", [
    (MemoryError(), "the worker ran out of memory on this image", None),
    (ZeroDivisionError("division by zero"), "cannot be resampled to the model's grid", "division by zero"),
    (OSError(28, "No space left on device"), "no space left on device (free some space", None),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
     "the worker ran out of memory", "enforce fail"),
    (KeyError("spacing"), "unexpected error (KeyError); see the log", "'spacing'"),
])
def test_every_failure_path_reads_as_a_sentence(tiny, tmp_path, capsys, monkeypatch, exc, sentence, raw):
    """Whatever the pipeline raises, the FAILED line and the QC record hold a sentence naming the file;
    the traceback is in the image's log only; the other image lands."""
    from bidsapp import pipelines

    real, calls = pipelines.segment, []

    def segment(img, **kw):  # the first job (sub-01, sorted first) fails, the second runs
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return real(img, **kw)

    bids = copy_dataset(tiny, tmp_path / "bids")
    one = str(image_path(bids, "sub-01", "sag"))
    monkeypatch.setattr(pipelines, "segment", segment)
    out = tmp_path / "out"
    code, err = _main([bids, out, "participant", *FAST, "--nprocs", "1"], capsys)
    failed = _failed(err)
    assert code == 1 and len(failed) == 1 and one in failed[0] and sentence in failed[0], err[-2000:]
    if raw is not None:
        assert raw not in failed[0]
    assert "Traceback" not in err
    log_text = (out / "logs" / "sub-01" / "sub-01_acq-sag_T2w_desc-T2w.log").read_text()
    assert "Traceback" in log_text and sentence in log_text
    assert sentence in json.dumps(_qc_status(out, "sag"))
    assert (out / MASK.format(n="02")).is_file()
