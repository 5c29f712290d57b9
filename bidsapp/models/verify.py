"""Integrity of installed models: per-file sha256 + size + mtime recorded in ``source.json``.

``check_folder(root, full=False)`` is what every model load runs: it lists the folder (cheap), compares
sizes and modification times with ``source.json`` and re-hashes only files whose size or mtime changed
(e.g. after a copy that did not keep mtimes). ``full=True`` (``models verify``) re-hashes everything.
It never writes: installed model folders may be read-only at run time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

__all__ = ["SOURCE_JSON", "hash_file", "scan_files", "record_files", "read_source", "check_folder",
           "FolderCheck"]

log = logging.getLogger(__name__)

SOURCE_JSON = "source.json"
_CHUNK = 1 << 20
# Per-process cache: (path, size, mtime_ns, inode) -> sha256, so repeated loads in one process hash once.
_HASH_CACHE: dict[tuple[str, int, int, int], str] = {}


def hash_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks (cached per process by path, size, mtime, inode)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _HASH_CACHE:
        return _HASH_CACHE[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def scan_files(root: str | Path) -> dict[str, os.stat_result]:
    """Every entry under ``root`` (POSIX relative path -> lstat), except ``source.json`` itself.
    Links and special files are listed too, so that the check can refuse them."""
    root = Path(root)
    found: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel != SOURCE_JSON:
                found[rel] = full.lstat()
    return found


def record_files(root: str | Path) -> dict[str, dict]:
    """``{relpath: {"sha256", "size", "mtime_ns"}}`` for every regular file under ``root``."""
    root = Path(root)
    out = {}
    for rel, st in sorted(scan_files(root).items()):
        out[rel] = {"sha256": hash_file(root / rel), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def read_source(root: str | Path) -> dict:
    """The parsed ``source.json`` of an installed model folder (``ModelError`` if missing or broken)."""
    path = Path(root) / SOURCE_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: missing: this folder was not installed by `python -m bidsapp.models "
                         f"install`") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from exc
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not files or not all(_valid_record(r) for r in files.values()):
        raise ModelError(f"{path}: no valid file records (sha256, size, mtime_ns per file)")
    return data


def _valid_record(rec: object) -> bool:
    return (isinstance(rec, dict) and isinstance(rec.get("sha256"), str) and isinstance(rec.get("size"), int)
            and isinstance(rec.get("mtime_ns"), int))


@dataclass(frozen=True)
class FolderCheck:
    """Result of checking a folder against its ``source.json``."""
    source: dict
    sha256: dict[str, str]  # relpath -> sha256 (recorded, and confirmed where re-hashed)
    rehashed: int  # how many files were hashed in this check


def _problems(root: Path, recorded: dict[str, dict], full: bool) -> tuple[list[str], dict[str, str], int]:
    present = scan_files(root)
    problems, sha, rehashed = [], {}, 0
    for rel in sorted(set(present) - set(recorded)):
        problems.append(f"{rel}: not part of the installed release")
    for rel, rec in sorted(recorded.items()):
        st = present.get(rel)
        if st is None:
            problems.append(f"{rel}: missing")
            continue
        if not (Path(root / rel).is_file() and not Path(root / rel).is_symlink()):
            problems.append(f"{rel}: not a regular file")
            continue
        if st.st_size != rec.get("size"):
            problems.append(f"{rel}: size {st.st_size} bytes, installed {rec.get('size')}")
            continue
        if full or st.st_mtime_ns != rec.get("mtime_ns"):
            rehashed += 1
            if hash_file(root / rel) != rec.get("sha256"):
                problems.append(f"{rel}: sha256 differs from the installed file (modified or corrupt)")
                continue
        sha[rel] = rec["sha256"]
    return problems, sha, rehashed


def check_folder(root: str | Path, *, full: bool = False, reinstall_hint: str = "") -> FolderCheck:
    """Check an installed model folder against its ``source.json``; raise ``ModelError`` on any mismatch.

    The message names the folder, the first differing files and how to reinstall.
    """
    root = Path(root)
    source = read_source(root)
    problems, sha, rehashed = _problems(root, source["files"], full)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        hint = f" Reinstall with `{reinstall_hint}`." if reinstall_hint else ""
        raise ModelError(f"{root}: installed model changed since install: {shown}.{hint}")
    if rehashed:
        log.debug("%s: re-hashed %d file(s) whose mtime changed; contents match source.json", root, rehashed)
    return FolderCheck(source=source, sha256=sha, rehashed=rehashed)
