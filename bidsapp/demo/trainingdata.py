"""Training data for the demo models: randomised phantoms taken to nnU-Net's preprocessed space.

Each training volume is a phantom drawn with random contrast settings, acquisition (sagittal
isotropic or axial thick-slice), orientation, field of view, noise, bias field and lesions, then
preprocessed with the very functions our engine applies at inference (reorient to the model's
``image_orientation``, [x,y,z] -> [z,y,x], crop to the non-zero box, normalise, resample to the
plans' spacing), so the models see at training time what they will see when segmenting.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .. import orientation as ori
from ..boxes import box_around_cord, cut
from ..engine.preprocess import bbox_slices, nonzero_bbox, normalize
from ..engine.resample import compute_new_shape, resample_to_shape
from ..tasks import BoxRule
from .phantom import AXIAL_ORIENTATIONS, SAGITTAL_ORIENTATIONS, Appearance, Grid, make_anatomy, make_phantom


@dataclass(frozen=True)
class Volume:
    """A preprocessed image (1, z, y, x) float32 and its target (z, y, x) uint8 (0/1)."""

    image: np.ndarray
    target: np.ndarray


#: lesion intensity relative to the brighter (T2) or darker (UNIT1) cord tissue, drawn per image:
#: subtle to obvious lesions, never confusable with grey matter
LESION_CONTRAST = {"T2w": (1.25, 2.0), "T2starw": (1.25, 2.0), "UNIT1": (0.5, 0.85)}


def random_phantom(rng: np.random.Generator, contrast: str, *, lesions: bool):
    """A phantom with every acquisition and appearance setting drawn at random."""
    if contrast == "UNIT1" or rng.random() < 0.5:
        iso = float(rng.choice([0.7, 0.8, 0.9, 1.0, 1.2]))
        orientation = SAGITTAL_ORIENTATIONS[int(rng.integers(len(SAGITTAL_ORIENTATIONS)))]
        voxel_size = (iso, iso, iso)
    else:
        orientation = AXIAL_ORIENTATIONS[int(rng.integers(len(AXIAL_ORIENTATIONS)))]
        inplane = float(rng.uniform(0.4, 0.8))
        voxel_size = (inplane, inplane, float(rng.uniform(2.0, 5.0)))
    anatomy = make_anatomy(
        rng,
        n_lesions=int(rng.integers(0, 6)) if lesions else 0,
        z_range=(-30, 30),
        cord_diameter_range=(6.5, 10.5),
    )
    # the grid before the appearance: the draws keep the order the committed demo models were trained on
    grid = Grid(
        orientation=orientation,
        voxel_size=voxel_size,
        fov_mm=(rng.uniform(32, 56), rng.uniform(32, 60), rng.uniform(60, 100)),
        centre=(rng.uniform(-6, 6), rng.uniform(-6, 8), rng.uniform(-8, 8)),
        tilt_deg=rng.uniform(-15, 15),
    )
    look = Appearance(
        noise=rng.uniform(0.005, 0.05),
        bias=rng.uniform(0.0, 0.35),
        intensity_jitter=0.2,
        lesion_contrast=rng.uniform(*LESION_CONTRAST.get(contrast, (1.25, 2.0))),
        dtype=np.int16 if rng.random() < 0.7 else np.float32,
    )
    return make_phantom(contrast, rng=rng, anatomy=anatomy, grid=grid, look=look)


#: the crop box the demo MP2RAGE model was trained on: SCT's recipe (30 mm in-plane, 5 slices along S-I);
#: the task's own rule counts 5 mm along S-I (tasks.py), the same on the 1 mm grids the recipe is for
TRAINING_CROP = BoxRule(margin_mm=30.0, margin_slices=5, windows="crop")


def crop_around_cord(image: nib.Nifti1Image, target: nib.Nifti1Image, cord: nib.Nifti1Image):
    """The crop box of :data:`TRAINING_CROP` (``boxes``, as the ``lesion_ms_mp2rage`` pipeline cuts it)
    around the true cord."""
    box = box_around_cord(np.asarray(cord.dataobj) > 0, cord.affine, TRAINING_CROP)
    return (image, target) if box is None else (cut(image, box), cut(target, box))


def preprocess(
    image: nib.Nifti1Image,
    target: nib.Nifti1Image,
    plans: dict,
    dataset_json: dict,
    configuration: str = "3d_fullres",
) -> Volume:
    """``image`` and ``target`` in the plans' preprocessed space, as the engine's predictor does it."""
    config = plans["configurations"][configuration]
    sct = dataset_json.get("image_orientation", "LPI")
    arrays = []
    for img in (image, target):
        oriented, reo = ori.to_sct_orientation(np.asarray(img.get_fdata(dtype=np.float32)), img.affine, sct)
        arrays.append(ori.xyz_to_zyx(oriented)[None])
    spacing = ori.reverse_spacing(reo.zooms(image.header.get_zooms()[:3]))
    tf = [int(i) for i in plans["transpose_forward"]]
    data, seg = (np.ascontiguousarray(a.transpose([0, *[i + 1 for i in tf]])) for a in arrays)
    spacing = [float(spacing[i]) for i in tf]
    bbox, mask = nonzero_bbox(data)
    data = np.ascontiguousarray(data[(slice(None), *bbox_slices(bbox))])
    seg = np.ascontiguousarray(seg[(slice(None), *bbox_slices(bbox))])
    target_spacing = [float(s) for s in config["spacing"]]
    new_shape = compute_new_shape(data.shape[1:], spacing, target_spacing)
    data = normalize(data, mask, config, plans.get("foreground_intensity_properties_per_channel"))
    kw = config.get("resampling_fn_data_kwargs") or {}
    data = resample_to_shape(
        data,
        new_shape,
        spacing,
        target_spacing,
        order=int(kw.get("order", 3)),
        order_z=int(kw.get("order_z", 0)),
        force_separate_z=kw.get("force_separate_z"),
    )
    seg = resample_to_shape(seg, new_shape, spacing, target_spacing, order=1, order_z=0)
    return Volume(image=data.astype(np.float32), target=(seg[0] > 0.5).astype(np.uint8))


def sample_patch(
    volume: Volume, patch: tuple[int, int, int], rng: np.random.Generator, foreground_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """A patch (zero-padded where the volume is smaller), centred on a random foreground voxel with
    probability ``foreground_fraction`` (nnU-Net oversamples foreground the same way)."""
    image, target = volume.image, volume.target
    pad = [(0, 0)] + [
        (max(0, p - s) // 2, max(0, p - s) - max(0, p - s) // 2)
        for p, s in zip(patch, target.shape, strict=True)
    ]
    image = np.pad(image, pad)
    target = np.pad(target, pad[1:])
    fg = np.argwhere(target) if rng.random() < foreground_fraction else np.empty((0, 3))
    if len(fg):
        centre = fg[rng.integers(len(fg))]
        start = [
            int(np.clip(c - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, s - p))
            for c, p, s in zip(centre, patch, target.shape, strict=True)
        ]
    else:
        start = [int(rng.integers(0, s - p + 1)) for p, s in zip(patch, target.shape, strict=True)]
    box = tuple(slice(a, a + p) for a, p in zip(start, patch, strict=True))
    return image[(slice(None), *box)], target[box]
