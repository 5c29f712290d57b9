"""Where output_dir may be: beside the dataset, or in bids_dir/derivatives/<name>[/...] (the BIDS convention,
fMRIPrep's too); bids_dir itself and every other place inside it are refused (exit 73, one line). The
indexer stays blind to derivatives/, so outputs written there are never taken for inputs."""
from __future__ import annotations

import shutil
import sys

import pytest
from containers_phantoms import write_small_bids
from reliability_data import RUN_PY

from bidsapp import cli
from tests.unprivileged import run_unprivileged, shared_folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("outdir") / "bids"
    write_small_bids(root, 1, seed=3)
    return root


def _dry_run(bids, out, capsys) -> tuple[int, str, str]:
    code = cli.main([str(bids), str(out), "participant", "--dry-run", "--demo", "--skip_bids_validator"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("where", ["derivatives/cordlesion", "derivatives/cordlesion/run1",
                                   "derivatives/other-name"])
def test_derivatives_name_inside_the_dataset_is_accepted(dataset, capsys, where):
    out = dataset / where
    try:
        code, stdout, _ = _dry_run(dataset, out, capsys)
        assert code == 0
        assert f"output_dir {out}" in stdout and "1 job(s)" in stdout
    finally:
        shutil.rmtree(dataset / "derivatives", ignore_errors=True)


def test_outputs_in_derivatives_are_never_indexed_as_inputs(dataset, capsys):
    out = dataset / "derivatives" / "cordlesion"
    copy = out / "sub-01" / "anat" / "sub-01_T2w.nii.gz"  # looks exactly like a source image
    copy.parent.mkdir(parents=True)
    shutil.copy2(dataset / "sub-01" / "anat" / "sub-01_T2w.nii.gz", copy)
    try:
        code, stdout, _ = _dry_run(dataset, out, capsys)
        assert code == 0
        assert "1 job(s)" in stdout and "- sub-01/anat/sub-01_T2w.nii.gz" in stdout
        assert "derivatives/cordlesion/sub-01" not in stdout.split("->")[0]
    finally:
        shutil.rmtree(dataset / "derivatives", ignore_errors=True)


@pytest.mark.parametrize("where", [".", "derivatives", "sub-01/out", "code/cordlesion", "sourcedata/x",
                                   "cordlesion", "via_symlink"])
def test_every_other_place_inside_the_dataset_is_refused(dataset, tmp_path, capsys, where):
    if where == "via_symlink":  # a path elsewhere that resolves into sub-01 is inside the dataset
        (tmp_path / "link").symlink_to(dataset / "sub-01", target_is_directory=True)
        out = tmp_path / "link" / "out"
    else:
        out = dataset / where
    before = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*"))
    code, _, err = _dry_run(dataset, out, capsys)
    assert code == 73
    message = [line for line in err.splitlines() if "output_dir" in line]
    assert len(message) == 1 and "not in derivatives/<name>" in message[0]
    assert f"{dataset}/derivatives/cordlesion" in message[0]
    assert sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*")) == before


def test_a_folder_beside_the_dataset_is_accepted(dataset, tmp_path, capsys):
    code, stdout, _ = _dry_run(dataset, tmp_path / "bids-cordlesion", capsys)
    assert code == 0 and "1 job(s)" in stdout


@pytest.mark.parametrize("case", ["existing, read-only", "to create, in a read-only folder"])
def test_an_unwritable_output_dir_is_exit_73_as_an_unprivileged_user(case):
    """run.py as an unprivileged user (root could write anyway, and CI runs as root): exit 73 and one line
    naming output_dir, before anything is read or written."""
    with shared_folder() as base:
        bids = base / "bids"
        write_small_bids(bids, 1, seed=3)
        locked = base / "locked"
        locked.mkdir()
        out = locked if case.startswith("existing") else locked / "cordlesion"
        locked.chmod(0o555)
        proc = run_unprivileged([sys.executable, RUN_PY, bids, out, "participant", "--demo",
                                 "--skip_bids_validator"], timeout=300)
        assert proc.returncode == 73, proc.stderr[-2000:]
        why = ("output_dir is not writable" if out == locked
               else "cannot create output_dir (Permission denied)")
        assert [line.split(" ", 2)[1:] for line in proc.stderr.splitlines()] == [["ERROR", f"{out}: {why}"]]
        assert list(locked.iterdir()) == []
