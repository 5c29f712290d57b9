"""``python -m bidsapp.demo OUTPUT_DIR [--subjects N] [--seed S]``: write a phantom BIDS dataset."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ..argtypes import non_negative_int, positive_int
from .dataset import write_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bidsapp.demo",
        description="Write a synthetic spinal cord MRI BIDS dataset with known lesions (ground truth under "
        "OUTPUT_DIR/derivatives/groundtruth). Same seed, byte-identical files.",
    )
    parser.add_argument("output_dir", help="folder to write (created if missing)")
    parser.add_argument("--subjects", type=positive_int, default=5, help="number of subjects (default 5)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    return parser




def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        images = write_dataset(args.output_dir, n_subjects=args.subjects, seed=args.seed)
    except OSError as exc:
        print(f"cannot write {args.output_dir}: {exc}", file=sys.stderr)
        return 73
    with_lesions = sum(1 for i in images if i.n_lesions)
    print(
        f"{len(images)} images ({with_lesions} with lesions) of {args.subjects} subjects written to "
        f"{args.output_dir} in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
