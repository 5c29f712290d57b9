"""Held-out phantoms for the demo models (never trained on): one series for every test that judges them."""
from __future__ import annotations

import numpy as np

from bidsapp.demo.phantom import (
    AXIAL_ORIENTATIONS,
    SAGITTAL_ORIENTATIONS,
    Grid,
    Phantom,
    make_anatomy,
    make_phantom,
)

#: seeds of the test phantoms: numpy.random.default_rng([TEST_SEED, i]); never used in training
TEST_SEED = 4242


def held_out_phantom(contrast: str, i: int, n_lesions: int | None = None) -> Phantom:
    """A phantom as the dataset writer makes them: image i of the test series for ``contrast``."""
    rng = np.random.default_rng([TEST_SEED, i])
    anatomy = make_anatomy(
        rng, n_lesions=int(rng.integers(1, 5)) if n_lesions is None else n_lesions, z_range=(-25, 25)
    )
    if contrast == "UNIT1":
        geometry = {"orientation": SAGITTAL_ORIENTATIONS[i % 5], "voxel_size": (1.0, 1.0, 1.0)}
    elif i % 2:
        geometry = {"orientation": AXIAL_ORIENTATIONS[i % 4], "voxel_size": (0.5, 0.5, 3.0 + i % 3)}
    else:
        geometry = {"orientation": SAGITTAL_ORIENTATIONS[i % 5], "voxel_size": (0.8, 0.8, 0.8)}
    return make_phantom(contrast, rng=rng, anatomy=anatomy, grid=Grid(fov_mm=(40, 44, 70), **geometry))
