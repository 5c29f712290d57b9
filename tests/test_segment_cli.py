"""``python -m bidsapp.segment``: parity with nnunetv2 through NIfTI files, exact output grids,
output types, and exit codes with one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from engine_models import build_folder, dice, make_image, oracle_predictor, oracle_probabilities

from bidsapp import segment

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_folder(tmp_path_factory.mktemp("cli_model"), "PlainConvUNet", folds=(0, 1))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_inputs")
    paths = {}
    for i, case in enumerate(("las", "resample")):
        paths[case] = root / f"{case}.nii.gz"
        nib.save(make_image(case, seed=10 + i), paths[case])
    return paths


def _assert_same_grid(out: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out.affine, ref.affine)
    q, qc = out.header.get_qform(coded=True)
    s, sc = out.header.get_sform(coded=True)
    assert (int(qc), int(sc)) == tuple(int(c) for c in (ref.header["qform_code"], ref.header["sform_code"]))
    np.testing.assert_allclose(q, ref.header.get_qform(), atol=1e-6)
    np.testing.assert_allclose(s, ref.header.get_sform(), atol=1e-6)


def test_cli_subprocess_matches_nnunetv2(folder, inputs, tmp_path):
    """The real command on a non-RAS (PSR) image that needs resampling, vs nnUNetPredictor."""
    src = inputs["resample"]
    mask_path, soft_path = tmp_path / "mask.nii.gz", tmp_path / "prob.nii.gz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bidsapp.segment", "-i", str(src), "-t", str(folder),
                           "-o", str(mask_path), "--soft", str(soft_path), "--device", "cpu",
                           "--threads", "1"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr
    img = nib.load(src)
    ref = oracle_probabilities(oracle_predictor(folder, False), img)
    mask, soft = nib.load(mask_path), nib.load(soft_path)
    _assert_same_grid(mask, img)
    _assert_same_grid(soft, img)
    assert mask.get_data_dtype() == np.uint8 and soft.get_data_dtype() == np.float32
    m, p = np.asanyarray(mask.dataobj), np.asanyarray(soft.dataobj)
    assert set(np.unique(m)) <= {0, 1} and 0.0 <= p.min() and p.max() <= 1.0
    assert dice(m, ref.argmax(0) == 1) >= 0.99
    assert np.abs(p - ref[1]).mean() <= 0.01


@pytest.mark.parametrize("tta", [False, True])
def test_cli_in_process_las(folder, inputs, tmp_path, tta):
    src = inputs["las"]
    out = tmp_path / "m.nii"
    argv = ["-i", str(src), "-t", str(folder), "-o", str(out), "--soft", str(tmp_path / "p.nii.gz"),
            "--folds", "0", "1", "--device", "cpu"] + (["--tta"] if tta else [])
    assert segment.main(argv) == 0
    img = nib.load(src)
    ref = oracle_probabilities(oracle_predictor(folder, tta), img)
    _assert_same_grid(nib.load(out), img)
    assert dice(np.asanyarray(nib.load(out).dataobj), ref.argmax(0) == 1) >= 0.99
    assert np.abs(np.asanyarray(nib.load(tmp_path / "p.nii.gz").dataobj) - ref[1]).mean() <= 0.01
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("argv,code,message", [
    ([], 64, "required"),
    (["-i", "{img}", "-t", "lesion_ms", "-o", "{tmp}/out.png"], 64, "must end with .nii or .nii.gz"),
    (["-i", "{img}", "-t", "no_such_task", "-o", "{tmp}/o.nii.gz"], 64, "unknown task"),
    (["-i", "{img}", "-t", "{model}", "-o", "{tmp}/o.nii.gz", "--folds", "x"], 64, "fold must be"),
    (["-i", "{img}", "-t", "{model}", "-o", "{img}"], 64, "equals the input"),
    (["-i", "{tmp}/missing.nii.gz", "-t", "{model}", "-o", "{tmp}/o.nii.gz"], 66, "no such file"),
    (["-i", "{img}", "-t", "{tmp}/no_model_here", "-o", "{tmp}/o.nii.gz"], 66, "no such model folder"),
    (["-i", "{bad}", "-t", "{model}", "-o", "{tmp}/o.nii.gz"], 65, "bad.nii.gz"),
    (["-i", "{img}", "-t", "{model}", "-o", "{tmp}/o.nii.gz", "--folds", "7"], 1,
     "fold_7/checkpoint_final.pth: missing"),
])
def test_exit_codes(folder, inputs, tmp_path, capsys, argv, code, message):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    fill = {"img": str(inputs["las"]), "tmp": str(tmp_path), "model": str(folder), "bad": str(bad)}
    argv = [a.format(**fill) for a in argv]
    try:
        got = segment.main(argv)
    except SystemExit as exc:  # argparse errors
        got = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code
    assert message in err[-1]
    assert not (tmp_path / "o.nii.gz").exists()


def test_corrupt_checkpoint_fails_with_one_line(folder, inputs, tmp_path, capsys):
    import shutil

    broken = tmp_path / folder.name
    shutil.copytree(folder, broken)
    (broken / "fold_1" / "checkpoint_final.pth").write_bytes(b"PK\x03\x04 truncated")
    rc = segment.main(["-i", str(inputs["las"]), "-t", str(broken), "-o", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert "fold_1/checkpoint_final.pth: cannot read checkpoint" in err[0]


def test_aliases_and_parser_is_extendable():
    assert segment.resolve_task("seg_ms_lesion")[0] == "lesion_ms"
    assert segment.resolve_task("seg_sc_contrast_agnostic")[0] == "spinalcord"
    assert segment.resolve_task("seg_ms_lesion_mp2rage")[0] == "lesion_ms_mp2rage"
    parser = segment.build_parser()  # the legacy models' -c (sct_deepseg_lesion), see test_legacy_cli.py
    assert parser.parse_args(["-i", "a.nii", "-c", "t2", "-o", "b.nii"]).contrast == "t2"
