"""The committed demo legacy ONNX models: official signature, parity with torch, Dice on phantoms."""
from __future__ import annotations

import numpy as np
import pytest

from bidsapp import legacy
from bidsapp.demo.phantom import Grid, make_anatomy, make_phantom
from bidsapp.demo.train_legacy import RECIPES, net_from_onnx, parity
from bidsapp.engine.onnx import OnnxModel
from bidsapp.models import locate

# seeds far from the training (0, 100, 200) and the training script's evaluation seeds (10000+)
TEST_SEED = 770_000


def _path(task: str):
    return locate(task, demo=True).path


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.fixture(scope="module")
def cases():
    """Per task, three unseen phantoms of its acquisition recipe, with lesions."""
    out = {}
    for k, task in enumerate(legacy.TASKS):
        recipe, rng = RECIPES[task], np.random.default_rng(TEST_SEED + k)
        out[task] = []
        for i in range(3):
            anatomy = make_anatomy(rng, n_lesions=int(rng.integers(2, 5)), z_range=(-30, 30))
            orientation = recipe["orientations"][(i + k) % len(recipe["orientations"])]
            voxel = recipe["voxel_sizes"][i % len(recipe["voxel_sizes"])]
            out[task].append(make_phantom(recipe["contrast"], rng=rng, anatomy=anatomy,
                                          grid=Grid(orientation=orientation, voxel_size=voxel)))
    return out


def test_demo_files_have_the_official_signature_and_are_small():
    total = 0
    for task in legacy.TASKS:
        path = _path(task)
        assert path.name == f"{task}_lesion.onnx" and path.parent.name == "legacy"
        model = OnnxModel(path)
        assert (model.input_name, model.output_name) == ("input_1", "predictions")
        assert model.patch_shape == (48, 48, 48) and model.fixed_batch is None
        assert model.metadata["cordlesion_demo"] == "true" and model.metadata["task"] == task
        total += path.stat().st_size
    assert total <= 3 * 1024 * 1024


@pytest.mark.parametrize("task", legacy.TASKS)
def test_demo_onnx_matches_its_torch_network(task, cases):
    """The file against the torch network holding its weights, on real pipeline patches and on noise."""
    ph = cases[task][0]
    prep = legacy.prepare(np.asanyarray(ph.image.dataobj), ph.image.affine,
                          np.asanyarray(ph.cord.dataobj), task)
    contrast = legacy.contrast_for(task)
    real = (prep.crop_iso[None, None, :, :, :48] - contrast.mean) / contrast.std
    noise = np.random.default_rng(1).normal(0, 1, size=(1, 1, 48, 48, 48)).astype(np.float32)
    batch = np.concatenate([real, noise]).astype(np.float32)
    assert parity(net_from_onnx(_path(task)), _path(task), batch) <= 1e-4


@pytest.mark.parametrize("task", legacy.TASKS)
def test_demo_models_find_phantom_lesions(task, cases):
    """The whole pipeline (ground-truth cord as centreline) on unseen phantoms: mean Dice >= 0.6."""
    model = OnnxModel(_path(task))
    scores = []
    for ph in cases[task]:
        mask, _ = legacy.run_legacy(np.asanyarray(ph.image.dataobj), ph.image.affine,
                                    np.asanyarray(ph.cord.dataobj), task, model)
        assert mask.shape == ph.image.shape
        scores.append(_dice(mask, np.asanyarray(ph.lesion.dataobj)))
    assert np.mean(scores) >= 0.6, scores


@pytest.mark.parametrize("task", ["t2", "t2s"])
def test_demo_models_on_lesion_free_phantoms(task):
    recipe, rng = RECIPES[task], np.random.default_rng(TEST_SEED + 50)
    ph = make_phantom(recipe["contrast"], rng=rng, anatomy=make_anatomy(rng, n_lesions=0),
                      grid=Grid(orientation=recipe["orientations"][0], voxel_size=recipe["voxel_sizes"][0]))
    mask, _ = legacy.run_legacy(np.asanyarray(ph.image.dataobj), ph.image.affine,
                                np.asanyarray(ph.cord.dataobj), task, OnnxModel(_path(task)))
    volume_mm3 = mask.sum() * float(np.prod(ph.image.header.get_zooms()[:3]))
    # less than one typical lesion, at SCT's low 0.1 threshold (measured: t2 25 mm3, t2s < 10 mm3)
    assert volume_mm3 <= 50.0
