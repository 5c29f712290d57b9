"""Concurrency and determinism rows of docs/RELIABILITY.md.

8 participant processes share one output_dir (as SLURM array tasks do) with overlapping subject lists;
the same inputs and models give byte-identical masks across runs and across --nprocs.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from reliability_data import ENV_1THREAD, main_in_process, masks, reference_run, scan_outputs, tiny_bids

from bidsapp import cli

FAST = ["--demo", "--skip_bids_validator"]
SUBJECT_SETS = [["01"], ["02"], ["01", "02"], ["02", "01"], ["01"], ["02"], ["01", "02"], ["sub-02"]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_bids(tmp_path_factory.mktemp("rel_concurrency") / "bids", n_subjects=2)


def _participant(args: list[str]) -> None:
    # A fork of this test process: a separate process running the app's code (run.py's main) without
    # paying the torch/pybids imports 8 times; one torch thread, as DataLoader workers do.
    torch.set_num_threads(1)
    os.environ.update(ENV_1THREAD)
    os._exit(cli.main(args))


def test_eight_processes_on_one_output_dir(tiny, tmp_path, tmp_path_factory):
    ref = reference_run(tmp_path_factory, tiny)
    out = tmp_path / "out"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_participant, args=([str(tiny), str(out), "participant", *FAST, "--nprocs",
                                                     "1", "--omp-nthreads", "1", "--participant_label",
                                                     *labels],))
             for labels in SUBJECT_SETS]
    for proc in procs:  # all started before any is waited for: they overlap
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    found = scan_outputs(out)  # every file loads / parses
    assert found["temp"] == [], found["temp"]
    assert masks(out) == ref.masks and masks(out, "*_probseg.nii.gz") == ref.probsegs
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "cordlesion"
    ignore = (out / ".bidsignore").read_text().splitlines()
    assert len(ignore) == len(set(ignore)), ignore  # concurrent merges did not duplicate lines
    # every output written once: one file per name, and exactly the reference's set of outputs
    produced = sorted(p.relative_to(out).as_posix() for p in out.glob("sub-*/anat/*"))
    expected = sorted(p.relative_to(ref.output_dir).as_posix() for p in ref.output_dir.glob("sub-*/anat/*"))
    assert produced == expected


def test_byte_identical_across_runs_and_nprocs(tiny, tmp_path, tmp_path_factory, capsys):
    ref = reference_run(tmp_path_factory, tiny)  # run.py, --nprocs 1
    code = main_in_process([tiny, tmp_path / "n2", "participant", *FAST, "--nprocs", "2",
                            "--omp-nthreads", "1"])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert masks(tmp_path / "n2") == ref.masks
    assert masks(tmp_path / "n2", "*_probseg.nii.gz") == ref.probsegs


def test_thread_count_changes_nothing_with_the_default_backend(tiny, tmp_path, tmp_path_factory, capsys):
    """--omp-nthreads 2 vs 1 with the default (OpenVINO on a CPU): every sum's order is the graph's, not the
    threads' (engine/axisnorm.py), so masks and probabilities are byte-identical."""
    ref = reference_run(tmp_path_factory, tiny)
    code = main_in_process([tiny, tmp_path / "t2", "participant", *FAST, "--nprocs", "1",
                            "--omp-nthreads", "2"])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert "backend openvino" in capsys.readouterr().err
    assert masks(tmp_path / "t2") == ref.masks
    assert masks(tmp_path / "t2", "*_probseg.nii.gz") == ref.probsegs


def test_torch_thread_count_changes_only_float_rounding(tiny, tmp_path, tmp_path_factory, capsys):
    """--backend torch, --omp-nthreads 2 vs 1: torch's CPU kernels sum in another order, so probabilities may
    differ in the last bits (documented: byte-identical needs the same --omp-nthreads with torch); measured
    4e-5, bound 1e-3."""
    ref = reference_run(tmp_path_factory, tiny, "--backend", "torch")
    code = main_in_process([tiny, tmp_path / "t2", "participant", *FAST, "--nprocs", "1",
                            "--omp-nthreads", "2", "--backend", "torch"])
    assert code == 0, capsys.readouterr().err[-3000:]
    for rel in ref.probsegs:
        a = np.asarray(nib.load(str(ref.output_dir / rel)).dataobj)
        b = np.asarray(nib.load(str(tmp_path / "t2" / rel)).dataobj)
        assert a.shape == b.shape and float(np.abs(a - b).max()) < 1e-3, rel
    for rel in ref.masks:
        a = np.asarray(nib.load(str(ref.output_dir / rel)).dataobj)
        b = np.asarray(nib.load(str(tmp_path / "t2" / rel)).dataobj)
        assert float((a != b).mean()) < 1e-3, rel  # only voxels with p within 1e-3 of the threshold
