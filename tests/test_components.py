"""tests/components.py in action: with the real components hidden, the tests that need them FAIL under CI
(or an explicitly asked suite) naming what is missing, and skip with the same words otherwise.

One pytest subprocess per mode on the component-bound tests of the heavy files, with nothing on PATH (podman,
mmdebstrap, slurm, munge, chromium, setpriv, mount), a Python whose folder holds none of the venv's tools
(bosh, hadolint, bids-validator-deno), the SCT peer and the real-bids data pointed at empty folders. Each of
those tests stops at its first fixture, so nothing is built or run: seconds, not minutes.
"""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.components import missing, strict

REPO = Path(__file__).resolve().parents[1]
STRICT = "required component missing (CI or an explicitly asked suite): "
ASKED = ("CORDLESION_TEST_CONTAINERS", "CORDLESION_TEST_SCT")
NOT_ASKED_PODMAN = "builds the image (minutes): run `make test-containers`"
#: node id -> the component its message must name
CASES = {
    "tests/test_slurm.py::test_a_request_no_node_can_meet_is_refused_not_left_pending": "slurm/munge",
    "tests/test_podman.py::test_the_image_has_no_torchvision_and_the_locked_torch": "podman, mmdebstrap",
    "tests/test_group.py::test_page_lists_every_image_rates_and_exports": "chromium",
    "tests/test_containers.py::test_hadolint_finds_nothing": "hadolint",
    "tests/test_boutiques.py::test_bosh_validate_accepts_the_descriptor": "boutiques",
    "tests/test_phantom.py::test_bids_validator_zero_errors": "bids-validator-deno",
    "tests/test_participant.py::test_real_bids_smoke": "real-bids data",
    "tests/test_sct_real.py::test_lesion_ms_default_is_real_scts_mask":
        "the real SCT 7.3 (../shared/peers/sct)",
    "tests/test_reliability_faults.py::test_full_disk_real_tmpfs": "tmpfs mount",
}
if os.geteuid() == 0:  # only root needs setpriv to drop to an unprivileged user
    CASES["tests/test_derivatives.py::test_unwritable_output_raises_output_error"] = "setpriv"


def _python_without_tools(folder: Path) -> Path:
    """This venv's Python and packages, in a folder of its own: the tools installed next to the real one
    (bosh, hadolint, bids-validator-deno) are not beside it. A venv is found by the pyvenv.cfg above the
    executable, so a copy of that file and links to the interpreter and to the packages make one."""
    (folder / "bin").mkdir(parents=True)
    in_venv = sys.prefix != sys.base_prefix
    base = Path(sys.executable).resolve()
    (folder / "pyvenv.cfg").write_text(f"home = {base.parent}\nversion = {sys.version.split()[0]}\n"
                                       f"include-system-site-packages = {'false' if in_venv else 'true'}\n")
    (folder / "bin" / "python").symlink_to(base)
    if in_venv:
        (folder / "lib").symlink_to(Path(sys.prefix) / "lib", target_is_directory=True)
    return folder / "bin" / "python"


def _outcomes(python: Path, envs: dict[str, dict[str, str]], tmp_path: Path) -> dict[str, dict]:
    """mode -> {node id -> ("failed" | "skipped" | "passed", message)} of the CASES run once per mode with
    its environment, the modes side by side (most of the time is imports)."""
    procs = {}
    for mode, env in envs.items():
        with open(tmp_path / f"{mode}.log", "w") as log:
            procs[mode] = subprocess.Popen(
                [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
                 f"--junitxml={tmp_path / mode}.xml", *CASES], cwd=REPO, env=env, stdout=log,
                stderr=subprocess.STDOUT)
    results = {}
    for mode, proc in procs.items():
        proc.wait(timeout=600)
        report, output = tmp_path / f"{mode}.xml", (tmp_path / f"{mode}.log").read_text()[-3000:]
        assert report.is_file(), output
        found = {"exit": (str(proc.returncode), output)}
        for case in ET.parse(report).getroot().iter("testcase"):
            problem = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
            outcome = "passed" if problem is None else "skipped" if problem.tag == "skipped" else "failed"
            message = "" if problem is None else problem.text or ""
            found[f"{case.get('file')}::{case.get('name')}"] = (outcome, message)
        results[mode] = found
    return results


@pytest.fixture(scope="module")
def hidden(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The Python without tools and the environment without components (no CI, nothing asked)."""
    tmp = tmp_path_factory.mktemp("hidden")
    empty = tmp / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTHONPATH", *ASKED)}
    env |= {"PATH": str(empty), "PYTHONPATH": str(REPO), "CORDLESION_SCT_PEER": str(empty),
            "SCT_ORACLE_ROOT": str(empty), "CORDLESION_REAL_BIDS": str(empty)}
    return _python_without_tools(tmp / "venv"), env


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_hidden_components_fail_under_ci_and_skip_for_a_user_with_the_same_reason(hidden, tmp_path):
    python, env = hidden
    runs = _outcomes(python, {"ci": env | {"CI": "true"} | dict.fromkeys(ASKED, "1"), "user": env}, tmp_path)
    ci, user = runs["ci"], runs["user"]
    assert ci["exit"][0] != "0" and user["exit"][0] == "0", (ci["exit"], user["exit"])
    for node, component in CASES.items():
        outcome, message = ci[node]
        assert outcome == "failed" and f"{STRICT}{component}: " in message, (node, ci[node])
        reason = message.rsplit(STRICT, 1)[1].split("\n", 1)[0]  # "component: why" (its first line)
        outcome, message = user[node]
        assert outcome == "skipped", (node, user[node])
        assert (NOT_ASKED_PODMAN if "test_podman" in node else reason) in message, (node, reason, message)


@pytest.mark.parametrize("env, asked_env, expected", [
    ({}, None, False), ({}, "CORDLESION_TEST_SCT", False), ({"CI": "true"}, None, True),
    ({"CI": "1"}, "CORDLESION_TEST_SCT", True), ({"CI": "false"}, None, False), ({"CI": ""}, None, False),
    ({"CORDLESION_TEST_SCT": "1"}, "CORDLESION_TEST_SCT", True),
    ({"CORDLESION_TEST_SCT": "1"}, "CORDLESION_TEST_CONTAINERS", False),
    ({"CORDLESION_TEST_SCT": "0"}, "CORDLESION_TEST_SCT", False),
])
def test_strict_means_ci_or_this_suite_asked(monkeypatch, env, asked_env, expected):
    for name in ("CI", *ASKED):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert strict(asked_env) is expected
    with pytest.raises(pytest.fail.Exception if expected else pytest.skip.Exception,
                       match="^(required component missing .*: )?x: gone$"):
        missing("x", "gone", asked_env=asked_env)
