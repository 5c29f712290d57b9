"""SCT-style single-image use: ``python -m bidsapp.segment -i t2.nii.gz -c t2`` and SCT 7 default names."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bidsapp import segment
from bidsapp.demo.phantom import Grid, make_anatomy, make_phantom


@pytest.fixture(scope="module")
def t2_image(tmp_path_factory):
    """A sagittal T2w phantom written as ``t2.nii.gz`` (SCT's sample name), with its ground truth."""
    rng = np.random.default_rng(880_001)
    ph = make_phantom("T2w", rng=rng, anatomy=make_anatomy(rng, n_lesions=3, z_range=(-25, 25)),
                      grid=Grid(orientation=("P", "I", "R"), voxel_size=(0.8, 0.8, 0.8)))
    folder = tmp_path_factory.mktemp("sct")
    nib.save(ph.image, folder / "t2.nii.gz")
    return folder / "t2.nii.gz", ph


def _only_files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(("argv", "name"), [
    (["-c", "t2"], "t2_lesionseg.nii.gz"),
    (["-t", "t2"], "t2_lesionseg.nii.gz"),
    (["-t", "lesion_ms"], "t2_lesion_seg.nii.gz"),
    (["-t", "seg_ms_lesion"], "t2_lesion_seg.nii.gz"),
    (["-t", "spinalcord"], "t2_seg.nii.gz"),
])
def test_default_output_names_follow_sct(tmp_path, argv, name):
    args = segment.build_parser().parse_args(["-i", str(tmp_path / "t2.nii.gz"), *argv])
    segment.fill_defaults(args)
    assert args.output == tmp_path / name
    args = segment.build_parser().parse_args(["-i", "t2.nii", *argv, "-ofolder", str(tmp_path / "out")])
    segment.fill_defaults(args)
    assert args.output == tmp_path / "out" / name


@pytest.mark.parametrize("argv", [
    ["-c", "t1"],                      # not a legacy model
    ["-c", "t2", "-t", "lesion_ms"],   # one or the other
    [],                                # neither
])
def test_bad_legacy_arguments_exit_64(tmp_path, argv, capsys):
    image = tmp_path / "t2.nii.gz"
    image.write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        segment.main(["-i", str(image), *argv])
    assert exc.value.code == 64


def test_sct_style_legacy_run_writes_only_the_mask(t2_image, tmp_path):
    image, ph = t2_image
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "t2.nii.gz").write_bytes(image.read_bytes())
    assert segment.main(["-i", str(folder / "t2.nii.gz"), "-c", "t2", "--demo", "--device", "cpu"]) == 0
    assert _only_files(folder) == ["t2.nii.gz", "t2_lesionseg.nii.gz"]     # no intermediate files
    out = nib.load(folder / "t2_lesionseg.nii.gz")
    assert out.shape == ph.image.shape and np.array_equal(out.affine, ph.image.affine)
    assert out.get_data_dtype() == np.uint8
    assert int(out.header["qform_code"]) == int(ph.image.header["qform_code"])
    assert int(out.header["sform_code"]) == int(ph.image.header["sform_code"])
    truth = np.asanyarray(ph.lesion.dataobj).astype(bool)
    mask = np.asanyarray(out.dataobj).astype(bool)
    # the centreline comes from the demo spinalcord model here
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) >= 0.6


def test_keep_intermediate_and_qc(t2_image, tmp_path):
    image, _ = t2_image
    out, qc = tmp_path / "out", tmp_path / "qc"
    code = segment.main(["-i", str(image), "-c", "t2", "--demo", "--device", "cpu", "-ofolder", str(out),
                         "-r", "0", "-qc", str(qc)])
    assert code == 0
    assert _only_files(out) == ["t2_lesionseg.nii.gz", "t2_seg.nii.gz"]
    cord = nib.load(out / "t2_seg.nii.gz")
    assert set(np.unique(np.asanyarray(cord.dataobj))) == {0, 1}
    pictures = _only_files(qc)
    assert pictures and all(p.startswith("t2_t2_") and p.endswith(".png") for p in pictures)
    assert all((qc / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
