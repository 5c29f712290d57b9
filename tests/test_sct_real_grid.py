"""Our DEFAULT outputs against the REAL SCT 7.3 over a grid of geometries (``make test-sct``; issue 22).

Every nnU-Net task of SCT on the same release-shaped random-weight checkpoints and the same files
(tests/sct_grid.py): ``lesion_ms`` (mask, and the ``-soft-ms-lesion`` map), ``spinalcord``, and
``lesion_ms_mp2rage`` against SCT's own three-command recipe on 1 mm images. Random weights amplify any
arithmetic difference, so the figures are strict: Dice >= 0.999, soft mean |d| <= 0.001; the count of
differing voxels is printed (goal zero) and, with ``$CORDLESION_SCT_GRID_JSONL`` set, appended there as
one JSON line per comparison (bench/sct_grid_table.py makes the README table from it). Also: the default
run limited to AVX2 agrees with the unlimited one and with SCT.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp import pipelines
from bidsapp.pipelines import RunOptions
from tests import sct_grid as sg
from tests.sct_real import save, sct  # noqa: F401 - session fixture
from tests.test_sct_real_box import _box_in

pytestmark = pytest.mark.sct_oracle

RESULTS_ENV = "CORDLESION_SCT_GRID_JSONL"
REPO = Path(__file__).resolve().parents[1]
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
MP2RAGE_CASES = [name for name, case in sg.CASES.items() if case.mp2rage]
#: the soft map costs SCT a second lesion_ms run: three geometries (the arithmetic is the mask's)
SOFT_CASES = ["RAS 0.8x0.8x2.4 f32", "PSR 0.7x0.7x2.1 f32", "oblique 1 mm 9 deg i16"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Models, one folder per case (the image file, SCT's and our outputs) and caches of both sides."""
    root = tmp_path_factory.mktemp("grid")
    return {"models": sg.build_models(root / "models"), "root": root, "sct": {}, "ours": {}}


def _case_dir(grid, case: str) -> Path:
    d = grid["root"] / case.replace(" ", "_")
    if not d.exists():
        save(sg.image(sg.CASES[case]), d / "in.nii.gz")
    return d


def _sct_out(grid, sct, task: str, case: str, *options: str) -> nib.Nifti1Image:  # noqa: F811 - fixture
    key = (task, case, options)
    if key not in grid["sct"]:
        d = _case_dir(grid, case)
        out = d / f"sct_{task}{'_soft' if options else ''}.nii.gz"
        grid["sct"][key] = sct.deepseg(task, grid["models"].zips[task], d / "in.nii.gz", out, *options)
    return grid["sct"][key]


def _ours(grid, task: str, case: str) -> pipelines.SegmentationResult:
    """Our outputs with run.py's defaults: precision and backend "auto" (whatever auto resolves to)."""
    key = (task, case)
    if key not in grid["ours"]:
        img = nib.load(str(_case_dir(grid, case) / "in.nii.gz"))
        grid["ours"][key] = pipelines.segment(img, task=task, models=grid["models"].folders,
                                              options=RunOptions(device="cpu", backend="auto"))
    return grid["ours"][key]


def _record(what: str, case: str, row: dict) -> dict:
    row = {"what": what, "case": case, **row}
    print(json.dumps(row))
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
    return row


def _arr(img: nib.Nifti1Image) -> np.ndarray:
    return np.asanyarray(img.dataobj)


def _assert_header_is_scts(ours: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    for name in ("get_qform", "get_sform"):
        a, a_code = getattr(ours.header, name)(coded=True)
        b, b_code = getattr(ref.header, name)(coded=True)
        assert int(a_code) == int(b_code), (name, int(a_code), int(b_code))
        np.testing.assert_allclose(a, b, atol=1e-4)


def _assert_masks(row: dict) -> None:
    assert 0.002 < row["foreground"] < 0.9, "the phantom must give a real mask"
    assert row["dice"] >= 0.999, f"{row['differing']} voxels differ"


@pytest.mark.parametrize("case", list(sg.CASES))
def test_lesion_ms_mask(case, grid, sct):  # noqa: F811 - fixture
    ref = _sct_out(grid, sct, "lesion_ms", case)
    ours = _ours(grid, "lesion_ms", case).mask
    row = _record("lesion_ms mask", case, sg.agreement(_arr(ours), _arr(ref)))
    _assert_masks(row)
    if not sg.CASES[case].codes == ("R", "A", "S"):  # SCT rewrites the header only when it reorients
        _assert_header_is_scts(ours, ref)


@pytest.mark.parametrize("case", SOFT_CASES)
def test_lesion_ms_soft_map(case, grid, sct):  # noqa: F811 - fixture
    ref = _sct_out(grid, sct, "lesion_ms", case, "-soft-ms-lesion")
    ours = _ours(grid, "lesion_ms", case).probseg
    assert ours is not None and ref.get_data_dtype().kind == "f"
    row = _record("lesion_ms soft", case, sg.agreement(_arr(ours), _arr(ref)))
    assert row["mean_abs"] <= 0.001, row
    if not sg.CASES[case].codes == ("R", "A", "S"):
        _assert_header_is_scts(ours, ref)


@pytest.mark.parametrize("case", list(sg.CASES))
def test_spinalcord(case, grid, sct):  # noqa: F811 - fixture
    ref = _sct_out(grid, sct, "spinalcord", case)
    row = _record("spinalcord", case, sg.agreement(_arr(_ours(grid, "spinalcord", case).mask), _arr(ref)))
    _assert_masks(row)


@pytest.mark.parametrize("case", MP2RAGE_CASES)
def test_mp2rage_is_scts_three_commands(case, grid, sct, tmp_path):  # noqa: F811 - fixture
    """SCT's recipe: ``sct_deepseg spinalcord``, ``sct_crop_image -m SEG -dilate 30x30x5``,
    ``sct_deepseg lesion_ms_mp2rage`` on the crop; ours: one ``lesion_ms_mp2rage`` run."""
    d = _case_dir(grid, case)
    seg = _sct_out(grid, sct, "spinalcord", case)
    seg_path = save(seg, tmp_path / "seg.nii.gz")
    crop = tmp_path / "crop.nii.gz"
    sct.run("sct_crop_image", "-i", d / "in.nii.gz", "-m", seg_path, "-dilate", "30x30x5", "-o", crop)
    ref = sct.deepseg("lesion_ms_mp2rage", grid["models"].zips["lesion_ms_mp2rage"], crop,
                      tmp_path / "mp2rage.nii.gz")
    stored = nib.load(str(d / "in.nii.gz"))
    box = _box_in(nib.load(str(crop)), stored.affine)
    ours = _ours(grid, "lesion_ms_mp2rage", case)
    assert ours.provenance.crop.box_voxels == [[s.start, s.stop] for s in box]
    mask = _arr(ours.mask).astype(bool)
    outside = mask.copy()
    outside[box] = False
    assert not outside.any()
    row = _record("lesion_ms_mp2rage recipe", case, sg.agreement(mask[box], _arr(ref)))
    _assert_masks(row)


AVX2_SCRIPT = """
import sys, nibabel as nib, numpy as np
from bidsapp import pipelines
from bidsapp.pipelines import RunOptions
task, image, out, *models = sys.argv[1:]
folders = dict(m.split("=", 1) for m in models)
res = pipelines.segment(nib.load(image), task=task, models=folders,
                        options=RunOptions(device="cpu", backend="auto"))
np.save(out, np.asanyarray(res.mask.dataobj))
"""


@pytest.mark.parametrize("case", ["PSR 0.7x0.7x2.1 f32"])
def test_default_limited_to_avx2_is_the_same_mask(case, grid, sct, tmp_path):  # noqa: F811 - fixture
    """A run's mask does not depend on the CPU: the default limited to AVX2 (oneDNN and ATen) agrees with
    the unlimited default, and both with SCT."""
    folders = [f"{k}={v}" for k, v in grid["models"].folders.items()]
    out = tmp_path / "avx2.npy"
    image = str(_case_dir(grid, case) / "in.nii.gz")
    env = {**os.environ, **AVX2, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", AVX2_SCRIPT, "lesion_ms", image, str(out), *folders], check=True,
                   cwd=REPO, env=env, timeout=900)
    avx2 = np.load(out)
    native = _record("lesion_ms AVX2 vs native", case,
                     sg.agreement(avx2, _arr(_ours(grid, "lesion_ms", case).mask)))
    ref = _sct_out(grid, sct, "lesion_ms", case)
    vs_sct = _record("lesion_ms AVX2 vs SCT", case, sg.agreement(avx2, _arr(ref)))
    assert native["dice"] >= 0.999 and vs_sct["dice"] >= 0.999, (native, vs_sct)
