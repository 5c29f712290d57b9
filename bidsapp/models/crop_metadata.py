"""``crop_metadata.json``: the paddings (mm) around the cord box that a release trained on crops needs.

SCT's development branch (``deepseg/models.py`` ``load_crop_metadata``, ``CROP_PAD_KEYS``) reads it from
the root of the installed model and passes the six paddings to ``sc_crop.detect``; a release that has
the file uses the crop pipeline, every key is required (no fallback to the detector's own defaults). We
install it into the trainer folder; the pipeline crops as it says around the box of our cord mask.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

__all__ = ["FILE", "PAD_KEYS", "CropPadding", "parse", "read"]

FILE = "crop_metadata.json"
#: SCT's CROP_PAD_KEYS, in mm, one per face of the box
PAD_KEYS = ("pad_superior", "pad_inferior", "pad_left", "pad_right", "pad_anterior", "pad_posterior")


@dataclass(frozen=True)
class CropPadding:
    """Paddings in mm beyond each face of the cord box (anatomical faces, whatever the image axes)."""

    superior: float
    inferior: float
    left: float
    right: float
    anterior: float
    posterior: float

    def by_direction(self) -> dict[str, float]:
        """nibabel direction letter (where an axis points TO) -> padding on that side."""
        return {"S": self.superior, "I": self.inferior, "L": self.left, "R": self.right,
                "A": self.anterior, "P": self.posterior}


def parse(data: bytes, where: str) -> CropPadding:
    """The paddings in ``data`` (JSON text); ``ModelError`` naming ``where`` when not valid."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ModelError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelError(f"{where}: not a JSON object")
    missing = [k for k in PAD_KEYS if k not in raw]
    if missing:
        raise ModelError(f"{where}: missing padding key(s) {missing} (all of {list(PAD_KEYS)} are required)")
    values = []
    for key in PAD_KEYS:
        v = raw[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ModelError(f"{where}: {key} must be a number of mm >= 0, not {v!r}")
        values.append(float(v))
    return CropPadding(*values)


def read(folder: str | Path) -> CropPadding | None:
    """The paddings of the model in trainer folder ``folder``; None without a ``crop_metadata.json``."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    return parse(path.read_bytes(), str(path))
