"""NIfTI loading with input checks, and building images on a reference grid.

Only this module opens input images. Orientation and axis-order conversion live in ``orientation.py``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import InputImageError

log = logging.getLogger(__name__)


def load_image(path: str | Path) -> nib.Nifti1Image:
    """Load a 3D NIfTI image, check it is usable, and return it with its data in memory.

    Raises :class:`InputImageError` with a one-line message ``"<path>: <reason>"``.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputImageError(f"{path}: cannot read NIfTI image ({exc})") from exc
    if data.ndim != 3:
        raise InputImageError(f"{path}: expected a 3D image, got {data.ndim}D with shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputImageError(f"{path}: image contains NaN or infinite values")
    return nib.Nifti1Image(data, img.affine, img.header)


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
