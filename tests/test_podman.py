"""The Dockerfile, built with podman and run as a locked-down container (`make test-containers`).

No container registry is reachable from CI, so the base image is a local stand-in made with mmdebstrap
(Debian bookworm with Python 3.11 and pip, as python:3.11-slim-bookworm) and passed as BASE_IMAGE; torch
comes from the CPU wheel on this machine's disk, served as a local wheel index (TORCH_INDEX_URL); the
rest from PyPI (PIP_INDEX_URL) through the site's CA certificates (EXTRA_CA_CERT, from
/usr/local/share/ca-certificates, or the file CORDLESION_TEST_CA). Then the image runs `--read-only
--tmpfs /tmp -u UID:GID --network none` with the dataset mounted read-only, participant and group
levels with --demo: the dataset is byte-for-byte unchanged, the outputs are there, owned by that UID,
and the masks overlap the phantoms' lesions.

Skipped unless CORDLESION_TEST_CONTAINERS=1 (the make target sets it: it takes minutes). Asked for, it needs
root, podman, mmdebstrap and the torch wheel (`.ci/run` installs the tools): where one is missing or does not
start, the tests FAIL with the reason (tests/components.py: an asked suite never passes by skipping).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from containers_phantoms import DICE_MARGIN, assert_dice_floors, dice, write_small_bids

from tests.components import executable, missing

ROOT = Path(__file__).resolve().parent.parent
VERSION = (ROOT / "version").read_text().strip()
TAG = f"localhost/cordlesion-test:{VERSION}"
BASE_TAG = "localhost/cordlesion-base-standin:bookworm"
BASE_PACKAGES = "python3,python3-pip,python3-venv,python-is-python3,ca-certificates,passwd"
UID = 4321
ASKED_ENV = "CORDLESION_TEST_CONTAINERS"
#: the demo lesion model in the image on its 2 phantoms (seed 5150, --omp-nthreads 2): measured Dice (Intel
#: Xeon, AVX-512), less DICE_MARGIN
DICE_FLOORS = {"sub-01": 0.469 - DICE_MARGIN, "sub-02": 0.284 - DICE_MARGIN}

pytestmark = [
    pytest.mark.slow, pytest.mark.timeout(3000),
    pytest.mark.skipif(os.environ.get(ASKED_ENV) != "1",
                       reason="builds the image (minutes): run `make test-containers`"),
]


def _podman(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """podman's environment: its own containers.conf (runc where installed: crun refuses the hybrid
    cgroup layouts of some VMs; ulimits no higher than this process's, which podman's defaults exceed)."""
    absent = [tool for tool in ("podman", "mmdebstrap") if executable(tool) is None]
    if absent:
        missing(", ".join(absent), "not found on PATH (.ci/run installs podman and mmdebstrap)",
                asked_env=ASKED_ENV)
    if os.geteuid() != 0:
        missing("root", "rootful podman and mmdebstrap: run as root (as .ci/run does)", asked_env=ASKED_ENV)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    runtime = '[engine]\nruntime = "runc"\n' if executable("runc") else ""
    conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc=4096:4096"]\n'
                    + runtime)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    if _podman("image", "exists", BASE_TAG, env=env).returncode != 0:
        _build_base(tmp_path_factory.mktemp("base"), env)
    probe = _podman("run", "--rm", "--network", "none", BASE_TAG, "python", "--version", env=env)
    if probe.returncode != 0:
        missing("podman", f"cannot run a container here: {probe.stderr.strip()[-500:]}", asked_env=ASKED_ENV)
    return env


def _build_base(folder: Path, env: dict[str, str]) -> None:
    tar = folder / "base.tar"
    proc = subprocess.run(
        ["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
         "--aptopt=Acquire::Check-Valid-Until \"false\"", "--aptopt=Acquire::Check-Date \"false\"",
         "--customize-hook=rm -f \"$1\"/usr/lib/python3*/EXTERNALLY-MANAGED",
         "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
         "bookworm", str(tar), "http://deb.debian.org/debian"],
        capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        missing("mmdebstrap", f"could not make the stand-in base image: {proc.stderr.strip()[-800:]}",
                asked_env=ASKED_ENV)
    imported = _podman("import", "--change", 'CMD ["python"]', str(tar), BASE_TAG, env=env)
    assert imported.returncode == 0, imported.stderr


def _torch_wheel() -> Path:
    """The CPU torch wheel on disk: pip's find-links folders (env or config), else /opt/wheels."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            timeout=60).stdout
    folders += [v.strip("'") for line in config.splitlines() if "find-links" in line
                for v in line.split("=", 1)[1].split()]
    for folder in [*folders, "/opt/wheels"]:
        found = sorted(Path(folder).glob("torch-2.13.0+cpu-cp311-*.whl")) if Path(folder).is_dir() else []
        if found:
            return found[0]
    missing("the torch wheel", "no torch-2.13.0+cpu cp311 wheel on disk (pip find-links folders, "
            "/opt/wheels)", asked_env=ASKED_ENV)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # pip asks for every package here first: 404s are expected


@pytest.fixture(scope="module")
def torch_index(tmp_path_factory: pytest.TempPathFactory):
    """A PEP 503 index of one package on 127.0.0.1 (http.server's folder listing is a valid page)."""
    root = tmp_path_factory.mktemp("wheel_index")
    wheel = _torch_wheel()
    (root / "torch").mkdir()
    (root / "torch" / wheel.name).symlink_to(wheel)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _site_ca() -> str:
    path = os.environ.get("CORDLESION_TEST_CA")
    files = [Path(path)] if path else sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    return "\n".join(f.read_text() for f in files)


@pytest.fixture(scope="module")
def image(engine, torch_index) -> dict[str, float]:
    start = time.monotonic()
    args = ["build", "--network", "host", "--pull=never", "-t", TAG, "--build-arg", f"BASE_IMAGE={BASE_TAG}",
            "--build-arg", f"TORCH_INDEX_URL={torch_index}", "--build-arg", "INSTALL_MODELS=0",
            "--build-arg", f"VERSION={VERSION}", "-f", str(ROOT / "Dockerfile")]
    ca = _site_ca()
    if ca:
        args += ["--build-arg", f"EXTRA_CA_CERT={ca}"]
    proc = _podman(*args, str(ROOT), env=engine, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return {"build_s": time.monotonic() - start}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        h.update(f"{path.relative_to(root)}\0{st.st_mode}\0{st.st_mtime_ns}\0".encode())
        if path.is_file():
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def test_the_image_runs_read_only_as_any_user_with_the_dataset_read_only(engine, image, tmp_path):
    truth = write_small_bids(tmp_path / "bids", 2, seed=5150)
    bids, out = tmp_path / "bids", tmp_path / "out"
    out.mkdir()
    os.chown(out, UID, UID)
    before = _digest(bids)
    runs = {}
    for level in ("participant", "group"):
        start = time.monotonic()
        proc = _podman("run", "--rm", "--read-only", "--tmpfs", "/tmp", "-u", f"{UID}:{UID}", "--network",
                       "none", "-v", f"{bids}:/data:ro", "-v", f"{out}:/out", TAG, "/data", "/out", level,
                       "--demo", "--omp-nthreads", "2", env=engine, timeout=900)
        runs[level] = time.monotonic() - start
        assert proc.returncode == 0, f"{level}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    print(f"podman: build {image['build_s']:.0f} s, participant {runs['participant']:.0f} s, "
          f"group {runs['group']:.0f} s")
    assert _digest(bids) == before, "the read-only dataset changed"
    assert {p.stat().st_uid for p in out.rglob("*")} == {UID}, "outputs not owned by the container's user"
    dices = {}
    for source, lesion in truth.items():
        label = source.parts[-3]
        mask = nib.load(out / label / "anat" / f"{label}_label-lesion_desc-T2w_mask.nii.gz")
        src = nib.load(source)
        assert mask.shape == src.shape and np.allclose(mask.affine, src.affine)
        dices[label] = dice(mask, lesion)
    assert_dice_floors(dices, DICE_FLOORS)
    with open(out / "group" / "lesions.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert sorted((r["participant_id"], r["status"]) for r in rows) == [("sub-01", "ok"), ("sub-02", "ok")]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Version"] == VERSION
    assert (out / "qc" / "index.html").is_file()


def test_the_image_has_no_torchvision_and_the_locked_torch(engine, image):
    probe = ("import importlib.util as u, torch; "
             "print(torch.__version__, u.find_spec('torchvision'), u.find_spec('timm'))")
    proc = _podman("run", "--rm", "--read-only", "--network", "none", "--entrypoint", "python", TAG, "-c",
                   probe, env=engine)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2.13.0+cpu", "None", "None"]
