"""Getting release archives onto disk safely: download with size checks, zip extraction that refuses
zip-slip (absolute paths, ``..``, links), folder copies that refuse links.

Nothing here imports or executes anything from an archive; files are written with default permissions
(no executable bits from the archive).
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import stat
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .. import __version__
from ..errors import ModelError

__all__ = ["Fetched", "download", "safe_extract", "copy_tree", "MAX_UNPACKED_BYTES"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
MAX_UNPACKED_BYTES = 50 * (1 << 30)  # refuse archives that claim to unpack to more (zip bombs)
RETRY_DELAYS = (3.0, 10.0)  # seconds before the 2nd and 3rd attempt of a download


@dataclass(frozen=True)
class Fetched:
    """One archive on local disk, with what we know of where it came from."""
    url: str
    path: Path
    size: int
    sha256: str


class _Progress:
    """A tqdm bar on terminals; plain log lines every 10 % (or 100 MiB when the size is unknown) otherwise."""

    def __init__(self, name: str, total: int | None):
        self.name, self.total, self.done, self._next = name, total, 0, 0.1
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                             leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        frac = self.done / self.total if self.total else self.done / (1 << 30)
        if frac >= self._next:
            if self.total:
                log.info("%s: %d%% (%d of %d bytes)", self.name, int(100 * frac), self.done, self.total)
            else:
                log.info("%s: %d bytes", self.name, self.done)
            self._next = (int(frac * 10) + 1) / 10

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _check_expected(url: str, size: int, digest: str, exp_size: int | None, exp_sha: str | None) -> None:
    if exp_size is not None and size != exp_size:
        raise ModelError(f"{url}: downloaded {size} bytes, the manifest expects {exp_size}")
    if exp_sha is not None and digest != exp_sha:
        raise ModelError(f"{url}: sha256 {digest} differs from the manifest's {exp_sha}")


class _Transient(ModelError):
    """A network failure worth another attempt (connection reset, timeout, truncated body, HTTP 5xx)."""


def _fetch_once(url: str, dest: Path, timeout: float) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"User-Agent": f"cordlesion/{__version__}"})
    h = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = _Progress(PurePosixPath(url).name or url, total)
            try:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
    except urllib.error.HTTPError as exc:
        kind = _Transient if exc.code >= 500 else ModelError
        raise kind(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise _Transient(f"{url}: download failed ({type(exc).__name__}: {reason})") from exc
    if total is not None and size != total:
        raise _Transient(f"{url}: download truncated: {size} of {total} bytes received")
    return size, h.hexdigest()


def download(url: str, dest: Path, *, expected_size: int | None = None, expected_sha256: str | None = None,
             timeout: float = 60.0) -> Fetched:
    """Download ``url`` to the file ``dest``, checking Content-Length and, when the manifest knows them,
    size and sha256. Network failures are retried (``RETRY_DELAYS``). Raises ``ModelError`` (and removes
    ``dest``) on any failure."""
    for attempt, delay in enumerate((*RETRY_DELAYS, None), start=1):
        try:
            size, digest = _fetch_once(url, dest, timeout)
            _check_expected(url, size, digest, expected_size, expected_sha256)
            return Fetched(url, dest, size, digest)
        except _Transient as exc:
            dest.unlink(missing_ok=True)
            if delay is None:
                raise ModelError(f"{exc} (after {attempt} attempts)") from exc
            log.warning("%s; retrying in %.0f s", exc, delay)
            time.sleep(delay)
        except ModelError:
            dest.unlink(missing_ok=True)
            raise
    raise AssertionError("unreachable")


def _member_target(info: zipfile.ZipInfo, archive: Path, dest: Path) -> Path | None:
    """Where a member goes under ``dest``, or None for directories; ``ModelError`` for unsafe members."""
    name = info.filename
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no Unix file type
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise ModelError(f"{archive}: member {name!r} is a link or special file: refused")
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\0" in name:
        raise ModelError(f"{archive}: member {name!r} has an absolute or non-POSIX path: refused")
    parts = PurePosixPath(name).parts
    if not parts or any(p in ("..", "") for p in parts):
        raise ModelError(f"{archive}: member {name!r} escapes the archive folder ('..'): refused")
    target = dest.joinpath(*parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ModelError(f"{archive}: member {name!r} resolves outside the destination: refused")
    return None if info.is_dir() else target


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a zip into the existing empty folder ``dest``; every member is checked BEFORE anything is
    written, so a refused archive writes nothing."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{archive}: not a readable zip archive ({exc})") from exc
    with zf:
        infos = zf.infolist()
        targets = [_member_target(i, archive, dest) for i in infos]
        files = [t for t in targets if t is not None]
        if len({str(t) for t in files}) != len(files):
            raise ModelError(f"{archive}: duplicate member names: refused")
        if sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
            raise ModelError(f"{archive}: unpacks to more than {MAX_UNPACKED_BYTES} bytes: refused")
        for info, target in zip(infos, targets, strict=True):
            if target is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "xb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:  # CRC errors, truncated members
                raise ModelError(f"{archive}: member {info.filename!r} cannot be extracted ({exc})") from exc


def copy_tree(src: Path, dest: Path) -> None:
    """Copy the regular files of folder ``src`` into ``dest``; links and special files are refused."""
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink() or not (p.is_dir() or p.is_file()):
                raise ModelError(f"{p}: links and special files are refused in a model folder")
        for name in filenames:
            p = Path(dirpath) / name
            target = dest / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
