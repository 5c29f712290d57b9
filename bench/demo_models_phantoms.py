"""Dice of the demo models on unseen phantoms (more images than the tests use).

    .venv/bin/python bench/demo_models_phantoms.py [--per-contrast 10] [--threads 2]

Phantoms: ``numpy.random.default_rng([4243, i])`` (training used 1001/2002/3003, validation
1501/2502/3503, tests 4242), acquisitions as in the phantom datasets; segmentation through
``bidsapp.pipelines.segment(..., demo=True)``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_demo_models as t  # noqa: E402  (reuse the test phantoms' acquisition settings)

from bidsapp.pipelines import RunOptions, segment  # noqa: E402

DEMO_CPU = RunOptions(demo=True, device="cpu")

t.TEST_SEED = 4243


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-contrast", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        "| contrast | task | images | lesion Dice mean (min-max) | cord Dice mean "
        "| lesion-free FP mm3 | s/image |"
    )
    print("|---|---|---|---|---|---|---|")
    for k, (contrast, task) in enumerate(
        (("T2w", "lesion_ms"), ("T2starw", "lesion_ms"), ("UNIT1", "lesion_ms_mp2rage"))
    ):
        lesion, cord, fp, seconds = [], [], [], []
        for i in range(args.per_contrast):
            ph = t._test_phantom(contrast, 100 * k + i)
            start = time.perf_counter()
            result = segment(ph.image, task=task, options=DEMO_CPU)
            seconds.append(time.perf_counter() - start)
            lesion.append(t._dice(np.asarray(result.mask.dataobj) > 0, np.asarray(ph.lesion.dataobj) > 0))
            sc = (
                result.cord
                if result.cord is not None
                else segment(ph.image, task="spinalcord", options=DEMO_CPU).mask
            )
            cord.append(t._dice(np.asarray(sc.dataobj) > 0, np.asarray(ph.cord.dataobj) > 0))
        for i in range(3):
            ph = t._test_phantom(contrast, 100 * k + 50 + i, n_lesions=0)
            mask = np.asarray(segment(ph.image, task=task, options=DEMO_CPU).mask.dataobj) > 0
            fp.append(float(mask.sum() * np.prod(ph.image.header.get_zooms()[:3])))
        print(
            f"| {contrast} | {task} | {len(lesion)} "
            f"| {np.mean(lesion):.3f} ({min(lesion):.2f}-{max(lesion):.2f}) "
            f"| {np.mean(cord):.3f} | {', '.join(f'{v:.1f}' for v in fp)} | {np.mean(seconds):.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
