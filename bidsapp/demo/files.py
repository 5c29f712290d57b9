"""Writing the phantom dataset's files: atomic, gzip with mtime 0 (the same image gives the same bytes)."""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

import nibabel as nib


def save_nifti(img: nib.Nifti1Image, path: Path) -> None:
    """gzip with mtime 0 (byte-identical for identical images), written atomically."""
    write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))


def write_json(path: Path, obj: dict) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a dataset is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
