"""The Boutiques descriptor: valid for `bosh`, its example invocation simulates to a command line that the
app's own parser accepts with the intended values, and every option it names exists in the CLI."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
from containers_phantoms import DICE_MARGIN, assert_dice_floors, dice, write_small_bids

from bidsapp.cli import build_parser
from tests.components import executable, missing

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "boutiques" / "descriptor.json"
INVOCATION = ROOT / "boutiques" / "invocation.json"
#: the demo lesion model on the launch test's phantom (seed 77): measured Dice (Intel Xeon, AVX-512), less
#: DICE_MARGIN
DICE_FLOORS = {"sub-01": 0.672 - DICE_MARGIN}


@pytest.fixture(scope="module")
def bosh() -> Path:
    """The `bosh` command of boutiques (requirements-test.txt): the tests that run it skip with the reason
    where it is missing, and fail under CI (tests/components.py)."""
    found = executable("bosh")
    if found is None:
        missing("boutiques", "bosh not found next to this Python nor on PATH (requirements-test.txt)")
    return found


def _bosh(bosh: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bosh), *args], capture_output=True, text=True, timeout=120)


def test_bosh_validate_accepts_the_descriptor(bosh):
    proc = _bosh(bosh, "validate", str(DESCRIPTOR))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "OK"


def test_descriptor_carries_the_bids_app_fields():
    d = json.loads(DESCRIPTOR.read_text())
    assert d["custom"]["BIDSApplicationVersion"]
    assert d["tool-version"] == (ROOT / "version").read_text().strip()
    level = next(i for i in d["inputs"] if i["id"] == "analysis_level")
    assert level["value-choices"] == ["participant", "group"]
    assert {e["code"] for e in d["error-codes"]} >= {1, 16, 17, 18, 64}


def test_every_descriptor_option_exists_in_the_cli_with_the_same_choices():
    parser = build_parser()
    by_flag = {flag: action for action in parser._actions for flag in action.option_strings}
    d = json.loads(DESCRIPTOR.read_text())
    for item in d["inputs"]:
        flag = item.get("command-line-flag")
        if flag is None:
            continue
        assert flag in by_flag, f"{item['id']}: {flag} is not an option of run.py"
        action = by_flag[flag]
        if item["type"] == "Flag":
            assert action.nargs == 0, f"{flag} takes a value in run.py but is a Flag in the descriptor"
        if "value-choices" in item:
            assert list(action.choices) == item["value-choices"], flag
        if item.get("list"):
            assert action.nargs in ("+", "*"), f"{flag} is a list in the descriptor only"


def test_bosh_invocation_and_simulate_give_a_command_line_run_py_accepts(bosh):
    assert _bosh(bosh, "invocation", str(DESCRIPTOR), "-i", str(INVOCATION)).returncode == 0
    proc = _bosh(bosh, "exec", "simulate", str(DESCRIPTOR), "-i", str(INVOCATION))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("python "))
    argv = shlex.split(line)
    assert argv[:2] == ["python", "/opt/cordlesion/run.py"]
    args = build_parser().parse_args(argv[2:])
    invocation = json.loads(INVOCATION.read_text())
    assert str(args.bids_dir) == invocation["bids_dir"] and str(args.output_dir) == invocation["output_dir"]
    assert args.analysis_level == invocation["analysis_level"]
    assert args.participant_label == invocation["participant_label"]
    assert args.skip_bids_validator is True
    assert str(args.work_dir) == invocation["work_dir"]
    assert (args.nprocs, args.omp_nthreads, args.device) == (2, 2, "cpu")


def test_bosh_rejects_an_invocation_with_a_bad_level(bosh, tmp_path):
    bad = json.loads(INVOCATION.read_text()) | {"analysis_level": "session"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    proc = _bosh(bosh, "invocation", str(DESCRIPTOR), "-i", str(tmp_path / "bad.json"))
    assert proc.returncode != 0


def test_every_run_py_option_is_in_the_descriptor():
    """A new run.py option must be added to the descriptor (else Boutiques users cannot set it)."""
    flags = {i.get("command-line-flag") for i in json.loads(DESCRIPTOR.read_text())["inputs"]}
    absent = [action.option_strings[0] for action in build_parser()._actions
              if action.option_strings and action.dest not in ("help", "version")
              and not flags & set(action.option_strings)]
    assert absent == [], f"run.py options missing from {DESCRIPTOR.name}: {absent}"


def test_output_and_work_dir_are_files_so_launch_mounts_them():
    inputs = {i["id"]: i for i in json.loads(DESCRIPTOR.read_text())["inputs"]}
    assert inputs["output_dir"]["type"] == inputs["work_dir"]["type"] == "File"
    # the example output folder is not inside the example dataset
    invocation = json.loads(INVOCATION.read_text())
    assert not Path(invocation["output_dir"]).is_relative_to(invocation["bids_dir"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bosh_exec_launch_writes_the_outputs_where_asked(bosh, tmp_path):
    """`bosh exec launch` of the descriptor (on the host: --no-container, the command line pointed at this
    checkout's run.py) segments a phantom into the output_dir of the invocation, then the group level."""
    truth = write_small_bids(tmp_path / "bids", 1, seed=77)
    descriptor = json.loads(DESCRIPTOR.read_text())
    descriptor["command-line"] = descriptor["command-line"].replace(
        "python /opt/cordlesion/run.py", f"{sys.executable} {ROOT / 'run.py'}")
    (tmp_path / "descriptor.json").write_text(json.dumps(descriptor))
    out, work = tmp_path / "results" / "cordlesion", tmp_path / "scratch"
    for level in ("participant", "group"):
        invocation = {"bids_dir": str(tmp_path / "bids"), "output_dir": str(out), "analysis_level": level,
                      "skip_bids_validator": True, "demo": True, "work_dir": str(work), "nprocs": 1,
                      "omp_nthreads": 1}
        (tmp_path / f"{level}.json").write_text(json.dumps(invocation))
        proc = subprocess.run([str(bosh), "exec", "launch", "--no-container", "--skip-data-collection",
                               str(tmp_path / "descriptor.json"), str(tmp_path / f"{level}.json")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=500)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (source, lesion), = truth.items()
    mask = nib.load(out / "sub-01" / "anat" / "sub-01_label-lesion_desc-T2w_mask.nii.gz")
    assert_dice_floors({"sub-01": dice(mask, lesion)}, DICE_FLOORS)
    assert (out / "group" / "lesions.tsv").read_text().count("\tok\t") == 1
    assert (out / "qc" / "index.html").is_file()
