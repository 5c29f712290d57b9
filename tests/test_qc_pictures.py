"""QC pictures: sizes, orientation, lesion slices included, overlay pixels where the mask is."""
from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bidsapp.qc import layout
from bidsapp.qc.pictures import COLUMNS, GAP_PX, THUMB_PX, TILE_PX, VERMILLION, VIEWS, render_image_qc

SHAPE = (48, 40, 30)          # RAS: x (towards R), y (towards A), z (towards S)
ZOOMS = (0.8, 0.8, 2.5)


def _phantom():
    """Cord cylinder along z; lesion 1 in the cord's right-anterior part (z 8-9), lesion 2 at z 20."""
    x, y, _ = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    cord = (x - 24) ** 2 + (y - 20) ** 2 < 36
    lesion = np.zeros(SHAPE, bool)
    lesion[25:28, 21:24, 8:10] = True           # x > centre = patient's right; y > centre = anterior
    lesion[22:24, 18:20, 20] = True
    image = 100.0 + 200.0 * cord + 150.0 * lesion + np.random.default_rng(0).normal(0, 5, SHAPE)
    return image.astype(np.float32), lesion, cord


def _as_lps_images(image, lesion, cord):
    """Store the RAS phantom flipped in x and y (LPS): the renderer must undo it."""
    affine = np.diag([-ZOOMS[0], -ZOOMS[1], ZOOMS[2], 1.0])
    def mk(a, dtype):
        return nib.Nifti1Image(np.ascontiguousarray(a[::-1, ::-1, :]).astype(dtype), affine)
    return mk(image, np.float32), mk(lesion, np.uint8), mk(cord, np.uint8)


def _open(png: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(png))
    img.load()
    return img


def _tiles(img: Image.Image, n: int) -> list[np.ndarray]:
    arr = np.asarray(img.convert("RGB")).astype(int)
    step = TILE_PX + GAP_PX
    return [arr[(i // COLUMNS) * step:(i // COLUMNS) * step + TILE_PX,
                (i % COLUMNS) * step:(i % COLUMNS) * step + TILE_PX] for i in range(n)]


@pytest.fixture(scope="module")
def pictures():
    image, lesion, cord = _phantom()
    img, les, _ = _as_lps_images(image, lesion, cord)
    return render_image_qc(img, les), lesion


def test_views_sizes_and_lesion_slices(pictures):
    out, lesion = pictures
    assert tuple(out) == VIEWS
    axial = _open(out["axial"])
    slices = [int(z) for z in axial.text["cordlesion:axial_slices"].split(",")]
    assert {8, 9, 20} <= set(slices)                          # every lesion slice is a tile
    assert len(slices) >= layout.CONTEXT_TILES
    rows = -(-len(slices) // COLUMNS)
    assert axial.size == (COLUMNS * TILE_PX + (COLUMNS - 1) * GAP_PX, rows * TILE_PX + (rows - 1) * GAP_PX)
    assert _open(out["axialoverlay"]).size == axial.size
    assert _open(out["thumb"]).size == (THUMB_PX, THUMB_PX)
    sag = _open(out["sagittaloverlay"])
    assert sag.size == _open(out["sagittal"]).size
    assert 26 in [int(x) for x in sag.text["cordlesion:sagittal_slices"].split(",")]  # richest in lesion


def test_overlay_only_on_lesion_tiles_in_vermillion_and_radiological(pictures):
    out, lesion = pictures
    axial, overlay = _open(out["axial"]), _open(out["axialoverlay"])
    slices = [int(z) for z in axial.text["cordlesion:axial_slices"].split(",")]
    for z, plain, over in zip(slices, _tiles(axial, len(slices)), _tiles(overlay, len(slices)), strict=True):
        changed = np.abs(over - plain).sum(axis=2) > 0
        changed[:18] = False                                  # the caption row is text, not overlay
        if not lesion[:, :, z].any():
            assert not changed.any(), f"overlay drawn on lesion-free slice z{z}"
            continue
        assert changed.sum() > 20
        outline = (over == VERMILLION).all(axis=2)
        assert outline.sum() > 0
        colour = over[changed].mean(axis=0)
        assert colour[0] > colour[1] > colour[2]              # orange-red
        if z in (8, 9):
            # Lesion 1 is right-anterior of the cord centre: upper-left of the tile in radiological display.
            rows, cols = np.nonzero(changed)
            assert rows.mean() < TILE_PX / 2 and cols.mean() < TILE_PX / 2


def test_overlay_area_matches_mask_area():
    """One lesion, one slice: overlay pixels = lesion area x (pixels per voxel)^2, within the edge error."""
    image, _, cord = _phantom()
    lesion = np.zeros(SHAPE, bool)
    lesion[20:26, 18:22, 15] = True                           # 6 x 4 voxels
    img, les, crd = _as_lps_images(image, lesion, cord)
    out = render_image_qc(img, les)
    axial, overlay = _open(out["axial"]), _open(out["axialoverlay"])
    slices = [int(z) for z in axial.text["cordlesion:axial_slices"].split(",")]
    k = slices.index(15)
    plain, over = _tiles(axial, len(slices))[k], _tiles(overlay, len(slices))[k]
    changed = np.abs(over - plain).sum(axis=2) > 0
    changed[:18] = False
    fov_vox = min(layout.NOCORD_FOV_MM, max(SHAPE[0] * ZOOMS[0], SHAPE[1] * ZOOMS[1])) / ZOOMS[0]
    px_per_voxel = TILE_PX / fov_vox
    assert changed.sum() == pytest.approx(24 * px_per_voxel ** 2, rel=0.15)


def test_lesion_free_image_shows_the_cord():
    image, _, cord = _phantom()
    img, les, crd = _as_lps_images(image, np.zeros(SHAPE, bool), cord)
    out = render_image_qc(img, les, crd)
    axial, overlay = _open(out["axial"]), _open(out["axialoverlay"])
    slices = [int(z) for z in axial.text["cordlesion:axial_slices"].split(",")]
    assert len(slices) == layout.CONTEXT_TILES and slices[0] == 0 and slices[-1] == SHAPE[2] - 1
    plain = _tiles(axial, 1)[0]
    centre = plain[TILE_PX // 2 - 5:TILE_PX // 2 + 5, TILE_PX // 2 - 5:TILE_PX // 2 + 5].mean()
    assert centre > 200 and plain[30:40, 30:40].mean() < 120   # bright cord in the middle of the tile
    changed = np.abs(_tiles(overlay, 1)[0] - plain).sum(axis=2) > 0
    assert changed.sum() > 0 and not (_tiles(overlay, 1)[0][changed] == VERMILLION).all(axis=1).any()


def test_every_lesion_keeps_a_tile_past_the_cap():
    mask = np.zeros((10, 10, 100), bool)
    mask[4:6, 4:6, 0:90] = True                               # one long lesion
    for z in range(3, 90, 10):
        mask[0, 0, z] = True                                  # nine tiny ones on their own slices
    chosen = layout.choose_axial_slices(mask, None, max_tiles=12, context=4)
    assert {z for z in range(3, 90, 10)} <= set(chosen)
    assert len(chosen) <= 12 + 4


def test_mask_on_another_grid_is_refused():
    image, lesion, cord = _phantom()
    img, les, _ = _as_lps_images(image, lesion, cord)
    with pytest.raises(ValueError, match="shape"):
        render_image_qc(img, nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)))
