"""The voxel spacing SCT 7.3 hands nnU-Net, which decides nnU-Net's resampling (``> 3`` anisotropy,
target shapes).

SCT's ``Image`` (``spinalcordtoolbox/image.py``) reads the zooms as nibabel's float32 and rounds each
to the digits its float32 spacing allows (``get_dimension``): 2.4000000954 -> 2.4, so that 2.4 / 0.8 is
exactly 3 (not anisotropic) where the raw float32 ratio is 3.0000001 (anisotropic). When the image is
not already in the model's orientation, ``change_orientation`` rewrites the header with
``set_qform(affine)``, whose zooms are the affine's column norms (stored as float32): the spacing is
then read from those, not from the original pixdim (they differ on oblique or hand-made headers).
"""
from __future__ import annotations

import nibabel as nib
import numpy as np

from .. import orientation as ori

__all__ = ["sct_spacing", "sct_zoom"]


def sct_zoom(zoom: float) -> float:
    """SCT 7.3 ``get_dimension``: a float32 zoom rounded to the digits its float32 spacing allows."""
    z32 = np.float32(zoom)
    exponent = int(np.floor(np.log10(np.abs(np.spacing(z32)))))
    return round(float(z32), -exponent - 1)


def sct_spacing(img: nib.Nifti1Image, reo: ori.Reorientation) -> tuple[float, float, float]:
    """The spacing of the reoriented array (``reo`` applied to ``img``) as SCT's ``Image.dim`` gives it
    after ``change_orientation`` (identity ``reo``: no change, the header's zooms)."""
    if reo.is_identity:
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
    else:  # nibabel's set_qform: pixdim = column norms of the (reoriented) best affine, in float32
        rzs = np.asarray(img.header.get_best_affine(), float)[:3, :3]
        zooms = [float(z) for z in np.sqrt(np.sum(rzs * rzs, axis=0)).astype(np.float32)]
        # a reorientation permutes and flips columns: their norms are the same numbers, permuted
    return tuple(sct_zoom(z) for z in reo.zooms(zooms))  # type: ignore[return-value]
