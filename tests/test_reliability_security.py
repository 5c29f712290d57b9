"""Security rows of docs/RELIABILITY.md: no code from model folders, no writes through symlinks,
HTML escaping, no network at run time, non-root container user."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from reliability_data import (
    ENV_1THREAD,
    RUN_PY,
    HalfThenENOSPC,
    copy_dataset,
    image_path,
    main_in_process,
    scan_outputs,
    tiny_bids,
)

from bidsapp import derivatives
from bidsapp.engine.modelfolder import NnUNetModel, load_checkpoint
from bidsapp.errors import ModelError
from bidsapp.models import locate
from tests.components import missing

REPO = Path(__file__).resolve().parents[1]
FAST = ["--demo", "--skip_bids_validator", "--nprocs", "1", "--omp-nthreads", "1"]
HOSTILE = "<img src=x onerror=alert(1)>"  # a legal folder name that is also HTML


def _tree_digest(root: Path) -> dict[str, str]:
    """Every entry under root: link targets for symlinks, sha256 for files (follows nothing)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_bids(tmp_path_factory.mktemp("rel_security") / "bids", n_subjects=2)


class _Payload:
    """Unpickling this calls os.mkdir(marker): proof that pickled code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"network_weights": {"w": torch.zeros(2)}, "trainer_name": "nnUNetTrainer",
                "init_args": {"payload": _Payload(marker)}}, str(path))
    return path


def test_pickle_payload_in_checkpoint_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = _malicious_checkpoint(tmp_path / "checkpoint_final.pth", marker)
    with pytest.raises(ModelError) as info:
        load_checkpoint(ckpt)
    assert str(info.value).startswith(f"{ckpt}: cannot read checkpoint")
    assert not marker.exists()
    # The payload is live: an unsafe load runs it (so the check above can fail).
    torch.load(str(ckpt), weights_only=False)
    assert marker.is_dir()


def test_plain_pickle_checkpoint_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoint_final.pth"
    ckpt.write_bytes(pickle.dumps({"network_weights": {}, "x": _Payload(marker)}, protocol=2))
    with pytest.raises(ModelError):
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_atomic_write_never_writes_through_a_symlink(tmp_path):
    # A symlink at an output name that points into the (read-only for us) input dataset must be
    # replaced by a regular file, never followed for writing.
    bids_file = tmp_path / "bids" / "sub-01_T2w.json"
    bids_file.parent.mkdir()
    bids_file.write_text('{"original": true}')
    out = tmp_path / "out" / "sub-01_mask.json"
    out.parent.mkdir()
    out.symlink_to(bids_file)
    derivatives.atomic_write_json(out, {"new": 1})
    assert bids_file.read_text() == '{"original": true}'
    assert not out.is_symlink() and out.read_text().strip().startswith("{")


def test_atomic_write_enospc_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "mask.json"
    real_fdopen = os.fdopen

    monkeypatch.setattr(derivatives.os, "fdopen", lambda fd, mode: HalfThenENOSPC(real_fdopen(fd, mode)))
    with pytest.raises(derivatives.OutputError) as info:
        derivatives.atomic_write_bytes(target, b"x" * 1000)
    assert str(info.value) == f"{target}: cannot write (No space left on device)"
    assert list(tmp_path.iterdir()) == []


def test_container_user_is_not_root():
    dockerfile = REPO / "Dockerfile"
    users = re.findall(r"^\s*USER\s+(\S+)", dockerfile.read_text(), flags=re.M | re.I)
    assert users, "Dockerfile sets no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every socket connect, DNS lookup and send raises, and is recorded: the app must try none."""
    attempts: list = []

    def blocked(*args, **kwargs):
        attempts.append(args[1:] or kwargs)
        raise OSError("network access blocked by the test")
    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    return attempts


def test_socket_guard_blocks_connections(no_network):
    with pytest.raises(OSError, match="network access blocked"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


# ---- the whole app ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_run(tiny, tmp_path_factory) -> dict:
    """Participant + group in this process with every socket blocked, on a dataset whose folder name is
    HTML and which holds one failed image (its error message, with the path, reaches the QC page)."""
    base = tmp_path_factory.mktemp("hostile") / HOSTILE
    bids = copy_dataset(tiny, base / "bids")
    zero = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    zero.to_filename(str(image_path(bids, "sub-02", "zero")))
    out = base / "out"
    attempts: list = []
    mp = pytest.MonkeyPatch()

    def blocked(*args, **kwargs):
        attempts.append(repr(args[1:]))
        raise OSError("network access blocked by the test")
    for name in ("connect", "connect_ex", "sendto"):
        mp.setattr(socket.socket, name, blocked)
    mp.setattr(socket, "getaddrinfo", blocked)
    mp.setattr(socket, "create_connection", blocked)
    try:
        part = main_in_process([bids, out, "participant", *FAST])
        desc = json.loads((out / "dataset_description.json").read_text())
        desc["Name"] = "<script>alert('study')</script>"  # a user renaming the study
        (out / "dataset_description.json").write_text(json.dumps(desc))
        group = main_in_process([bids, out, "group", "--skip_bids_validator"])
    finally:
        mp.undo()
    return {"bids": bids, "out": out, "participant": part, "group": group, "attempts": attempts}


def test_no_network_at_run_time_in_process(hostile_run):
    assert hostile_run["participant"] == 1  # the all-zero image failed, the others ran
    assert hostile_run["group"] == 0
    assert hostile_run["attempts"] == []
    out = hostile_run["out"]
    assert (out / "group" / "lesions.tsv").is_file() and (out / "qc" / "index.html").is_file()
    assert len(list(out.glob("sub-*/anat/*_label-lesion_*_mask.nii.gz"))) == 2  # (+ their cord masks)
    assert len(list(out.glob("sub-*/anat/*_label-SC_*_mask.nii.gz"))) == 2


# ---- every process of a run: an audit hook in each Python process, a network namespace around all ----------

NETGUARD = Path(__file__).resolve().parent / "netguard"  # its sitecustomize.py: the guard (read it)
WORKER_ARGV = "--multiprocessing-fork"  # a spawned worker's argv, until it takes the parent's
#: the positive control: a worker opens an internet socket and, as a tolerant app would, swallows the error
PROBE_SITECUSTOMIZE = f"""import runpy, socket, sys
runpy.run_path({str(NETGUARD / "sitecustomize.py")!r})
if {WORKER_ARGV!r} in sys.argv:
    try:
        socket.create_connection(("192.0.2.1", 80), timeout=2)  # TEST-NET-1: never a real host
    except OSError:
        pass
"""


def _netns() -> str:
    """"" where ``unshare -rn`` (a network namespace without interfaces) works here, else why not."""
    try:
        probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        return str(exc)
    return "" if probe.returncode == 0 else probe.stderr.strip()[-300:] or f"exit {probe.returncode}"


def _guarded(args: list, log: Path, *, netns: bool, first: Path | None = None) -> subprocess.CompletedProcess:
    """run.py ARGS with the guard in every Python process (``first``: a folder put before it on
    PYTHONPATH), inside a network namespace when ``netns``."""
    path = [str(f) for f in (first, NETGUARD, REPO) if f is not None]
    env = {**os.environ, **ENV_1THREAD, "PYTHONPATH": os.pathsep.join(path),
           "CORDLESION_NETGUARD_LOG": str(log)}
    prefix = ["unshare", "-rn"] if netns else []
    return subprocess.run([*prefix, sys.executable, str(RUN_PY), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def _guard_log(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _assert_no_network(records: list[dict]) -> None:
    """The check the run must pass: no process tried the network (blocked or not, swallowed or not)."""
    blocked = [f"pid {r['pid']} {r['event']} {r['target']}" for r in records if r["kind"] == "blocked"]
    assert blocked == [], f"network use at run time: {blocked}"


def _workers(records: list[dict]) -> set[int]:
    return {r["pid"] for r in records if r["kind"] == "start" and WORKER_ARGV in r["argv"]}


def test_no_network_in_any_process_of_a_run(tiny, tmp_path):
    """run.py participant with 2 spawned workers and input validation (bids-validator-deno, a subprocess),
    then the group level with output validation: no process uses the network. Every Python process carries
    the guard (tests/netguard); the whole run is in a network namespace, which no process, Python or not,
    can leave. The positive control is the next test."""
    why_no_netns = _netns()
    out, log = tmp_path / "out", tmp_path / "net.jsonl"
    part = _guarded([tiny, out, "participant", "--demo", "--nprocs", "2", "--omp-nthreads", "1"], log,
                    netns=not why_no_netns)
    assert part.returncode == 0, part.stderr[-2000:]
    assert "bids-validator-deno" in part.stderr
    group = _guarded([tiny, out, "group"], log, netns=not why_no_netns)
    assert group.returncode == 0, group.stderr[-2000:]
    assert "bids-validator-deno 0 errors" in group.stderr
    assert (out / "qc" / "index.html").is_file()
    records = _guard_log(log)
    assert len(_workers(records)) == 2, "the guard did not reach both workers"
    _assert_no_network(records)
    if why_no_netns:  # the Python processes were checked; processes that are not Python were not
        missing("network namespace", f"unshare -rn does not work here ({why_no_netns}): the validator "
                "subprocess ran with the network")


def test_the_network_guard_catches_a_worker_that_opens_a_socket(tiny, tmp_path):
    """Positive control: a worker that opens an internet socket and swallows the error (the run still
    succeeds) fails the check above; and a process that is not Python cannot get out of the namespace."""
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE_SITECUSTOMIZE)
    why_no_netns = _netns()
    log = tmp_path / "net.jsonl"
    args = [tiny, tmp_path / "out", "participant", "--demo", "--skip_bids_validator", "--nprocs", "2",
            "--omp-nthreads", "1"]
    part = _guarded(args, log, netns=not why_no_netns, first=probe)
    assert part.returncode == 0, part.stderr[-2000:]
    records = _guard_log(log)
    with pytest.raises(AssertionError, match="network use at run time"):
        _assert_no_network(records)
    blocked = {r["pid"]: r for r in records if r["kind"] == "blocked"}
    assert set(blocked) == _workers(records) and len(blocked) == 2, records
    assert all("192.0.2.1" in r["target"] for r in blocked.values()), blocked

    with socket.create_server(("127.0.0.1", 0)) as server:  # reachable from here, not from the namespace
        port = server.getsockname()[1]
        dial = ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]
        assert subprocess.run(dial, capture_output=True, timeout=60).returncode == 0
        if why_no_netns:
            missing("network namespace", f"unshare -rn does not work here ({why_no_netns})")
        assert subprocess.run(["unshare", "-rn", *dial], capture_output=True, timeout=60).returncode != 0


def test_html_escaping_in_qc_index(hostile_run):
    html = (hostile_run["out"] / "qc" / "index.html").read_text()
    assert HOSTILE not in html and "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;study&#39;)&lt;/script&gt;" in html  # the title, as text
    data = re.search(r'<script type="application/json" id="qc-data">(.*?)</script>', html, re.S)
    assert data, "the QC data block is missing"
    rows = json.loads(data.group(1))["rows"]
    errors = [r["err"] for r in rows if r.get("err")]
    assert any(HOSTILE in e for e in errors), errors  # the value survives intact, as data
    assert "<" not in data.group(1)  # ...but no '<' inside the script block (\u003c)


def _plant_code(folder: Path, marker: Path) -> None:
    code = f"import os\nos.makedirs({str(marker)!r}, exist_ok=True)\n"
    for where in (folder, *folder.glob("fold_*")):
        for name in ("trainer_class.py", "nnUNetTrainerEvil.py", "__init__.py", "evil.py"):
            (where / name).write_text(code)


def test_no_code_from_model_folders_is_executed(tiny, tmp_path):
    from bidsapp.engine.nnunet import NnUNetPredictor
    from bidsapp.imaging import load_image

    demo = Path(locate("lesion_ms", demo=True).path)
    folder = tmp_path / "nnUNetTrainerEvil__nnUNetPlans__3d_fullres"
    shutil.copytree(demo, folder)
    marker = tmp_path / "code-ran"
    _plant_code(folder, marker)
    for ckpt in folder.glob("fold_*/checkpoint_*.pth"):  # our own demo files: trusted to rewrite
        state = torch.load(str(ckpt), weights_only=False)
        state["trainer_name"] = "nnUNetTrainerEvil"
        torch.save(state, str(ckpt))
    probs = NnUNetPredictor(NnUNetModel.load(folder), device="cpu").predict(
        load_image(image_path(tiny, "sub-01", "sag")))
    assert probs.shape[0] == 2 and np.isfinite(probs).all()
    assert not marker.exists()
    assert not any(m in sys.modules for m in ("trainer_class", "nnUNetTrainerEvil", "evil"))
    assert str(folder) not in sys.path

    plans = json.loads((folder / "plans.json").read_text())  # a plans file naming a class of its own
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "evil.EvilNet"
    (folder / "plans.json").write_text(json.dumps(plans))
    sys.path.insert(0, str(folder))  # even importable, it must not be imported
    try:
        with pytest.raises(ModelError) as info:
            NnUNetPredictor(NnUNetModel.load(folder), device="cpu")
    finally:
        sys.path.remove(str(folder))
    assert "evil.EvilNet" in str(info.value)
    assert not marker.exists() and "evil" not in sys.modules


def test_symlinks_outside_bids_dir_are_read_never_written(tiny, tmp_path, capsys):
    """Inputs that are symlinks to elsewhere (DataLad, users) are followed for reading; an output name
    that is a symlink is replaced by a regular file; nothing outside output_dir changes."""
    bids = copy_dataset(tiny, tmp_path / "bids")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    src = image_path(bids, "sub-02", "sag")
    shutil.move(src, elsewhere / "real.nii.gz")
    src.symlink_to(elsewhere / "real.nii.gz")
    out = tmp_path / "out"
    mask = out / "sub-02/anat/sub-02_acq-sag_label-lesion_desc-T2w_mask.nii.gz"
    mask.parent.mkdir(parents=True)
    (elsewhere / "victim.nii.gz").write_bytes(b"not yours")
    mask.symlink_to(elsewhere / "victim.nii.gz")
    before_bids, before_else = _tree_digest(bids), _tree_digest(elsewhere)
    code = main_in_process([bids, out, "participant", *FAST])
    assert code == 0, capsys.readouterr().err
    assert _tree_digest(bids) == before_bids and _tree_digest(elsewhere) == before_else
    assert mask.is_file() and not mask.is_symlink()
    assert nib.load(str(mask)).shape == nib.load(str(elsewhere / "real.nii.gz")).shape
    assert scan_outputs(out)["temp"] == []
