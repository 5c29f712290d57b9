"""Helpers for the engine tests: small nnU-Net v2 folders with random weights, phantom images, and
nnunetv2's own nnUNetPredictor as the oracle (test-only dependency)."""
from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel import orientations as nio

from bidsapp.demo.modelfolder import (
    PlansSpec,
    clone_shared,
    make_dataset_json,
    make_plans,
    random_state_dict,
    write_model_folder,
)
from bidsapp.engine.network import build_network

PLAN_SPACING = (3.0, 0.8, 0.8)  # nnU-Net axis order [z, y, x] of the LPI image: anisotropic, ratio 3.75
PATCH = (8, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Engine tests run with one torch thread (deterministic and polite on shared CI cores); importing
    this fixture into a test module makes it autouse there."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _decisive(state: dict, plans: dict, seed: int) -> dict:
    """Sharpen the last segmentation layer so classes win clearly in intensity-driven regions:
    random nets give logits near zero; scaled, with a bias picked so ~30% of a test image is
    foreground, Dice between engines is meaningful."""
    net = build_network(plans, "3d_fullres", 1, 2)
    net.load_state_dict(state)
    name = [k for k in state if k.startswith("decoder.seg_layers") and k.endswith("weight")][-1]
    prefix = name[: -len("weight")]
    x = torch.from_numpy(phantom_array((40, 40, 12), seed=99)[None, None].transpose(0, 1, 4, 3, 2).copy())
    x = (x - x.mean()) / x.std()
    with torch.inference_mode():
        feats = net(x[..., : PATCH[0], : PATCH[1], : PATCH[2]])
    diff = (feats[0, 1] - feats[0, 0]).flatten()
    scale = 8.0 / float(diff.std() + 1e-6)
    state = clone_shared(state)  # aliases (decoder.encoder., all_modules) stay one tensor, as in nnU-Net
    state[prefix + "weight"] *= scale
    state[prefix + "bias"] *= scale
    shift = float(torch.quantile(diff * scale, 0.45))
    state[prefix + "bias"][1] -= shift / 2
    state[prefix + "bias"][0] += shift / 2
    return state


def build_folder(dest: Path, network: str = "PlainConvUNet", *, folds=(0, 1), old_format: bool = False,
                 orientation: str | None = "LPI", spacing=PLAN_SPACING, patch=PATCH,
                 normalization: str = "ZScoreNormalization", use_mask_for_norm: bool = False,
                 transpose_forward=(0, 1, 2), mirroring_axes=(0, 1, 2)) -> Path:
    """A 2-class model folder with decisive random weights, one state dict per fold."""
    plans = make_plans(PlansSpec(network=network, patch_size=patch, spacing=spacing, base_features=4,
                                 max_features=16, old_format=old_format, normalization=normalization,
                                 use_mask_for_norm=use_mask_for_norm, transpose_forward=transpose_forward))
    ds = make_dataset_json({"background": 0, "lesion": 1}, ["T2w"], orientation)
    states = {f: _decisive(random_state_dict(plans, "3d_fullres", 1, 2, seed=10 + i), plans, i)
              for i, f in enumerate(folds)}
    return write_model_folder(dest, plans=plans, dataset_json=ds, fold_state_dicts=states,
                              mirroring_axes=mirroring_axes)


def phantom_array(shape, seed: int = 0) -> np.ndarray:
    """Zero border (exercises the crop), smooth intensities, two bright blobs, some noise."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    data = 300 + 80 * grid[0] + 40 * np.sin(3 * grid[1])
    for c in ([0.3, -0.2, 0.1], [-0.4, 0.35, -0.3]):
        r2 = sum((g - ci) ** 2 for g, ci in zip(grid, c, strict=True))
        data += 500 * np.exp(-r2 / 0.08)
    data += rng.normal(0, 15, shape)
    data[:2], data[:, -3:] = 0, 0
    return data.astype(np.float32)


def make_image(case: str, seed: int = 0) -> nib.Nifti1Image:
    """Test images: "ras" at the plan spacing, "las" anisotropic LAS, "resample" needs resampling
    (another spacing and an oblique-free PSR orientation)."""
    if case == "ras":
        shape, zooms, codes = (40, 36, 14), (0.8, 0.8, 3.0), ("R", "A", "S")
    elif case == "las":
        shape, zooms, codes = (38, 34, 12), (0.8, 0.8, 3.0), ("L", "A", "S")
    elif case == "resample":
        shape, zooms, codes = (30, 11, 44), (1.0, 2.4, 0.6), ("P", "S", "R")
    else:
        raise ValueError(case)
    return image_on_grid(shape, zooms, codes, seed)


def image_on_grid(shape: tuple[int, int, int], zooms: tuple[float, float, float], codes: tuple[str, str, str],
                  seed: int = 0) -> nib.Nifti1Image:
    """:func:`phantom_array` on an axis-aligned grid with these nibabel axis codes, qform and sform set."""
    aff = np.zeros((4, 4))
    for i, (world, flip) in enumerate(nio.axcodes2ornt(codes)):
        aff[int(world), i] = flip * zooms[i]
    aff[:3, 3] = (12.5, -40.0, 7.0)
    aff[3, 3] = 1
    img = nib.Nifti1Image(phantom_array(shape, seed), aff)
    img.set_qform(aff, 1)
    img.set_sform(aff, 2)
    return img


def oracle_predictor(folder: Path, tta: bool, folds=None):
    """nnunetv2's nnUNetPredictor on ``folder``, CPU, step 0.5, Gaussian."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                           device=torch.device("cpu"), verbose=False, verbose_preprocessing=False,
                           allow_tqdm=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred.initialize_from_trained_model_folder(str(folder), use_folds=folds)
    return pred


def oracle_probabilities(pred, img: nib.Nifti1Image, sct_orientation: str = "LPI") -> np.ndarray:
    """SCT's path with nibabel alone: reorient (SCT letters -> opposite nibabel codes), [x,y,z] ->
    [z,y,x] with reversed spacing, nnUNetPredictor, and all of it undone; (C, *img.shape)."""
    data, spacing, back = to_sct_model_array(img, sct_orientation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, probs = pred.predict_single_npy_array(data, {"spacing": spacing}, None, None, True)
    return np.stack([back(p) for p in probs]).astype(np.float32)


_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


def _sct_rounded(zoom: float) -> float:
    """SCT 7.3 ``image.py`` ``get_dimension``, as written there: a float32 zoom rounded to the digits its
    float32 spacing allows (nnU-Net's 3:1 anisotropy test and target shapes see these numbers)."""
    zoom_f32 = np.float32(zoom)
    spacing_exp = np.floor(np.log10(np.abs(np.spacing(zoom_f32)))).astype(int)
    return round(float(zoom_f32), -spacing_exp - 1)


def to_sct_model_array(img: nib.Nifti1Image, sct_orientation: str = "LPI"):
    """SCT's way into a model's array (``deepseg/inference.py`` ``segment_nnunet``): reorient to the SCT
    letters (the opposite nibabel codes), [x,y,z] -> [z,y,x] with the spacing reversed. Returns (data
    (1, z, y, x) float32, spacing, the way back from a (z, y, x) array to ``img``'s grid)."""
    target = nio.axcodes2ornt(tuple(_OPPOSITE[c] for c in sct_orientation))
    to_target = nio.ornt_transform(nio.io_orientation(img.affine), target)
    data = nio.apply_orientation(np.asarray(img.dataobj, dtype=np.float32), to_target)
    zooms = [_sct_rounded(z) for z in nib.affines.voxel_sizes(img.affine)]
    zooms_t = [0.0, 0.0, 0.0]
    for i, (j, _) in enumerate(to_target):
        zooms_t[int(j)] = float(zooms[i])
    undo = nio.ornt_transform(target, nio.io_orientation(img.affine))

    def back(zyx: np.ndarray) -> np.ndarray:
        return nio.apply_orientation(zyx.transpose(2, 1, 0), undo)

    return data.transpose(2, 1, 0)[None].astype(np.float32), zooms_t[::-1], back


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)
