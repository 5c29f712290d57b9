"""The OpenVINO CPU backend (issue 23 item 1): the same logits as torch, a cache that a study fills once
(atomic entries, one converter per entry, damaged entries refused, read-only caches work), and a lazy
import (the command lines never load OpenVINO for --help or --dry-run)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bidsapp.engine import openvino_runtime as ovr
from bidsapp.engine.modelfolder import NnUNetModel
from bidsapp.errors import ModelError
from bidsapp.models import locate
from tests.components import missing

ROOT = Path(__file__).resolve().parents[1]
FOLD_FILE = "fold_0/checkpoint_final.pth"


@pytest.fixture(scope="module")
def demo():
    if importlib.util.find_spec("openvino") is None:
        missing("openvino", f"not installed: pip install {ovr.REQUIREMENT} (requirements.lock pins it)")
    # a ResEnc network: residual blocks, InstanceNorm, transposed convolutions
    located = locate("lesion_ms", demo=True)
    return NnUNetModel.load(located.path, folds=[0]), located.sha256[FOLD_FILE]


def _windows(model: NnUNetModel, n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.normal(size=(n, model.num_input_channels, *model.config["patch_size"]))
                            .astype(np.float32))


def _torch_logits(model: NnUNetModel, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return ovr.fold_network(model, 0)(x).numpy()


def test_logits_agree_with_torch_in_float32(demo, tmp_path):
    model, sha = demo
    x = _windows(model, 3)
    ref = _torch_logits(model, x)
    backend = ovr.fold_backend(model, 0, checkpoint_sha256=sha, batch=2, threads=2,
                               cache=ovr.IrCache(write_dir=tmp_path))
    out = backend(x)  # 3 windows on a model compiled for 2: one full batch, one zero-padded
    assert out.dtype == torch.float32 and tuple(out.shape) == ref.shape == (3, 2, *model.config["patch_size"])
    assert backend.compiled.get_property("INFERENCE_PRECISION_HINT") == ovr._openvino().Type.f32
    diff = np.abs(out.numpy() - ref)
    assert diff.max() <= 1e-4 * np.abs(ref).max(), (diff.max(), np.abs(ref).max())  # float32 rounding only
    assert (out.numpy().argmax(1) == ref.argmax(1)).mean() >= 0.9999
    # the zero padding of the short batch does not reach the window: as computed alone (float rounding
    # apart: a model compiled for another batch blocks its loops differently)
    one = ovr.fold_backend(model, 0, checkpoint_sha256=sha, batch=1, cache=ovr.IrCache(write_dir=tmp_path))
    assert np.abs(one(x[2:3]).numpy() - out[2:3].numpy()).max() <= 1e-4 * np.abs(ref).max()
    with pytest.raises(ValueError, match="expected windows of shape"):
        backend(x[:, :, :8])


def test_the_cache_converts_once_and_gives_the_same_model(demo, tmp_path):
    model, sha = demo
    cache = ovr.IrCache(write_dir=tmp_path / "cache")
    calls = []

    def build():
        calls.append(1)
        return ovr.fold_network(model, 0)

    key = ovr.model_key(model, sha)
    first = ovr.load_backend(key, build, cache=cache)
    second = ovr.load_backend(key, build, cache=cache)
    assert (first.origin, second.origin, len(calls)) == ("converted", "cache", 1)
    x = _windows(model, 1, seed=3)
    assert torch.equal(first(x), second(x))
    entry = tmp_path / "cache" / key.name()
    meta = json.loads((entry / ovr.META).read_text())
    assert meta["key"]["checkpoint_sha256"] == sha
    assert meta["key"]["window"] == [1, 1, *model.config["patch_size"]]
    assert meta["key"]["precision"] == "f32" and meta["key"]["runtime"] == ovr.runtime_version()
    assert sorted(p.name for p in entry.iterdir()) == sorted([ovr.XML, ovr.BIN, ovr.META])
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]  # no leftovers
    # a read-only copy of the cache (e.g. beside the installed models) serves it without writing
    reader = ovr.load_backend(key, build, cache=ovr.IrCache(read_dirs=(tmp_path / "cache",)))
    assert reader.origin == "cache" and len(calls) == 1 and torch.equal(reader(x), first(x))


def test_every_field_of_the_key_names_another_entry(demo):
    model, sha = demo
    key = ovr.model_key(model, sha)
    assert key == ovr.model_key(model, sha) and key.name() == ovr.model_key(model, sha).name()
    changed = [replace(key, checkpoint_sha256="0" * 64), replace(key, network_sha256="1" * 64),
               replace(key, window=(2, *key.window[1:])), replace(key, window=(1, 1, 32, 64, 32)),
               replace(key, precision="bf16"), replace(key, runtime="2026.3.0")]
    assert len({k.name() for k in [key, *changed]}) == 7
    assert ovr.model_key(model, sha, batch=2).window == (2, 1, 32, 64, 64)
    other_plans = json.loads(json.dumps(model.plans))
    arch = other_plans["configurations"][model.configuration]["architecture"]
    arch["arch_kwargs"]["nonlin"] = "torch.nn.ReLU"
    assert ovr.network_sha256(other_plans, model.configuration, 1, 2) != key.network_sha256


def test_a_damaged_entry_is_refused_and_replaced(demo, tmp_path, caplog):
    model, sha = demo
    cache = ovr.IrCache(write_dir=tmp_path)
    key = ovr.model_key(model, sha)
    good = ovr.load_backend(key, lambda: ovr.fold_network(model, 0), cache=cache)
    x = _windows(model, 1, seed=5)
    expected = good(x)
    weights = tmp_path / key.name() / ovr.BIN
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    weights.write_bytes(bytes(data))
    assert cache.find(key) is None and "damaged OpenVINO cache entry" in caplog.text
    again = ovr.load_backend(key, lambda: ovr.fold_network(model, 0), cache=cache)
    assert again.origin == "converted" and torch.equal(again(x), expected)
    assert cache.find(key) == tmp_path / key.name() / ovr.XML


def test_an_unwritable_cache_converts_in_memory(demo, tmp_path):
    model, sha = demo
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cache = ovr.IrCache(write_dir=blocker / "cache")  # cannot be created (as root too)
    backend = ovr.load_backend(ovr.model_key(model, sha), lambda: ovr.fold_network(model, 0), cache=cache)
    assert backend.origin == "converted in memory" and blocker.read_text() == "not a folder"
    x = _windows(model, 1, seed=7)
    ref = _torch_logits(model, x)
    assert np.abs(backend(x).numpy() - ref).max() <= 1e-4 * np.abs(ref).max()


_WORKER = r"""
import json, sys
from pathlib import Path
from bidsapp.engine import openvino_runtime as ovr
from bidsapp.engine.modelfolder import NnUNetModel
from bidsapp.errors import ModelError
from bidsapp.models import locate
located = locate("lesion_ms", demo=True)
model = NnUNetModel.load(located.path, folds=[0])
backend = ovr.fold_backend(model, 0, checkpoint_sha256=located.sha256["fold_0/checkpoint_final.pth"],
                           cache=ovr.IrCache(write_dir=Path(sys.argv[1])), threads=1)
print(json.dumps({"origin": backend.origin}))
"""


def test_two_workers_convert_once(demo, tmp_path):
    """Two processes ask for the same entry at once: one converts under the lock, the other waits and
    reads the entry. HOME is a fresh folder: OpenVINO writes nothing there (its usage telemetry is
    left out of the lock, so the converter's stub is used)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path / "cache")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    origins = sorted(json.loads(out.strip().splitlines()[-1])["origin"] for out, _ in results)
    assert origins == ["cache", "converted"]
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1
    assert list(home.iterdir()) == []


_PROBE = r"""
import json, runpy, sys
mode, target, *rest = sys.argv[1:]
sys.argv = [target, *rest]
try:
    if mode == "module":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target, run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"exit": code, "openvino": sorted(m for m in sys.modules if m.split(".")[0] == "openvino")}))
"""


def _probe(tmp_path: Path, *argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env,
                         timeout=300, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_and_dry_run_do_not_import_openvino(tmp_path):
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    img = nib.Nifti1Image(np.ones((12, 10, 6), np.float32), np.diag([0.5, 0.5, 2.0, 1.0]))
    nib.save(img, bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    assert _probe(tmp_path, "path", str(ROOT / "run.py"), "--help") == {"exit": 0, "openvino": []}
    dry = _probe(tmp_path, "path", str(ROOT / "run.py"), str(bids), str(tmp_path / "out"), "participant",
                 "--dry-run", "--demo", "--skip-bids-validator")
    assert dry == {"exit": 0, "openvino": []}
    assert _probe(tmp_path, "module", "bidsapp.segment", "--help") == {"exit": 0, "openvino": []}
    # and the backend's own module imports it only when asked to run
    code = "import sys, bidsapp.engine.openvino_runtime as o; print(o.__name__, 'openvino' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert out[1] == "False"


def test_a_network_openvino_cannot_convert_is_one_line_naming_the_checkpoint(demo):
    model, sha = demo

    class Unconvertible(torch.nn.Module):
        def forward(self, x):  # data-dependent Python control flow on a tensor's value: not traceable
            return x if float(x.sum()) > 0 else x.numpy()

    with pytest.raises(ModelError) as err:
        ovr.load_backend(ovr.model_key(model, sha), Unconvertible)
    text = str(err.value)
    version = ovr.REQUIREMENT.split("==")[1]  # the pinned release: its full version string starts with it
    # one line, the exception's type only: never the converter's own text (that goes to the log)
    assert re.fullmatch(rf"OpenVINO {re.escape(version)} cannot convert the network of checkpoint {sha[:12]} "
                        r"\(\w+; the log has the converter's message\); use --backend torch", text), text


@pytest.mark.parametrize("task", ["lesion_ms", "spinalcord"])
def test_a_network_traced_small_is_the_windows_model(demo, task):
    """convert() traces at the encoder's total stride, not at the window: the compiled model must be the
    one a trace at the window gives, bit for bit (ResEnc and PlainConvUNet)."""
    import warnings

    from bidsapp.engine import axisnorm

    model = NnUNetModel.load(locate(task, demo=True).path, folds=[0])
    window = ovr.model_key(model, "0" * 64).window
    network = axisnorm.with_axis_mean_norms(ovr.fold_network(model, 0))
    assert ovr.trace_shape(network, window) == (1, 1, 4, 8, 8)  # the demo plans' strides
    full = torch.zeros(window)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        at_window = ovr._openvino().convert_model(torch.jit.trace(network, full, check_trace=False),
                                                  example_input=full, input=[window])
    x = _windows(model, 1).numpy()
    small, whole = (ovr.compile_model(m, 2).create_infer_request().infer({0: x})[0].copy()
                    for m in (ovr.convert(ovr.fold_network(model, 0), window), at_window))
    np.testing.assert_array_equal(small, whole)
