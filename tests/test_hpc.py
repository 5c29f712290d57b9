"""The SLURM recipe (hpc/): participant mapping, submission chain, and a real run of its scripts.

The end-to-end test runs the array script itself 4 times AT ONCE (as 4 array tasks on 4 nodes) into one
output_dir, without a container (CORDLESION_CMD), then the group script, and checks every output. It also
runs as a locked-down container would: HOME that does not exist, the BIDS dataset hashed before and after,
the working directory checked unchanged. (Tests run as root here, and root ignores file permissions: so
"read-only" is checked by its effect, nothing created or changed, rather than by chmod.)
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from containers_phantoms import DICE_MARGIN, assert_dice_floors, dice, write_small_bids
from scipy import ndimage

from bidsapp.validation import validate

ROOT = Path(__file__).resolve().parent.parent
HPC = ROOT / "hpc"
ARRAY, GROUP, SUBMIT = HPC / "cordlesion_array.sbatch", HPC / "cordlesion_group.sbatch", HPC / "submit.sh"
VERSION = (ROOT / "version").read_text().strip()
#: each task's mask is of its own participant and not flipped (4 different axis orders): it overlaps that
#: phantom's lesions. The demo model on these 4 phantoms (seed 8080): measured Dice (Intel Xeon, AVX-512; the
#: same to 2 decimals as this file's earlier measurement), less DICE_MARGIN
DICE_FLOORS = {"sub-01": 0.253 - DICE_MARGIN, "sub-02": 0.502 - DICE_MARGIN, "sub-03": 0.626 - DICE_MARGIN,
               "sub-04": 0.270 - DICE_MARGIN}


def _list(bids: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ARRAY), "--list", str(bids)], capture_output=True, text=True,
                          timeout=30)


def _tree_digest(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` -> (kind, mode, mtime_ns, sha256 of the content)."""
    digest = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        digest[path.relative_to(root).as_posix()] = (path.is_dir(), st.st_mode, st.st_mtime_ns, content)
    return digest


# -------------------------------------------------------------------------------- participant mapping
def test_participants_come_from_the_tsv_in_file_order(tmp_path):
    for label in ("02", "10", "ab"):
        (tmp_path / f"sub-{label}" / "anat").mkdir(parents=True)
    # Windows line endings, an extra column first, a listed subject without data (skipped, warned)
    (tmp_path / "participants.tsv").write_bytes(
        b"age\tparticipant_id\r\n30\tsub-10\r\n31\tsub-02\r\n32\tsub-99\r\n33\tsub-ab\r\n")
    proc = _list(tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.split() == ["10", "02", "ab"]
    assert "sub-99" in proc.stderr


def test_participants_fall_back_to_sorted_folders(tmp_path):
    for label in ("03", "01", "B2"):
        (tmp_path / f"sub-{label}").mkdir()
    (tmp_path / "sourcedata").mkdir()
    assert _list(tmp_path).stdout.split() == ["01", "03", "B2"]


def test_array_task_beyond_the_participants_is_a_usage_error(tmp_path):
    (tmp_path / "sub-01").mkdir()
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2", "CORDLESION_CMD": "false"}
    proc = subprocess.run(["bash", str(ARRAY), str(tmp_path), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 64 and "array task 2" in proc.stderr


def test_container_command_binds_data_read_only(tmp_path):
    """Without CORDLESION_CMD the task runs `apptainer run --cleanenv` with the documented binds."""
    (tmp_path / "sub-01").mkdir()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apptainer").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_LOG"\n')
    (fake / "apptainer").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "1",
           "ARGS_LOG": str(tmp_path / "args"), "CORDLESION_SIF": "/images/c.sif", "SLURM_CPUS_PER_TASK": "3",
           "CORDLESION_WORK": str(tmp_path)}
    proc = subprocess.run(["bash", str(ARRAY), str(tmp_path), str(tmp_path / "out"), "--demo"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "args").read_text().split("\n")[:-1]
    assert args[:2] == ["run", "--cleanenv"]
    assert ["-B", f"{tmp_path}:/data:ro"] == args[2:4] and args[4:6] == ["-B", f"{tmp_path / 'out'}:/out"]
    assert args[6] == "-B" and args[7].endswith(":/work") and args[8] == "/images/c.sif"
    assert args[9:] == ["/data", "/out", "participant", "--participant-label", "01", "--skip_bids_validator",
                        "-w", "/work", "--nprocs", "1", "--omp-nthreads", "3", "--demo"]
    assert not list(tmp_path.glob("cordlesion_*")), "the per-task work folder must be removed"
    proc = subprocess.run(["bash", str(GROUP), str(tmp_path), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "args").read_text().split("\n")[:-1] == [
        "run", "--cleanenv", "-B", f"{tmp_path}:/data:ro", "-B", f"{tmp_path / 'out'}:/out", "/images/c.sif",
        "/data", "/out", "group"]
    # the check step submit.sh runs once: the same image, a dry run of the whole dataset, no work bind
    shutil.rmtree(tmp_path / "out")
    proc = subprocess.run(["bash", str(ARRAY), "--check", str(tmp_path), str(tmp_path / "out"), "--demo"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "args").read_text().split("\n")[:-1] == [
        "run", "--cleanenv", "-B", f"{tmp_path}:/data:ro", "-B", f"{tmp_path / 'out'}:/out", "/images/c.sif",
        "/data", "/out", "participant", "--dry-run", "--demo"]
    assert (tmp_path / "out").is_dir(), "a bind source must exist before apptainer runs"


def _fake_submission(tmp_path: Path, check_exit: int = 0) -> dict[str, str]:
    """A dataset of 3 participants, a fake sbatch (logs its arguments, answers job ids the way --parsable
    does, with a cluster name) and a fake app for the check step (logs its arguments)."""
    for label in ("01", "02", "03"):
        (tmp_path / "bids" / f"sub-{label}").mkdir(parents=True)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/bin/bash\n'
                                 'if [[ $1 == --test-only ]]; then echo "$*" >> "$SBATCH_LOG.test"\n'
                                 '  [[ -z ${TOO_BIG:-} || $* != *$TOO_BIG* ]] && exit 0\n'
                                 '  echo "allocation failure: node configuration not available" >&2\n'
                                 '  exit 1; fi\n'
                                 'echo "$* | EXPECTED=${CORDLESION_EXPECTED:-}" >> "$SBATCH_LOG"\n'
                                 'n=$(wc -l < "$SBATCH_LOG"); echo "$((4000 + n));clusterA"\n')
    (fake / "app").write_text(f'#!/bin/bash\necho "$*" >> "$APP_LOG"\nexit {check_exit}\n')
    for tool in ("sbatch", "app"):
        (fake / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SBATCH_LOG": str(tmp_path / "log"),
            "APP_LOG": str(tmp_path / "app_log"), "CORDLESION_CMD": str(fake / "app"),
            "SBATCH_EXTRA": "--account=lab1", "CORDLESION_MAX_PARALLEL": "2",
            "CORDLESION_ARRAY_SBATCH": "--cpus-per-task=2 --mem=3G", "CORDLESION_GROUP_SBATCH": "--mem=1G"}


def test_submit_checks_once_then_chains_the_group_job_after_any_end(tmp_path):
    env = _fake_submission(tmp_path)
    bids, out = tmp_path / "bids", tmp_path / "out"
    proc = subprocess.run(["bash", str(SUBMIT), str(bids), str(out), "--demo"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    # one check of the whole dataset (validation, options, models), before anything is submitted
    assert (tmp_path / "app_log").read_text().splitlines() == [f"{bids} {out} participant --dry-run --demo"]
    array_call, group_call = (tmp_path / "log").read_text().splitlines()
    # participant resources apart from the group's; afterany: the group level runs even if a task failed
    assert array_call == (f"--parsable --account=lab1 --cpus-per-task=2 --mem=3G --array=1,2,3%2 {ARRAY} "
                          f"{bids} {out} --demo | EXPECTED=")
    assert group_call == (f"--parsable --account=lab1 --mem=1G --dependency=afterany:4001 {GROUP} {bids} "
                          f"{out} | EXPECTED=01 02 03")
    assert "array job 4001" in proc.stdout and "group job 4002" in proc.stdout
    # both requests were first tried with --test-only, as they will be submitted
    assert (tmp_path / "log.test").read_text().splitlines() == [
        f"--test-only --account=lab1 --cpus-per-task=2 --mem=3G --array=1,2,3 {ARRAY} {bids} {out}",
        f"--test-only --account=lab1 --mem=1G {GROUP} {bids} {out}"]


def test_submit_refuses_a_request_no_node_can_meet(tmp_path):
    """sbatch accepts 4 CPUs on 2-CPU nodes and the job pends forever: submit.sh asks --test-only first."""
    env = _fake_submission(tmp_path) | {"TOO_BIG": "--cpus-per-task=2"}
    proc = subprocess.run(["bash", str(SUBMIT), str(tmp_path / "bids"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 69
    assert "cordlesion_array.sbatch as requested" in proc.stderr and "CORDLESION_ARRAY_SBATCH" in proc.stderr
    assert not (tmp_path / "log").exists(), "nothing may be submitted"


@pytest.mark.parametrize("labels", [["--participant-label", "03", "sub-01"], ["--participant_label=03",
                                    "--participant-label", "01"], ["--part", "01", "03"]])
def test_submit_turns_participant_labels_into_the_task_list(tmp_path, labels):
    env = _fake_submission(tmp_path)
    bids, out = tmp_path / "bids", tmp_path / "out"
    proc = subprocess.run(["bash", str(SUBMIT), str(bids), str(out), *labels, "--demo"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "app_log").read_text().splitlines() == [
        f"{bids} {out} participant --dry-run --demo --participant-label 01 03"]
    array_call, group_call = (tmp_path / "log").read_text().splitlines()
    # tasks 1 and 3 (sub-01, sub-03), and the label is NOT passed on: each task keeps its own participant
    assert array_call.endswith(f"--array=1,3%2 {ARRAY} {bids} {out} --demo | EXPECTED=")
    assert group_call.endswith("| EXPECTED=01 03")


def test_submit_submits_nothing_when_the_check_fails_or_no_label_matches(tmp_path):
    env = _fake_submission(tmp_path, check_exit=16)
    bids, out = tmp_path / "bids", tmp_path / "out"
    proc = subprocess.run(["bash", str(SUBMIT), str(bids), str(out)], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 16 and "nothing submitted" in proc.stderr
    proc = subprocess.run(["bash", str(SUBMIT), str(bids), str(out), "--participant-label", "07"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 18 and "no sub-07" in proc.stderr
    assert not (tmp_path / "log").exists(), "sbatch must not have been called"


@pytest.mark.parametrize("option", ["--participant-label", "--participant_label=02", "--partic"])
def test_array_task_refuses_a_participant_label(tmp_path, option):
    """Every task would process that participant at once (argparse keeps the last occurrence)."""
    (tmp_path / "sub-01").mkdir()
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "CORDLESION_CMD": "true"}
    proc = subprocess.run(["bash", str(ARRAY), str(tmp_path), str(tmp_path / "out"), option, "02"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 64 and "submit.sh" in proc.stderr


def test_group_script_lists_failed_images_and_silent_participants(tmp_path):
    """The group job runs after failed tasks too; it names failed rows and participants with no output."""
    out = tmp_path / "out"
    (out / "group").mkdir(parents=True)
    (out / "sub-01" / "figures").mkdir(parents=True)
    (out / "sub-01" / "figures" / "sub-01_T2w_desc-lesion_qc.json").write_text("{}")
    fake = tmp_path / "app"
    fake.write_text("#!/bin/bash\nexit 0\n")
    fake.chmod(0o755)
    (out / "group" / "lesions.tsv").write_text(
        "participant_id\tstatus\tsource\terror\nsub-01\tok\tsub-01/anat/sub-01_T2w.nii.gz\tn/a\n"
        "sub-02\tfailed\tsub-02/anat/sub-02_T2w.nii.gz\tcorrupt gzip\n")
    env = {**os.environ, "CORDLESION_CMD": str(fake), "CORDLESION_EXPECTED": "01 02 03"}
    proc = subprocess.run(["bash", str(GROUP), str(tmp_path), str(out)], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "failed: sub-02/anat/sub-02_T2w.nii.gz: corrupt gzip" in proc.stderr
    assert "1 image(s) failed" in proc.stderr
    assert "sub-03: no output at all" in proc.stderr and "sub-01: no output" not in proc.stderr


def test_submit_refuses_a_dataset_without_participants(tmp_path):
    proc = subprocess.run(["bash", str(SUBMIT), str(tmp_path), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 66


# ------------------------------------------------------------------------------ end to end, concurrent
@pytest.fixture(scope="module")
def hpc_truth(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, nib.Nifti1Image]:
    """4 participants, one small phantom T2w each, on 4 different grids (4 array tasks x 1 image);
    image path -> its lesion ground truth."""
    return write_small_bids(tmp_path_factory.mktemp("hpc_bids"), 4, seed=8080)


@pytest.fixture(scope="module")
def hpc_bids(hpc_truth: dict[Path, nib.Nifti1Image]) -> Path:
    return next(iter(hpc_truth)).parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_four_array_tasks_at_once_then_group_in_a_locked_down_environment(bids_validator, hpc_bids, hpc_truth,
                                                                           tmp_path):
    out, scratch, cwd = tmp_path / "derivatives" / "cordlesion", tmp_path / "scratch", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    home = tmp_path / "no-such-home"
    before = _tree_digest(hpc_bids)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "DENO_", "TORCH_", "MPL"))}
    env |= {"HOME": str(home), "CORDLESION_CMD": f"{sys.executable} {ROOT / 'run.py'}",
            "CORDLESION_WORK": str(scratch), "SLURM_ARRAY_JOB_ID": "777", "SLURM_CPUS_PER_TASK": "1",
            "OMP_NUM_THREADS": "1"}
    command = ["bash", str(ARRAY), str(hpc_bids), str(out), "--demo", "--skip_bids_validator"]
    tasks = [subprocess.Popen(command, cwd=cwd, env=env | {"SLURM_ARRAY_TASK_ID": str(k)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k in (1, 2, 3, 4)]
    logs = [t.communicate(timeout=500)[0] for t in tasks]
    for k, (task, log) in enumerate(zip(tasks, logs, strict=True), start=1):
        assert task.returncode == 0, f"array task {k} failed:\n{log[-3000:]}"
    group = subprocess.run(["bash", str(GROUP), str(hpc_bids), str(out)], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=300)
    assert group.returncode == 0, group.stdout[-2000:] + group.stderr[-3000:]

    # nothing written outside output_dir: input untouched, no HOME made, cwd and scratch left empty
    assert _tree_digest(hpc_bids) == before
    assert not home.exists()
    assert list(cwd.iterdir()) == [] and list(scratch.iterdir()) == []

    sources = sorted(hpc_bids.glob("sub-*/**/*_T2w.nii.gz"))
    assert len(sources) == 4
    assert_dice_floors({source.parts[-3]: _check_image_outputs(source, hpc_bids, out, hpc_truth[source])
                        for source in sources}, DICE_FLOORS)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "cordlesion"
    assert description["GeneratedBy"][0]["Version"] == VERSION
    # written by 4 processes at once: still one valid file, in the validator's eyes too
    report = validate(out)
    flagged = {code: places for code, places in report.errors.items()
               if any("dataset_description" in p for p in places)}
    assert flagged == {}, report.summary()
    assert not [p for p in out.rglob(".*.tmp*")], "temporary files left behind"
    with open(out / "group" / "lesions.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == len(sources), rows
    for source in sources:
        rel = source.relative_to(hpc_bids).as_posix()
        row = next(r for r in rows if r["source"] == rel)
        assert row["status"] == "ok" and row["participant_id"] == rel.split("/")[0]
        mask = nib.load(out / rel.replace("_T2w.nii.gz", "_label-lesion_desc-T2w_mask.nii.gz"))
        _, n = ndimage.label(np.asanyarray(mask.dataobj) > 0, structure=np.ones((3, 3, 3)))
        assert int(row["lesion_count"]) == n, rel
    assert (out / "qc" / "index.html").is_file()


def _check_image_outputs(source: Path, bids: Path, out: Path, truth: nib.Nifti1Image) -> float:
    """Asserts the image's outputs; returns its lesion mask's Dice with the truth."""
    rel = source.relative_to(bids)
    stem = source.name[: -len("_T2w.nii.gz")]
    folder = out / rel.parent
    src = nib.load(source)
    mask_path = folder / f"{stem}_label-lesion_desc-T2w_mask.nii.gz"
    mask = nib.load(mask_path)
    data = np.asanyarray(mask.dataobj)
    assert mask.shape == src.shape and np.array_equal(mask.affine, src.affine), mask_path
    assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1}, mask_path
    sidecar = json.loads(mask_path.with_name(mask_path.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["Sources"] == [f"bids:raw:{rel.as_posix()}"]
    probseg_path = folder / f"{stem}_label-lesion_desc-T2w_probseg.nii.gz"
    if probseg_path.exists():
        probseg = nib.load(probseg_path)
        p = np.asanyarray(probseg.dataobj)
        assert probseg.shape == src.shape and np.array_equal(probseg.affine, src.affine)
        assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
        json.loads(probseg_path.with_name(probseg_path.name.replace(".nii.gz", ".json")).read_text())
    return dice(mask, truth)
