"""imaging.load_image input checks (one test per bad-input case, docs/RELIABILITY.md) and like()."""
from __future__ import annotations

import gzip
import logging
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp import imaging
from bidsapp.errors import InputImageError
from bidsapp.imaging import like, load_image
from tests.unprivileged import run_unprivileged, shared_folder

OBLIQUE = np.array([[0.9, -0.3, 0.1, -20.0],
                    [0.3, 0.95, 0.0, 15.0],
                    [-0.1, 0.0, 2.9, 40.0],
                    [0.0, 0.0, 0.0, 1.0]])


def _volume(shape=(6, 7, 5), dtype=np.float32) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) % 50 + 1).astype(dtype)


def _save(path: Path, data: np.ndarray, affine=None) -> Path:
    img = nib.Nifti1Image(data, np.diag([0.8, 0.9, 3.0, 1.0]) if affine is None else affine)
    img.to_filename(str(path))
    return path


def _patch_header(path: Path, **fields) -> Path:
    """Rewrite header fields in place, bypassing nibabel's save-time consistency fixes."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = bytearray(fh.read())
    hdr = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(bytes(raw)))
    for key, value in fields.items():
        hdr[key] = value
    raw[:348] = hdr.binaryblock
    with opener(path, "wb") as fh:
        fh.write(bytes(raw))
    return path


def _refused(path: Path, *words: str) -> str:
    with pytest.raises(InputImageError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


# ---- good inputs ---------------------------------------------------------------------------------

def test_good_image_roundtrip_float32(tmp_path):
    src = _save(tmp_path / "a.nii.gz", _volume(dtype=np.int16), OBLIQUE)
    img = load_image(src)
    assert img.get_data_dtype() == np.float32 and img.dataobj.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(img.dataobj), _volume(dtype=np.float32))
    np.testing.assert_allclose(img.affine, OBLIQUE)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.float64, np.float32])
def test_int_and_float_types_become_float32(tmp_path, dtype):
    src = _save(tmp_path / "t.nii.gz", _volume(dtype=dtype))
    img = load_image(src)
    assert np.asarray(img.dataobj).dtype == np.float32
    np.testing.assert_array_equal(np.asarray(img.dataobj), _volume(dtype=np.float32))


def test_scaled_int_applies_slope_and_intercept(tmp_path):
    src = _save(tmp_path / "s.nii", _volume(dtype=np.int16))
    _patch_header(src, scl_slope=0.5, scl_inter=10.0)
    data = np.asarray(load_image(src).dataobj)
    np.testing.assert_allclose(data, _volume() * 0.5 + 10.0)


def test_oblique_affine_kept_and_output_on_input_grid(tmp_path):
    src = _save(tmp_path / "o.nii.gz", _volume(), OBLIQUE)
    img = load_image(src)
    out = like(img, (np.asarray(img.dataobj) > 20).astype(np.uint8), np.uint8)
    out.to_filename(str(tmp_path / "mask.nii.gz"))
    back = nib.load(str(tmp_path / "mask.nii.gz"))
    np.testing.assert_allclose(back.affine, OBLIQUE, atol=1e-5)
    assert back.shape == img.shape
    assert back.header.get_qform(coded=True)[1] == nib.load(str(src)).header.get_qform(coded=True)[1]
    assert back.header.get_sform(coded=True)[1] == nib.load(str(src)).header.get_sform(coded=True)[1]


def test_singleton_4d_is_squeezed(tmp_path):
    src = _save(tmp_path / "s4.nii.gz", _volume()[..., None])
    img = load_image(src)
    assert img.shape == (6, 7, 5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), _volume())


def test_qform_sform_disagree_uses_sform_and_warns(tmp_path, caplog):
    src = _save(tmp_path / "qs.nii.gz", _volume())
    img = nib.load(str(src))
    shifted = img.affine.copy()
    shifted[:3, 3] += [5.0, 0.0, 0.0]
    img.set_sform(shifted, 2)
    img.set_qform(np.diag([0.8, 0.9, 3.0, 1.0]), 1)
    img.to_filename(str(src))
    with caplog.at_level(logging.WARNING, logger="bidsapp.imaging"):
        out = load_image(src)
    np.testing.assert_allclose(out.affine, shifted)
    assert any("qform and sform disagree by up to 5.0 mm" in r.getMessage() for r in caplog.records)
    assert out.header.get_qform(coded=True)[1] == 1 and out.header.get_sform(coded=True)[1] == 2


# ---- the file itself -----------------------------------------------------------------------------

def test_missing_file(tmp_path):
    _refused(tmp_path / "nope.nii.gz", "file not found")


def test_zero_bytes(tmp_path):
    src = tmp_path / "z.nii.gz"
    src.write_bytes(b"")
    _refused(src, "empty file (0 bytes)")


def test_not_gzip_despite_gz(tmp_path):
    src = _save(tmp_path / "plain.nii", _volume())
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(src.read_bytes())
    _refused(fake, "not gzip-compressed despite the .gz extension")


def test_gzip_named_nii(tmp_path):
    src = _save(tmp_path / "c.nii.gz", _volume())
    fake = tmp_path / "c2.nii"
    fake.write_bytes(src.read_bytes())
    _refused(fake, "gzip-compressed but named .nii")


@pytest.mark.parametrize("keep", [0.5, 0.9, -4])
def test_truncated_nii_gz(tmp_path, keep):
    src = _save(tmp_path / "t.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32))
    raw = src.read_bytes()
    cut = raw[:keep] if isinstance(keep, int) else raw[: int(len(raw) * keep)]
    src.write_bytes(cut)
    _refused(src, "truncated or corrupt gzip data")


def test_corrupt_gzip_crc(tmp_path):
    src = _save(tmp_path / "crc.nii.gz", _volume())
    raw = bytearray(src.read_bytes())
    raw[-8] ^= 0xFF  # CRC32 in the gzip trailer: nibabel alone would never notice
    src.write_bytes(bytes(raw))
    _refused(src, "truncated or corrupt gzip data")


def test_truncated_plain_nii(tmp_path):
    src = _save(tmp_path / "t.nii", _volume())
    src.write_bytes(src.read_bytes()[:-20])
    _refused(src, "truncated file")


def test_garbage_header(tmp_path):
    src = tmp_path / "g.nii"
    src.write_bytes(os.urandom(600))
    _refused(src, "not a readable NIfTI header")


def test_wrong_extension(tmp_path):
    src = _save(tmp_path / "a.nii", _volume())
    other = tmp_path / "a.img"
    other.write_bytes(src.read_bytes())
    _refused(other, "not a NIfTI file name")


def test_directory_is_not_a_regular_file(tmp_path):
    src = tmp_path / "dir.nii.gz"
    src.mkdir()
    _refused(src, "not a regular file")


def test_fifo_is_refused_without_blocking(tmp_path):
    src = tmp_path / "pipe.nii.gz"
    os.mkfifo(src)
    _refused(src, "not a regular file")


_LOAD_AS_USER = """
import sys
from bidsapp.errors import InputImageError
from bidsapp.imaging import load_image
try:
    load_image(sys.argv[1])
except InputImageError as exc:
    print(exc)
    sys.exit(3)
"""


def test_permission_denied():
    """A file its reader may not read, for real: as an unprivileged user (root reads anything, and CI runs
    as root)."""
    with shared_folder() as base:
        src = _save(base / "p.nii.gz", _volume())
        src.chmod(0o000)
        proc = run_unprivileged([sys.executable, "-c", _LOAD_AS_USER, src], timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout == f"{src}: permission denied (check the file's owner and mode)\n"


def test_broken_symlink(tmp_path):
    link = tmp_path / "l.nii.gz"
    link.symlink_to(tmp_path / "gone.nii.gz")
    _refused(link, "broken symbolic link")


def test_broken_git_annex_symlink_hints_datalad_get(tmp_path):
    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    link = anat / "sub-01_T2w.nii.gz"
    link.symlink_to("../../.git/annex/objects/Xk/3q/MD5E-s1--abc.nii.gz/MD5E-s1--abc.nii.gz")
    message = _refused(link, "git-annex content not present", f"datalad get {link}")
    assert "broken symbolic link" not in message


def test_symlink_to_valid_file_is_followed(tmp_path):
    src = _save(tmp_path / "real.nii.gz", _volume())
    link = tmp_path / "link.nii.gz"
    link.symlink_to(src)
    assert load_image(link).shape == (6, 7, 5)


# ---- the header ----------------------------------------------------------------------------------

def test_2d_image(tmp_path):
    _refused(_save(tmp_path / "2d.nii.gz", _volume()[:, :, 0]), "expected a 3D image, got 2D")


def test_4d_image(tmp_path):
    _refused(_save(tmp_path / "4d.nii.gz", np.stack([_volume()] * 3, axis=-1)),
             "expected a 3D image, got 4D", "extract one volume")


def test_rgb_refused(tmp_path):
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = 200
    _refused(_save(tmp_path / "rgb.nii.gz", rgb), "RGB/structured data type", "greyscale")


def test_complex_refused(tmp_path):
    _refused(_save(tmp_path / "cx.nii.gz", _volume().astype(np.complex64)), "not supported")


def test_huge_header_refused_before_allocating(tmp_path, monkeypatch):
    # The file holds 6x7x5 voxels but the header claims 4000^3: refused from the header alone.
    src = _patch_header(_save(tmp_path / "big.nii.gz", _volume()), dim=[3, 4000, 4000, 4000, 1, 1, 1, 1])
    monkeypatch.setattr(imaging, "_read_voxels", lambda *a: pytest.fail("voxels read before the check"))
    _refused(src, "header asks for 64000000000 voxels", "CORDLESION_MAX_VOXELS")


def test_voxel_limit_is_configurable(tmp_path, monkeypatch):
    src = _save(tmp_path / "a.nii.gz", _volume())
    monkeypatch.setenv(imaging.MAX_VOXELS_ENV, "100")
    _refused(src, "header asks for 210 voxels", "more than the limit 100")
    monkeypatch.setenv(imaging.MAX_VOXELS_ENV, "1000")
    assert load_image(src).shape == (6, 7, 5)
    assert imaging.max_voxels() == 1000
    monkeypatch.delenv(imaging.MAX_VOXELS_ENV)
    assert imaging.max_voxels() == imaging.DEFAULT_MAX_VOXELS == 512 * 512 * 1024


@pytest.mark.parametrize("size", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_voxel_size(tmp_path, size):
    src = _save(tmp_path / "v.nii.gz", _volume())
    _patch_header(src, pixdim=[1.0, size, 0.9, 3.0, 1.0, 1.0, 1.0, 1.0])
    _refused(src, "voxel sizes must be positive and finite")


def test_singular_sform_refused(tmp_path):
    src = _save(tmp_path / "sing.nii.gz", _volume())
    _patch_header(src, srow_x=[0.0, 0.0, 0.0, 0.0])
    _refused(src, "affine is singular")


# ---- the voxels ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path, bad):
    data = _volume()
    data[1, 2, 3] = bad
    message = _refused(_save(tmp_path / "nf.nii.gz", data), "image contains")
    assert ("1 NaN" in message) == bool(np.isnan(bad))


def test_float64_beyond_float32_range(tmp_path):
    data = _volume(dtype=np.float64)
    data[0, 0, 0] = 1e300
    _refused(_save(tmp_path / "big64.nii.gz", data), "1 infinite")


def test_all_zero(tmp_path):
    _refused(_save(tmp_path / "zero.nii.gz", np.zeros((5, 5, 5), np.int16)), "image is all zero")


# ---- like ----------------------------------------------------------------------------------------

def test_like_keeps_grid_and_codes(tmp_path):
    ref = nib.Nifti1Image(_volume(), OBLIQUE)
    ref.set_qform(OBLIQUE, 1)
    ref.set_sform(OBLIQUE, 4)
    out = like(ref, np.ones(ref.shape), np.uint8)
    assert out.get_data_dtype() == np.uint8
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 4
    np.testing.assert_allclose(out.affine, OBLIQUE)
    with pytest.raises(ValueError):
        like(ref, np.ones((2, 2, 2)), np.uint8)


def test_nifti2_loads(tmp_path):
    src = tmp_path / "n2.nii.gz"
    nib.Nifti2Image(_volume(dtype=np.int16), OBLIQUE).to_filename(str(src))
    img = load_image(src)
    assert isinstance(img, nib.Nifti2Image)
    np.testing.assert_array_equal(np.asarray(img.dataobj), _volume())
    np.testing.assert_allclose(img.affine, OBLIQUE)
