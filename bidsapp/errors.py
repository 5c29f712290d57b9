"""Our exception classes, the exit codes, and the sentence a user reads for any exception. Every message
is one line that names the file or value and the reason."""
from __future__ import annotations

import errno
import os
from pathlib import Path


class CordlesionError(Exception):
    """Base class for every error this app raises on purpose."""


class InputImageError(CordlesionError, ValueError):
    """An input image cannot be used (unreadable, wrong dimensionality, non-finite, ...)."""


class ModelError(CordlesionError):
    """A model folder or file is missing, corrupt, modified or incompatible."""


class NoModelsError(ModelError):
    """Neither installed models nor ``--demo``: tells the user how to get models."""


class ConfigError(CordlesionError, ValueError):
    """A user-supplied JSON (routing config, BIDS filter file) or option is invalid."""


class OutputError(CordlesionError, OSError):
    """An output cannot be written (disk full, permissions, output inside bids_dir, ...)."""


class CorrectionError(InputImageError):
    """A corrected mask (``--corrections``) cannot be used: off the image's grid, not binary, two files for
    one image. Only that image's correction is refused; the model's results stay."""


#: The one exit-code table of every command line (run.py, bidsapp.segment, the group level): the BIDS
#: execution spec draft's codes plus sysexits (64 usage, 65 bad input data, 66 missing input, 73 cannot
#: create output).
EXIT: dict[str, int] = {"ok": 0, "failed": 1, "invalid_bids": 16, "unknown_level": 17, "no_match": 18,
                        "usage": 64, "data": 65, "no_input": 66, "cant_create": 73, "interrupted": 130,
                        "terminated": 143}


# ---- failure reasons ----------------------------------------------------------------------------
_OS_REASONS = {
    errno.ENOSPC: "no space left on device (free some space in output_dir or the work dir, then re-run)",
    errno.EDQUOT: "disk quota exceeded (free some space or raise the quota, then re-run)",
    errno.EACCES: "permission denied (check the owner and mode of the file or folder)",
    errno.EPERM: "operation not permitted (check the owner and mode of the file or folder)",
    errno.EROFS: "the file system is read-only (output_dir and the work dir must be writable)",
    errno.EIO: "input/output error from the storage (a failing disk or network file system?)",
    errno.ENOMEM: "out of memory",
}


def failure_reason(exc: BaseException, path: str | Path) -> str:
    """The sentence a user reads for an image that failed with ``exc``: our own errors keep their
    one-line message; every other type maps to a sentence naming ``path`` and what to do. Never the
    raw text of a foreign exception (the traceback goes to the image's log)."""
    if isinstance(exc, CordlesionError):
        return str(exc).splitlines()[0] if str(exc) else f"{path}: {type(exc).__name__}"
    kind = type(exc).__name__
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _is_oom(exc)):
        where = "the GPU" if "cuda" in str(exc).lower() else "the worker"
        hint = "--mem, fewer --nprocs" + (", or --device cpu" if where == "the GPU" else "")
        return f"{path}: {where} ran out of memory on this image; give it more ({hint}) or check its voxels"
    if isinstance(exc, (ZeroDivisionError, FloatingPointError, OverflowError)):
        return (f"{path}: the image's geometry cannot be resampled to the model's grid ({kind}); check the "
                f"header's voxel sizes")
    if isinstance(exc, OSError):
        code = exc.errno or -1
        reason = _OS_REASONS.get(code, f"system error {errno.errorcode.get(code, kind)}")
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return f"{path}: {reason}{where}"
    if isinstance(exc, RuntimeError) and _raised_in(exc, "torch"):
        return f"{path}: the network failed on this image (torch {kind}; see the log for details)"
    decoding = isinstance(exc, (ValueError, IndexError, TypeError, KeyError, EOFError))
    if (decoding or type(exc).__module__.startswith("nibabel")) and _raised_in(exc, "nibabel"):
        return f"{path}: nibabel cannot interpret this image's header or data ({kind}); check the file"
    return f"{path}: unexpected error ({kind}); see the log for the traceback and please report it"


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def _raised_in(exc: BaseException, package: str) -> bool:
    """Whether ``exc`` is a class of ``package`` or was raised inside one of its Python frames."""
    if type(exc).__module__.split(".")[0] == package:
        return True
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False

