"""argparse ``type=`` validators shared by our command lines: a bad value is named where it enters."""
from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from typing import NoReturn

from .errors import EXIT

MiB, GiB = 2 ** 20, 2 ** 30


class Parser(argparse.ArgumentParser):
    """The argument parser of our command lines: argparse exits 2 on a bad argument, we exit 64
    (EX_USAGE, ``errors.EXIT["usage"]``) after the usage line and a one-line error."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT["usage"], f"{self.prog}: error: {message}\n")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A parser of integers >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        return value
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def folds(text: str) -> list[int | str]:
    """Fold names, comma-separated: integers >= 0, or ``all`` (nnU-Net's ``fold_all``)."""
    out: list[int | str] = []
    for name in text.replace(",", " ").split():
        if name == "all":
            out.append(name)
            continue
        try:
            fold = int(name)
        except ValueError:
            raise argparse.ArgumentTypeError(f"fold must be an integer >= 0 or 'all', not {name!r}") from None
        if fold < 0:
            raise argparse.ArgumentTypeError(f"fold must be an integer >= 0 or 'all', not {fold}")
        out.append(fold)
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more folds")
    return out


def flatten_folds(groups: list[list[int | str]] | None) -> tuple[int | str, ...] | None:
    """``--folds 0 1`` and ``--folds 0,1`` alike (nargs="+" of :func:`folds`)."""
    return None if not groups else tuple(f for group in groups for f in group)


# ---- memory sizes and seconds ---------------------------------------------------------------------
_MEM_UNITS = {"": MiB, "K": 2 ** 10, "M": MiB, "G": GiB, "T": 2 ** 40}
_MEM_RE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """``--mem`` in bytes: ``8G``, ``8GB``, ``8GiB``, ``8000M``, ``1.5T``; a bare number is megabytes, as
    fMRIPrep's ``--mem`` and SLURM's ``--mem`` read it. ValueError on anything else."""
    m = _MEM_RE.fullmatch(str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a memory size (e.g. 8G, 8GB, 8000MB; a bare number is MB)")
    return int(float(m.group(1)) * _MEM_UNITS[m.group(2).upper()])


def mem_arg(text: str) -> str:
    """argparse ``type=`` for ``--mem``: the text itself once :func:`parse_memory` accepts it."""
    try:
        parse_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return str(text).strip()


def seconds_arg(text: str) -> float:
    """argparse ``type=`` for ``--image-timeout``: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value
