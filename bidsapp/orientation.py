"""All orientation and axis-order conversion: SCT letters, nibabel axis codes, exact round trips.

SCT names an axis by where it points FROM, nibabel by where it points TO: SCT "LPI" (the default
for SCT's nnU-Net models) is nibabel ("R", "A", "S"), SCT "RPI" is ("L", "A", "S").

Example::

    >>> sct_to_axcodes("LPI")
    ('R', 'A', 'S')
    >>> data = np.arange(24).reshape(2, 3, 4)
    >>> affine = np.diag([-1.0, 1.0, 1.0, 1.0])            # LAS
    >>> ras, r = to_orientation(data, affine, ("R", "A", "S"))
    >>> bool((r.undo(ras) == data).all())
    True
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from nibabel import orientations as nio

_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


def sct_to_axcodes(sct: str) -> tuple[str, str, str]:
    """SCT orientation letters (``"LPI"``) -> nibabel axis codes (``("R", "A", "S")``)."""
    letters = str(sct).upper()
    if len(letters) != 3 or any(c not in _OPPOSITE for c in letters) or \
            len({_OPPOSITE[c] + c for c in letters} | {c + _OPPOSITE[c] for c in letters}) != 6:
        raise ValueError(f"not an SCT orientation: {sct!r} (expected 3 letters like 'LPI', one per axis)")
    return tuple(_OPPOSITE[c] for c in letters)  # type: ignore[return-value]


def axcodes_to_sct(axcodes: Sequence[str]) -> str:
    """nibabel axis codes (``("R", "A", "S")``) -> SCT orientation letters (``"LPI"``)."""
    return "".join(_OPPOSITE[str(c).upper()] for c in axcodes)


def sct_orientation(affine: np.ndarray) -> str:
    """SCT orientation letters of an image with this affine (``"LPI"`` for a RAS+ image)."""
    return axcodes_to_sct(nio.aff2axcodes(affine))


def _apply_ornt_last3(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """``nibabel.orientations.apply_orientation`` acting on the LAST three axes (leading axes kept).

    Flip input axes first, then put input axis i at output position ``ornt[i, 0]``.
    """
    lead = array.ndim - 3
    if lead < 0:
        raise ValueError(f"expected at least 3 dimensions, got shape {array.shape}")
    flips = tuple(lead + i for i in range(3) if ornt[i, 1] == -1)
    out = np.flip(array, axis=flips) if flips else array
    order = list(range(lead)) + [lead + int(i) for i in np.argsort(ornt[:, 0])]
    return np.transpose(out, order)


@dataclass(frozen=True)
class Reorientation:
    """A reorientation of the last three array axes, with its exact inverse.

    ``forward`` is the nibabel orientation transform (``ornt``) from the source to the target
    orientation; ``source_shape`` the source's spatial shape; ``affine`` the target array's affine.
    """

    forward: np.ndarray
    source_shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def inverse(self) -> np.ndarray:
        return _invert(self.forward)

    @property
    def is_identity(self) -> bool:
        return bool((self.forward[:, 0] == np.arange(3)).all() and (self.forward[:, 1] == 1).all())

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Source-oriented array (last 3 axes = ``source_shape``) -> target orientation."""
        if tuple(array.shape[-3:]) != tuple(self.source_shape):
            raise ValueError(f"array shape {array.shape} does not end with {self.source_shape}")
        return _apply_ornt_last3(array, self.forward)

    def undo(self, array: np.ndarray) -> np.ndarray:
        """Target-oriented array -> exactly the source orientation and shape (last 3 axes)."""
        out = _apply_ornt_last3(array, self.inverse)
        if tuple(out.shape[-3:]) != tuple(self.source_shape):
            raise ValueError(f"array shape {array.shape} is not this reorientation's target shape")
        return out

    def zooms(self, source_zooms: Sequence[float]) -> tuple[float, float, float]:
        """Voxel sizes of the target array, from the source's (spacing permutation)."""
        return permute_spacing(source_zooms, self.forward)


def _invert(ornt: np.ndarray) -> np.ndarray:
    """Inverse of an orientation transform: output axis j came from input axis i with flip f."""
    inv = np.empty_like(ornt)
    for i, (j, flip) in enumerate(ornt):
        inv[int(j)] = (i, flip)
    return inv


def permute_spacing(zooms: Sequence[float], ornt: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes after ``ornt`` (flips do not change spacing; axis i moves to ``ornt[i, 0]``)."""
    out = [0.0, 0.0, 0.0]
    for i, (j, _flip) in enumerate(ornt):
        out[int(j)] = float(zooms[i])
    return out[0], out[1], out[2]


def to_orientation(data: np.ndarray, affine: np.ndarray, axcodes: Sequence[str]
                   ) -> tuple[np.ndarray, Reorientation]:
    """Reorient ``data`` (last 3 axes on the grid of ``affine``) to nibabel ``axcodes``.

    Returns the reoriented array (a view where possible) and the :class:`Reorientation`, whose
    ``undo`` restores the exact input array and whose ``affine`` is the reoriented grid's affine.
    """
    source_shape = tuple(int(s) for s in data.shape[-3:])
    forward = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(tuple(axcodes)))
    new_affine = np.asarray(affine, float) @ nio.inv_ornt_aff(forward, source_shape)
    r = Reorientation(forward=forward, source_shape=source_shape, affine=new_affine)  # type: ignore[arg-type]
    return r.apply(data), r


def to_sct_orientation(data: np.ndarray, affine: np.ndarray, sct: str) -> tuple[np.ndarray, Reorientation]:
    """Like :func:`to_orientation`, target given in SCT letters (``"LPI"``, ``"RPI"``...)."""
    return to_orientation(data, affine, sct_to_axcodes(sct))


def xyz_to_zyx(array: np.ndarray) -> np.ndarray:
    """nibabel's [x, y, z] -> the [z, y, x] order SCT hands to nnU-Net (last 3 axes); its own inverse."""
    return np.swapaxes(array, -3, -1)


def reverse_spacing(zooms: Sequence[float]) -> tuple[float, float, float]:
    """Spacing for :func:`xyz_to_zyx` arrays (SCT passes ``zooms[::-1]`` to nnU-Net)."""
    z = [float(v) for v in zooms[:3]]
    return z[2], z[1], z[0]
