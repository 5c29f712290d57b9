"""Lesion analysis of one image, or of the change between two sessions (our ``sct_analyze_lesion``).

    python -m bidsapp.analyze -m LESION_MASK [-s CORD_MASK] [-o OUT.tsv] [--drop-outside-cord]
    python -m bidsapp.analyze -m FOLLOWUP_MASK -i FOLLOWUP_IMAGE [-s CORD] --baseline-mask BASELINE_MASK
        --baseline-image BASELINE_IMAGE [--baseline-cord CORD] [-o OUT.tsv] [thresholds, registration options]

One image: one row per lesion (OUT.tsv + OUT.json data dictionary; default ``<mask>_lesions.tsv`` beside
the mask). Two sessions: the change table (default ``<mask>_change.tsv``), its data dictionary, and the
registration: ``<OUT stem>_registration.json`` (parameters, quality figures) and ``<OUT stem>.tfm``
(ITK transform file, follow-up -> baseline points).

Exit codes: 0 success, 64 usage error, 65 unusable input, 66 missing input, 1 any other failure.
Errors are one line on stderr naming the file.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from .analysis.io import load_mask

EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_FAILURE = 64, 65, 66, 1

log = logging.getLogger("bidsapp.analyze")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be >= 0")
    return number


def build_parser() -> argparse.ArgumentParser:
    from .analysis import ChangeRules, RegistrationSettings

    rules, reg = ChangeRules(), RegistrationSettings()
    p = _Parser(prog="python -m bidsapp.analyze",
                description="Per-lesion measures (SCT sct_analyze_lesion definitions) of a lesion mask, "
                            "or the change between two sessions (rigid registration, lesions matched by "
                            "overlap).")
    p.add_argument("-m", "--mask", required=True, type=Path, metavar="LESION_MASK",
                   help="binary lesion mask (the follow-up's, with --baseline-mask)")
    p.add_argument("-s", "--cord", type=Path, metavar="CORD_MASK",
                   help="cord mask on the lesion mask's grid: angle correction and the cord-relative columns")
    p.add_argument("-o", "--output", type=Path, metavar="OUT.tsv", help="output table (.tsv)")
    p.add_argument("--drop-outside-cord", action="store_true",
                   help="leave out lesions wholly outside the cord (needs -s; SCT issue #4946)")
    two = p.add_argument_group("change between sessions")
    two.add_argument("-i", "--image", type=Path, metavar="FOLLOWUP_IMAGE", help="the follow-up image")
    two.add_argument("--baseline-mask", type=Path, metavar="MASK", help="the baseline lesion mask")
    two.add_argument("--baseline-image", type=Path, metavar="IMAGE", help="the baseline image")
    two.add_argument("--baseline-cord", type=Path, metavar="MASK",
                     help="the baseline cord mask: adds the cord Dice after registration (with -s)")
    two.add_argument("--min-new-volume", type=_non_negative, default=rules.min_new_volume_mm3, metavar="MM3",
                     help=f"smallest new lesion, mm^3 (default {rules.min_new_volume_mm3})")
    two.add_argument("--enlarge-relative", type=_non_negative, default=rules.enlarge_relative, metavar="R",
                     help=f"relative volume increase for 'enlarged' (default {rules.enlarge_relative})")
    two.add_argument("--enlarge-absolute", type=_non_negative, default=rules.enlarge_absolute_mm3,
                     metavar="MM3", help=f"absolute increase for 'enlarged', mm^3 (default "
                                         f"{rules.enlarge_absolute_mm3})")
    two.add_argument("--registration-metric", choices=("auto", "mattes", "correlation"), default=reg.metric,
                     help="auto (default): Mattes mutual information around the follow-up cord with -s, "
                          "correlation over the image without")
    two.add_argument("--registration-init", choices=("header", "geometry", "moments"), default=reg.init,
                     help="initial translation: scanner coordinates (default), image centres or intensity "
                          "centres of mass")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


class _Usage(Exception):
    """A bad combination of options (exit 64)."""


def _stem(path: Path) -> str:
    name = path.name
    return name[:-len(".nii.gz")] if name.endswith(".nii.gz") else name.rsplit(".", 1)[0]


def _check(args: argparse.Namespace) -> bool:
    """Validate the option combination; True for the two-session mode."""
    change = [args.image, args.baseline_mask, args.baseline_image]
    if any(v is not None for v in change) and not all(v is not None for v in change):
        raise _Usage("the change between sessions needs -i, --baseline-mask and --baseline-image together")
    if args.drop_outside_cord and args.cord is None:
        raise _Usage("--drop-outside-cord needs the cord mask (-s)")
    if args.output is not None and args.output.suffix != ".tsv":
        raise _Usage(f"{args.output}: the output must end with .tsv")
    return all(v is not None for v in change)


def run_single(args: argparse.Namespace) -> int:
    from .analysis import analyze_lesions, drop_outside_cord
    from .analysis.tables import LESION_DICTIONARY, lesion_tsv, write_table

    analysis = analyze_lesions(load_mask(args.mask), load_mask(args.cord) if args.cord else None)
    if args.drop_outside_cord:
        analysis = drop_outside_cord(analysis)
    out = args.output or args.mask.parent / f"{_stem(args.mask)}_lesions.tsv"
    write_table(out, lesion_tsv(analysis), LESION_DICTIONARY)
    log.info("%s: %d lesions", out, analysis.count)
    return 0


def run_change(args: argparse.Namespace) -> int:
    from .analysis import ChangeRules, RegistrationSettings, SessionInputs, analyze_change
    from .analysis.registration import tfm_text
    from .analysis.tables import change_dictionary, change_tsv, write_table
    from .derivatives import atomic_write_bytes, atomic_write_json
    from .imaging import load_image

    rules = ChangeRules(args.min_new_volume, args.enlarge_relative, args.enlarge_absolute)
    settings = replace(RegistrationSettings(), metric=args.registration_metric, init=args.registration_init)
    inputs = SessionInputs(load_mask(args.mask), load_image(args.image), load_mask(args.baseline_mask),
                           load_image(args.baseline_image),
                           load_mask(args.cord) if args.cord else None,
                           load_mask(args.baseline_cord) if args.baseline_cord else None)
    change = analyze_change(inputs, rules, settings)
    out = args.output or args.mask.parent / f"{_stem(args.mask)}_change.tsv"
    write_table(out, change_tsv(change), change_dictionary(rules))
    record = change.registration.summary()
    record["CordDice"] = change.cord_dice
    record["Counts"] = {s: change.count(s) for s in ("new", "enlarged", "stable", "shrunk", "disappeared")}
    atomic_write_json(out.with_name(out.stem + "_registration.json"), record)
    atomic_write_bytes(out.with_name(out.stem + ".tfm"), tfm_text(change.registration.transform))
    log.info("%s: %s", out, record["Counts"])
    return 0


def main(argv: list[str] | None = None) -> int:
    from .errors import CordlesionError, InputImageError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    prog = parser.prog
    try:
        change = _check(args)
        inputs = (args.mask, args.cord, args.image, args.baseline_mask, args.baseline_image,
                  args.baseline_cord)
        for path in inputs:
            if path is not None and not path.exists():
                print(f"{prog}: error: {path}: no such file", file=sys.stderr)
                return EX_NOINPUT
        return run_change(args) if change else run_single(args)
    except _Usage as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EX_USAGE
    except InputImageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EX_DATAERR
    except (CordlesionError, OSError, RuntimeError) as exc:
        print(f"{prog}: error: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        return EX_FAILURE


if __name__ == "__main__":
    sys.exit(main())
