"""Security rows of docs/RELIABILITY.md: no code from model folders, no writes through symlinks,
HTML escaping, no network at run time, non-root container user."""
from __future__ import annotations

import os
import pickle
import re
import socket
from pathlib import Path

import pytest
import torch

from bidsapp import derivatives
from bidsapp.engine.modelfolder import load_checkpoint
from bidsapp.errors import ModelError

REPO = Path(__file__).resolve().parents[1]


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

    class _Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(derivatives.os, "fdopen", lambda fd, mode: _Full(real_fdopen(fd, mode)))
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
def no_network(monkeypatch):
    """Every socket connect, DNS lookup and send raises: the app must not need any of them."""
    def blocked(*args, **kwargs):
        raise OSError("network access blocked by the test")
    for name in ("connect", "connect_ex", "sendto", "bind"):
        monkeypatch.setattr(socket.socket, name, blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)


def test_socket_guard_blocks_connections(no_network):
    with pytest.raises(OSError, match="network access blocked"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
