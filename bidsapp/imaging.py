"""NIfTI loading with input checks, and building images on a reference grid.

Only this module opens input images. Orientation and axis-order conversion live in ``orientation.py``.

``load_image`` refuses every input it cannot process faithfully with one line ``"<path>: <reason>"``
(:class:`InputImageError`), checking the cheap things first: the file itself (missing, broken symlink or
git-annex link, not a regular file, empty, unreadable, wrong compression), then the header (dimensions,
data type, voxel count, voxel sizes, affine) BEFORE any voxel is read, then the voxels (full gzip CRC
check, finite, not all zero). docs/RELIABILITY.md lists each case with its test.
"""
from __future__ import annotations

import gzip
import logging
import os
import stat
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import InputImageError

log = logging.getLogger(__name__)

#: Largest number of voxels accepted (512 x 512 x 1024: 1 GiB as float32). Larger headers are refused
#: before any voxel is read, so a corrupt or hostile header cannot make us allocate terabytes.
#: Override with the environment variable ``CORDLESION_MAX_VOXELS``.
DEFAULT_MAX_VOXELS = 512 * 512 * 1024
MAX_VOXELS_ENV = "CORDLESION_MAX_VOXELS"
#: qform and sform (both coded) disagreeing by more than this many mm at a corner of the field of view
#: is reported as a warning (the sform is used, as nibabel and SCT do).
QFORM_SFORM_TOLERANCE_MM = 1.0
_GZIP_MAGIC = b"\x1f\x8b"


def load_image(path: str | Path) -> nib.Nifti1Image:
    """Load a 3D NIfTI image, check it is usable, and return it with float32 data in memory.

    The returned image keeps the input's affine and header (qform, sform and their codes), so outputs
    built with :func:`like` land on the input grid. A 4D image whose 4th dimension is 1 is squeezed to
    3D. Integer and float64 data are converted to float32 (scaling applied).

    Raises :class:`InputImageError` with a one-line message ``"<path>: <reason>"``.
    """
    path = Path(path)
    header_img = read_header(path)
    shape = _checked_shape(path, header_img)
    data = _read_voxels(path, header_img).reshape(shape)
    _check_values(path, data)
    header = header_img.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)  # data are already scaled
    return type(header_img)(data, header_img.affine, header)


def read_header(path: str | Path) -> nib.Nifti1Image:
    """The file and header checks of :func:`load_image`, without reading any voxel: the returned image
    is nibabel's proxy (shape, header, affine), for guards that decide before any work (``guards``).

    Raises :class:`InputImageError` with a one-line message ``"<path>: <reason>"``.
    """
    path = Path(path)
    _check_file(path)
    header_img = _load_header(path)
    _checked_shape(path, header_img)
    _check_geometry(path, header_img)
    return header_img


def max_voxels() -> int:
    """The voxel-count limit: ``$CORDLESION_MAX_VOXELS`` if set to a positive integer, else the default."""
    value = os.environ.get(MAX_VOXELS_ENV, "")
    try:
        limit = int(value) if value else DEFAULT_MAX_VOXELS
    except ValueError:
        limit = DEFAULT_MAX_VOXELS
        log.warning("%s=%r is not an integer; using %d", MAX_VOXELS_ENV, value, limit)
    return limit if limit > 0 else DEFAULT_MAX_VOXELS


def _fail(path: Path, reason: str) -> InputImageError:
    return InputImageError(f"{path}: {reason}")


def _check_file(path: Path) -> None:
    """The file exists, is a regular non-empty readable file, and its compression matches its name."""
    name = path.name
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise _fail(path, "not a NIfTI file name (expected .nii or .nii.gz)")
    if path.is_symlink() and not path.exists():
        target = os.readlink(path)
        if ".git/annex/objects" in target.replace(os.sep, "/"):
            raise _fail(path, f"git-annex content not present (link to {target}); run `datalad get {path}`")
        raise _fail(path, f"broken symbolic link to {target}")
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise _fail(path, "file not found") from exc
    except OSError as exc:
        raise _fail(path, f"cannot access file ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(info.st_mode):  # a directory or a FIFO would block or fail deep inside nibabel
        raise _fail(path, "not a regular file")
    if info.st_size == 0:
        raise _fail(path, "empty file (0 bytes)")
    magic = _read_head(path, 2)
    if name.endswith(".gz") and magic != _GZIP_MAGIC:
        raise _fail(path, "not gzip-compressed despite the .gz extension (rename it to .nii?)")
    if not name.endswith(".gz") and magic == _GZIP_MAGIC:
        raise _fail(path, "gzip-compressed but named .nii (rename it to .nii.gz)")


def _read_head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except PermissionError as exc:
        raise _fail(path, "permission denied (check the file's owner and mode)") from exc
    except OSError as exc:
        raise _fail(path, f"cannot read file ({exc.strerror or exc})") from exc


def _load_header(path: Path) -> nib.Nifti1Image:
    """Header only: nibabel's proxy reads no voxel until asked."""
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for broken headers
        raise _fail(path, f"not a readable NIfTI header ({_one_line(exc)})") from exc
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise _fail(path, f"not a NIfTI-1/2 image ({type(img).__name__})")
    return img


def _checked_shape(path: Path, img: nib.Nifti1Image) -> tuple[int, int, int]:
    """Refuse non-scalar data types and non-3D shapes; refuse huge images before allocating."""
    dtype = img.header.get_data_dtype()
    if dtype.fields is not None:
        raise _fail(path, f"RGB/structured data type {dtype} is not supported;"
                          " convert it to a greyscale image")
    if dtype.kind not in "iuf":
        raise _fail(path, f"data type {dtype} is not supported (expected integers or floats)")
    shape = tuple(int(s) for s in img.shape)
    # A 4th dimension of 1 (some converters write 3D images as x,y,z,1) carries no information.
    if len(shape) == 4 and shape[3] == 1:
        log.info("%s: 4D image with a single volume, using it as 3D", path)
        shape = shape[:3]
    if len(shape) < 3:
        raise _fail(path, f"expected a 3D image, got {len(shape)}D with shape {shape}")
    if len(shape) > 3:
        raise _fail(path, f"expected a 3D image, got {len(shape)}D with shape {shape}"
                          " (extract one volume, e.g. with fslroi or nibabel)")
    if min(shape) < 1:
        raise _fail(path, f"empty image (shape {shape})")
    n_voxels = int(np.prod(shape, dtype=np.int64))
    limit = max_voxels()
    if n_voxels > limit:
        raise _fail(path, f"header asks for {n_voxels} voxels {shape}, more than the limit {limit}"
                          f" (raise it with {MAX_VOXELS_ENV} if this image is genuine)")
    return shape  # type: ignore[return-value]


def _check_geometry(path: Path, img: nib.Nifti1Image) -> None:
    """Voxel sizes positive and finite, affine invertible; warn when qform and sform disagree."""
    zooms = _raw_pixdim(path, img)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise _fail(path, f"voxel sizes must be positive and finite, header has {tuple(zooms.tolist())}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise _fail(path, "affine contains NaN or infinite values")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise _fail(path, "affine is singular (a voxel axis has zero length)")
    qform, qcode = img.header.get_qform(coded=True)
    sform, scode = img.header.get_sform(coded=True)
    if not qcode and not scode:
        log.warning("%s: qform_code and sform_code are both 0: orientation unknown, using the pixdim-only "
                    "affine", path)
    if qform is not None and sform is not None:
        gap = _corner_distance_mm(qform, sform, img.shape[:3])
        if gap > QFORM_SFORM_TOLERANCE_MM:
            log.warning("%s: qform and sform disagree by up to %.1f mm; using the sform (as nibabel and SCT"
                        " do), outputs keep both", path, gap)


def _raw_pixdim(path: Path, img: nib.Nifti1Image) -> np.ndarray:
    """pixdim[1:4] as stored: nibabel's checked header silently turns 0 into 1 and negatives into abs."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = type(img.header).from_fileobj(fh, check=False)
    except Exception as exc:  # already parsed once by nib.load: only I/O can fail here
        raise _fail(path, f"cannot read NIfTI header ({_one_line(exc)})") from exc
    return np.asarray(raw["pixdim"][1:4], dtype=np.float64)


def _corner_distance_mm(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance between the world positions of the field of view's 8 corners under a and b."""
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], dtype=np.float64).T
    return float(np.max(np.linalg.norm((a @ corners - b @ corners)[:3], axis=0)))


def _read_voxels(path: Path, header_img: nib.Nifti1Image) -> np.ndarray:
    """Read the whole file once, checking the gzip CRC, and return the scaled voxels as float32."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise _fail(path, f"cannot read file ({exc.strerror or exc})") from exc
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)  # checks CRC and length: nibabel alone reads only what it needs
        except (EOFError, OSError, zlib.error) as exc:
            raise _fail(path, f"truncated or corrupt gzip data ({_one_line(exc)})") from exc
    hdr = header_img.header
    needed = int(header_img.dataobj.offset) + int(np.prod(hdr.get_data_shape(), dtype=np.int64)) \
        * hdr.get_data_dtype().itemsize
    if len(raw) < needed:
        raise _fail(path, f"truncated file: {len(raw)} bytes of image data, the header needs {needed}")
    try:
        img = type(header_img).from_bytes(raw)
        with warnings.catch_warnings():  # float64 beyond the float32 range becomes inf: refused below
            warnings.simplefilter("ignore", RuntimeWarning)
            data = img.get_fdata(dtype=np.float32)
    except Exception as exc:  # corrupt data nibabel cannot decode
        raise _fail(path, f"cannot read voxel data ({_one_line(exc)})") from exc
    return np.ascontiguousarray(data, dtype=np.float32)


def _check_values(path: Path, data: np.ndarray) -> None:
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum()) - n_nan
        raise _fail(path, f"image contains {n_nan} NaN and {n_inf} infinite voxel values"
                          " (infinite may also mean values beyond the float32 range)")
    if not np.any(data):
        raise _fail(path, "image is all zero")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


#: affines closer than this (mm, and unitless for the direction cosines) are the same grid: a viewer that
#: saves the header again may round the float32 sform
AFFINE_TOLERANCE = 1e-3


def grid_mismatch(data_shape: tuple[int, ...], affine: np.ndarray, image: nib.Nifti1Image) -> str | None:
    """Why an array of ``data_shape`` with ``affine`` is not on ``image``'s grid (None when it is): the one
    rule of "on the image's grid" for every mask and label file read next to an image (same 3D shape,
    affines within :data:`AFFINE_TOLERANCE` element by element)."""
    shape = tuple(int(n) for n in image.shape[:3])
    if tuple(int(n) for n in data_shape[:3]) != shape:
        return (f"not on the image's grid: shape {'x'.join(map(str, data_shape[:3]))}, the image's is "
                f"{'x'.join(map(str, shape))}")
    gap = float(np.abs(np.asarray(affine, float) - np.asarray(image.affine, float)).max())
    if gap > AFFINE_TOLERANCE:
        return (f"not on the image's grid: its affine differs from the image's by up to {gap:.3g} mm "
                "(resampled, or saved in another space?)")
    return None


def same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image) -> bool:
    """Whether two images share one voxel grid (:func:`grid_mismatch` finds nothing)."""
    return grid_mismatch(tuple(a.shape[:3]), a.affine, b) is None


def like(reference: nib.Nifti1Image, data: np.ndarray, dtype: type | np.dtype) -> nib.Nifti1Image:
    """Return ``data`` as an image on the exact grid of ``reference``.

    Same shape and affine; qform, sform and their codes copied from the reference header, so the
    output overlays the input in every viewer. Scaling is reset (slope 1, intercept 0).
    """
    if tuple(data.shape) != tuple(reference.shape[:3]):
        raise ValueError(f"data shape {data.shape} differs from reference shape {reference.shape[:3]}")
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    out = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine, header)
    qform, qcode = reference.header.get_qform(coded=True)
    sform, scode = reference.header.get_sform(coded=True)
    out.set_qform(qform if qform is not None else reference.affine, int(qcode or 0))
    out.set_sform(sform if sform is not None else reference.affine, int(scode or 0))
    out.header.set_slope_inter(1.0, 0.0)
    return out


def like_sct(reference: nib.Nifti1Image, data: np.ndarray, dtype: type | np.dtype) -> nib.Nifti1Image:
    """:func:`like` with the header SCT 7.3's ``sct_deepseg`` writes (every mask and soft map we write that
    SCT also writes): qform AND sform both the reference's best affine (its sform where set), each keeping
    the reference's code, or code 2 ("aligned") where the reference had none. That is nibabel's
    ``set_qform``/``set_sform`` with ``code=None``, which SCT's ``change_orientation`` calls on the way into
    the model's orientation and back; we write it for every orientation (SCT keeps the input's header as is
    when the image is already in the model's orientation)."""
    out = like(reference, data, dtype)
    best = reference.header.get_best_affine()
    for setter, getter in ((out.set_qform, reference.header.get_qform),
                           (out.set_sform, reference.header.get_sform)):
        code = int(getter(coded=True)[1] or 0)
        setter(best, code or 2)
    return out
