"""Header guards (issue 19): plausibility, model grids, memory vs budget (memory.py), failure sentences
(errors.py)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp import argtypes, errors, guards, memory, orientation
from bidsapp.engine.resample import compute_new_shape
from bidsapp.errors import InputImageError, ModelError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "bidsapp" / "models" / "demo"
GiB, MiB = 2 ** 30, 2 ** 20


def demo_plan(task: str) -> memory.ModelPlan:
    return guards.nnunet_plan(task, next((DEMO / task).glob("*__*__*")))


@pytest.fixture(scope="module")
def plans() -> list[memory.ModelPlan]:
    return [demo_plan("spinalcord"), demo_plan("lesion_ms")]


# ---- plausibility -------------------------------------------------------------------------------
@pytest.mark.parametrize("zooms, words", [
    ((15.0, 15.0, 15.0), ["15x15x15 mm", "coarser than the 10 mm"]),
    ((0.7, 0.7, 20.0), ["0.7x0.7x20 mm", "20 mm is coarser"]),
    ((0.001, 0.001, 0.001), ["0.001 mm is finer than the 0.1 mm"]),
    ((0.7, 0.7, 0.002), ["0.002 mm is finer"]),
])
def test_odd_voxel_sizes_are_implausible(zooms, words):
    reasons = guards.plausibility((64, 64, 40), zooms)
    assert reasons and all(any(w in r for r in reasons) for w in words), reasons


@pytest.mark.parametrize("shape, zooms", [
    ((320, 320, 60), (0.7, 0.7, 3.0)), ((1024, 1024, 12), (0.2, 0.2, 5.0)),
    ((64, 1500, 320), (0.5, 0.5, 0.8)), ((300, 300, 1), (0.3, 0.3, 8.0)),
])
def test_real_cord_geometries_are_plausible(shape, zooms):
    assert guards.plausibility(shape, zooms) == []


def test_field_of_view_and_shape_limits():
    fov = guards.plausibility((320, 320, 300), (0.5, 0.5, 3.0))  # 900 mm along S-I
    assert len(fov) == 1 and "field of view 160x160x900 mm" in fov[0] and "800 mm" in fov[0]
    big = guards.plausibility((3000, 64, 64), (0.1, 1.0, 1.0))
    assert len(big) == 1 and "3000 voxels along an axis, more than 2048" in big[0]
    custom = guards.GeometryLimits(max_voxel_mm=20.0)
    assert guards.plausibility((32, 32, 20), (15.0, 15.0, 15.0), custom) == []


def test_check_geometry_refuses_with_file_and_flag_and_override_warns(caplog):
    with pytest.raises(InputImageError) as err:
        guards.check_geometry("sub-01_T2w.nii.gz", (64, 64, 40), (15.0, 15.0, 15.0))
    text = str(err.value)
    assert text.startswith("sub-01_T2w.nii.gz: voxel size 15x15x15 mm") and "--allow-unusual-geometry" in text
    assert "\n" not in text
    reasons = guards.check_geometry("sub-01_T2w.nii.gz", (64, 64, 40), (15.0, 15.0, 15.0), allow_unusual=True)
    assert reasons and "accepted: --allow-unusual-geometry" in caplog.text


# ---- model plans and grids ----------------------------------------------------------------------
def test_nnunet_plan_reads_the_demo_folders():
    for task in ("spinalcord", "lesion_ms", "lesion_ms_mp2rage"):
        folder = next((DEMO / task).glob("*__*__*"))
        cfg = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]
        plan = guards.nnunet_plan(task, folder)
        assert plan.spacing == tuple(cfg["spacing"]) and plan.patch_size == tuple(cfg["patch_size"])
        assert plan.n_classes == 2 and plan.n_channels == 1 and plan.n_folds == 1
        ckpt = next(folder.glob("fold_*/checkpoint_final.pth"))
        assert plan.weights_bytes == ckpt.stat().st_size
    assert demo_plan("lesion_ms").base_features == 6 and demo_plan("spinalcord").base_features == 4


def test_nnunet_plan_bad_folder_is_a_model_error(tmp_path):
    (tmp_path / "plans.json").write_text("{not json")
    (tmp_path / "dataset.json").write_text("{}")
    with pytest.raises(ModelError, match="plans.json: cannot read JSON"):
        guards.nnunet_plan("lesion_ms", tmp_path)


def _engine_grid(shape, zooms, affine, plan):
    """The oracle: the engine's own reorientation, axis order and compute_new_shape."""
    data = np.zeros(shape, np.float32)
    oriented, reo = orientation.to_sct_orientation(data, affine, plan.orientation)
    spacing = orientation.reverse_spacing(reo.zooms(zooms))
    zyx = orientation.xyz_to_zyx(oriented).shape
    tf = plan.transpose_forward
    return compute_new_shape([zyx[i] for i in tf], [spacing[i] for i in tf], plan.spacing)


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("P", "S", "R"), ("L", "I", "A"), ("S", "R", "P")])
def test_model_grid_matches_the_engine(axcodes, plans):
    shape, zooms = (50, 70, 30), (0.5, 0.9, 3.0)
    ornt = nib.orientations.axcodes2ornt(axcodes)
    affine = np.linalg.inv(nib.orientations.inv_ornt_aff(ornt, shape)) @ np.diag([*zooms, 1.0])
    assert nib.aff2axcodes(affine) == axcodes
    for plan in plans:
        assert memory.model_grid(shape, zooms, affine, plan) == _engine_grid(shape, zooms, affine, plan)


def test_micrometre_voxels_are_refused_by_the_grid_check_not_a_zero_division(plans):
    affine = np.diag([0.001, 0.001, 0.001, 1.0])
    with pytest.raises(InputImageError) as err:
        guards.image_guards("tiny.nii.gz", (40, 40, 30), (0.001,) * 3, affine, plans, budget=None,
                            allow_unusual=True)
    text = str(err.value)
    assert text.startswith("tiny.nii.gz: on the spinalcord model's 2x1x1 mm grid the image is 0x0x0 voxels")
    assert "too small to segment" in text and "Division" not in text


# ---- memory estimate ----------------------------------------------------------------------------
def test_estimate_is_modest_for_a_real_image_and_huge_for_15_mm(plans):
    normal = memory.estimate_memory((320, 320, 60), (0.7, 0.7, 3.0), np.diag([0.7, 0.7, 3.0, 1]), plans)
    assert normal.model == "lesion_ms" and normal.grid == (120, 320, 320)
    assert 0.6 * GiB < normal.total_bytes < 2 * GiB
    coarse = memory.estimate_memory((320, 320, 60), (15.0,) * 3, np.diag([15.0] * 3 + [1]), plans)
    assert coarse.grid == (600, 6857, 6857) and coarse.total_bytes > 100 * GiB
    # the logits of every class on that grid alone: 2 x 600 x 6857^2 float32
    assert coarse.total_bytes > 2 * 600 * 6857 ** 2 * 4


def test_estimate_grows_with_classes_folds_and_features(plans):
    shape, zooms, aff = (200, 200, 40), (0.7, 0.7, 3.0), np.diag([0.7, 0.7, 3.0, 1])
    base = memory.estimate_memory(shape, zooms, aff, plans[1:]).total_bytes
    from dataclasses import replace

    for change in ({"n_classes": 4}, {"n_folds": 5}, {"base_features": 32}, {"weights_bytes": 10 ** 9}):
        assert memory.estimate_memory(shape, zooms, aff, [replace(plans[1], **change)]).total_bytes > base


def test_legacy_plan_grid_is_half_millimetre_in_plane(tmp_path):
    onnx = tmp_path / "t2.onnx"
    onnx.write_bytes(b"x" * 1000)
    plan = guards.legacy_plan("t2", onnx)
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    assert memory.model_grid((100, 80, 20), (1.0, 1.0, 3.0), aff, plan) == (200, 160, 20)
    assert plan.weights_bytes == 1000


_PEAK_CHILD = r"""
import json, sys
import numpy as np, nibabel as nib, torch
torch.set_num_threads(1)
from bidsapp import guards, memory
from bidsapp.engine import NnUNetModel, NnUNetPredictor
from bidsapp.models import locate
shape, zooms = (80, 80, 24), (1.4, 1.4, 3.0)
g = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
data = (200 + 300 * np.exp(-(g[0] ** 2 + g[1] ** 2) / 0.05)).astype(np.float32)
img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
folder = locate("lesion_ms", demo=True).path
est = memory.estimate_memory(shape, zooms, img.affine, [guards.nnunet_plan("lesion_ms", folder)])
probs = NnUNetPredictor(NnUNetModel.load(folder), device="cpu").predict(img)
mask = probs.argmax(0) == 1
hwm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"estimate": est.total_bytes, "peak": hwm}))
"""


def test_estimate_covers_the_measured_peak_of_a_worker():
    """A fresh process segments an 80x80x24 image at 1.4x1.4x3 mm (resampled up to 48x160x160 at
    the demo lesion_ms spacing): its VmHWM stays below the estimate, and the estimate is not absurd."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["peak"] < figures["estimate"] < 2.5 * figures["peak"], figures


# ---- budget -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("8G", 8 * GiB), ("8GB", 8 * GiB), ("8gb", 8 * GiB), ("8GiB", 8 * GiB), ("8000MB", 8000 * MiB),
    ("8000M", 8000 * MiB), ("8000", 8000 * MiB), ("1.5T", int(1.5 * 2 ** 40)), ("512K", 512 * 1024),
    (" 16 G ", 16 * GiB),
])
def test_parse_memory(text, expected):
    assert argtypes.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-1G", "0", "8X", "8 GBs", "G8"])
def test_parse_memory_refuses(text):
    with pytest.raises(ValueError, match="not a memory size"):
        argtypes.parse_memory(text)


def _reader(files: dict[str, str]):
    return lambda path: files.get(path)


MEMINFO = "MemTotal:       32000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n"


@pytest.mark.parametrize("mem, env, files, total, source", [
    ("4G", {"SLURM_MEM_PER_NODE": "8000"}, {}, 4 * GiB, "--mem 4G"),
    (None, {"SLURM_MEM_PER_NODE": "8000"}, {"/proc/meminfo": MEMINFO}, 8000 * MiB, "SLURM_MEM_PER_NODE=8000"),
    (None, {"SLURM_MEM_PER_CPU": "2000", "SLURM_CPUS_ON_NODE": "4"}, {}, 8000 * MiB,
     "SLURM_MEM_PER_CPU=2000"),
    (None, {}, {"/sys/fs/cgroup/memory.max": "4294967296\n", "/proc/meminfo": MEMINFO}, 4 * GiB, "cgroup"),
    (None, {}, {"/sys/fs/cgroup/memory.max": "max\n", "/proc/meminfo": MEMINFO}, 20000000 * 1024,
     "MemAvailable"),
    (None, {}, {"/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712",
                "/proc/meminfo": "MemTotal: 1000 kB\n"}, 1000 * 1024, "MemTotal"),
    (None, {"SLURM_MEM_PER_NODE": "16G"}, {"/sys/fs/cgroup/memory.max": str(6 * GiB)}, 6 * GiB, "cgroup"),
])
def test_memory_budget_sources(mem, env, files, total, source):
    budget = memory.memory_budget(mem, 2, env, read=_reader(files))
    assert budget.total_bytes == total and source in budget.source
    assert budget.per_worker_bytes == total // 2


def test_memory_budget_none_when_nothing_says():
    assert memory.memory_budget(None, 1, {}, read=_reader({})) is None


def test_check_memory_refuses_with_the_figure_and_the_limit(plans):
    aff = np.diag([0.7, 0.7, 3.0, 1])
    est = memory.estimate_memory((320, 320, 60), (0.7, 0.7, 3.0), aff, plans)
    memory.check_memory("a.nii.gz", est, memory.MemoryBudget(4 * GiB, "--mem 4G"))
    memory.check_memory("a.nii.gz", est, None)
    with pytest.raises(InputImageError) as err:
        memory.check_memory("a.nii.gz", est, memory.MemoryBudget(2 * GiB, "--mem 2G", nprocs=4))
    text = str(err.value)
    assert text.startswith(f"a.nii.gz: needs about {memory.format_bytes(est.total_bytes)} of memory")
    assert "120x320x320 voxels on the lesion_ms model's 1.5x0.7x0.7 mm grid" in text
    assert "more than 512 MB per worker (2.0 GB from --mem 2G, shared by --nprocs 4)" in text


def test_image_guards_order(plans):
    shape, zooms, aff = (320, 320, 60), (15.0, 15.0, 15.0), np.diag([15.0] * 3 + [1])
    budget = memory.MemoryBudget(8 * GiB, "--mem 8G")
    with pytest.raises(InputImageError, match="coarser than the 10 mm"):
        guards.image_guards("x.nii", shape, zooms, aff, plans, budget=budget)
    with pytest.raises(InputImageError, match=r"needs about 5\d\d\.\d GB of memory"):
        guards.image_guards("x.nii", shape, zooms, aff, plans, budget=budget, allow_unusual=True)
    ok = guards.image_guards("x.nii", (320, 320, 60), (0.7, 0.7, 3.0), np.diag([0.7, 0.7, 3.0, 1]), plans,
                             budget=budget)
    assert ok.total_bytes < budget.total_bytes


# ---- failure sentences --------------------------------------------------------------------------
def _raised(fn):
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the point is to catch what the call raises
        return exc
    raise AssertionError("did not raise")


def _torch_error():
    import torch

    return _raised(lambda: torch.nn.Conv3d(3, 1, 3)(torch.zeros(1, 2, 4, 4, 4)))


def _nibabel_error():
    return _raised(lambda: nib.Nifti1Header().set_data_dtype("foo"))


@pytest.mark.parametrize("make, words, raw", [
    (lambda: MemoryError(), ["the worker ran out of memory", "--mem"], None),
    (lambda: RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"), ["the GPU ran out of memory",
                                                                              "--device cpu"], "Tried"),
    (lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
     ["the worker ran out of memory"], "enforce"),
    (lambda: _raised(lambda: 1 / 0), ["cannot be resampled to the model's grid", "voxel sizes"],
     "division by zero"),
    (lambda: OSError(errno.ENOSPC, "No space left on device", "/out/x.nii.gz"),
     ["no space left on device", "(/out/x.nii.gz)"], None),
    (lambda: PermissionError(errno.EACCES, "Permission denied"), ["permission denied"], None),
    (lambda: OSError(errno.EROFS, "Read-only file system"), ["read-only"], None),
    (lambda: OSError(errno.ENXIO, "No such device or address"), ["system error ENXIO"], "No such"),
    (_torch_error, ["the network failed on this image (torch RuntimeError"], "expected input"),
    (_nibabel_error, ["nibabel cannot interpret this image's header or data"], "recognized"),
    (lambda: KeyError("spacing"), ["unexpected error (KeyError)", "please report"], "spacing"),
])
def test_failure_reason_is_a_sentence_never_the_raw_text(make, words, raw):
    exc = make()
    reason = errors.failure_reason(exc, "/bids/sub-01/anat/sub-01_T2w.nii.gz")
    assert reason.startswith("/bids/sub-01/anat/sub-01_T2w.nii.gz: ") and "\n" not in reason
    assert all(w in reason for w in words), reason
    if raw is not None:
        assert raw not in reason, reason


def test_failure_reason_keeps_our_own_messages():
    exc = InputImageError("a.nii: image is all zero")
    assert errors.failure_reason(exc, "a.nii") == "a.nii: image is all zero"


def test_task_plans_and_check_image_on_a_header_only(tmp_path):
    from bidsapp.models import locate

    plans = guards.task_plans({"spinalcord": locate("spinalcord", demo=True), "t2": locate("t2", demo=True)})
    assert [(p.name, p.kind) for p in plans] == [("spinalcord", "nnunet"), ("t2", "legacy")]
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((30, 30, 20), np.float32), np.diag([15.0, 15.0, 15.0, 1.0])), path)
    img = nib.load(str(path))
    with pytest.raises(InputImageError, match="x.nii.gz: voxel size 15x15x15 mm"):
        guards.check_image(path, img, plans, budget=None)
    est = guards.check_image(path, img, plans, budget=None, allow_unusual=True)
    assert est.model == "spinalcord" and est.grid == (150, 450, 450) and not img.in_memory
    assert memory.model_grid(img.shape, (15.0,) * 3, img.affine, plans[1]) == (900, 900, 20)
