"""Per-image QC pictures: axial mosaic and sagittal view, each with and without the lesion overlay.

Everything is reoriented to RAS first, then shown in radiological convention (the patient's right on
the viewer's left) with orientation letters on every tile, so no picture depends on how the scan was
stored. The lesion is filled in Okabe-Ito vermillion with a solid outline; the cord outline, when a
cord mask is given, in Okabe-Ito sky blue: both stay distinguishable with the common colour-vision
deficiencies. Every picture is returned as PNG bytes; nothing is written here.
"""
from __future__ import annotations

import io
import logging
from functools import lru_cache

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
from scipy import ndimage

from ..derivatives import QC_VIEWS
from ..orientation import to_orientation
from . import layout

log = logging.getLogger(__name__)

VERMILLION = (213, 94, 0)      # Okabe-Ito
SKY_BLUE = (86, 180, 233)      # Okabe-Ito
FILL_ALPHA = 0.45
TILE_PX = 160                  # axial tile edge in pixels (48 mm window -> ~3.3 px/mm)
COLUMNS = 8
GAP_PX = 2
SAGITTAL_MAX_PX = 560          # longest edge of one sagittal panel
SAGITTAL_MIN_PX = 160          # shortest height of one sagittal panel
THUMB_PX = 112
PERCENTILES = (1.0, 99.5)      # intensity window, robust to a few bright voxels (fat, vessels)

VIEWS = QC_VIEWS  # their names are made with every other per-image name (derivatives.image_names)


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _ras(image: nib.Nifti1Image, mask: nib.Nifti1Image, cord: nib.Nifti1Image | None):
    """Image (float32), mask and cord (bool) as RAS arrays, with the RAS voxel sizes."""
    shape = image.shape[:3]
    for name, other in (("lesion mask", mask), ("cord mask", cord)):
        if other is not None and other.shape[:3] != shape:
            raise ValueError(f"{name} shape {other.shape} differs from image shape {shape}")
    data, r = to_orientation(np.asarray(image.dataobj, dtype=np.float32), image.affine, ("R", "A", "S"))
    les = r.apply(np.asanyarray(mask.dataobj) != 0)
    crd = r.apply(np.asanyarray(cord.dataobj) != 0) if cord is not None else None
    return np.ascontiguousarray(data), les, crd, r.zooms(image.header.get_zooms()[:3])


def _intensity_window(planes: list[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([p.ravel() for p in planes])
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    return lo, (hi if hi > lo else lo + 1.0)


def _to_gray(plane: np.ndarray, size: tuple[int, int], win: tuple[float, float]) -> np.ndarray:
    """Resample a float plane (already in display orientation) to ``size`` (w, h) and window to uint8."""
    big = np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    return np.clip((big - win[0]) * (255.0 / (win[1] - win[0])), 0, 255).astype(np.uint8)


def _to_mask(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resample of a boolean plane, so the overlay shows the true voxels."""
    return np.asarray(Image.fromarray(plane.astype(np.uint8) * 255, mode="L").resize(size, Image.NEAREST)) > 0


def _overlay(gray: np.ndarray, lesion: np.ndarray, cord: np.ndarray | None) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    if cord is not None:
        rgb[cord & ~ndimage.binary_erosion(cord)] = SKY_BLUE
    rgb[lesion] = (1 - FILL_ALPHA) * rgb[lesion] + FILL_ALPHA * np.asarray(VERMILLION, np.float32)
    rgb[lesion & ~ndimage.binary_erosion(lesion)] = VERMILLION
    return rgb.astype(np.uint8)


def _label(img: Image.Image, letters: tuple[str, str, str, str], caption: str, lesion: bool) -> None:
    """Orientation letters (top, bottom, left, right) and a slice caption, drawn in place."""
    draw, font = ImageDraw.Draw(img), _font(12)
    w, h = img.size
    style = {"font": font, "fill": (255, 255, 255), "stroke_width": 2, "stroke_fill": (0, 0, 0)}
    top, bottom, left, right = letters
    draw.text((w / 2, 2), top, anchor="mt", **style)
    draw.text((w / 2, h - 2), bottom, anchor="mb", **style)
    draw.text((3, h / 2), left, anchor="lm", **style)
    draw.text((w - 3, h / 2), right, anchor="rm", **style)
    draw.text((3, 2), caption, anchor="lt", **{**style, "fill": VERMILLION if lesion else (255, 255, 255)})


def _tiles(planes, lesions, cords, size, win, letters, captions, overlay: bool) -> list[Image.Image]:
    out = []
    for plane, les, crd, caption in zip(planes, lesions, cords, captions, strict=True):
        gray = _to_gray(plane, size, win)
        les_px = _to_mask(les, size)
        if overlay:
            arr = _overlay(gray, les_px, _to_mask(crd, size) if crd is not None else None)
        else:
            arr = np.repeat(gray[..., None], 3, axis=2)
        tile = Image.fromarray(arr, mode="RGB")
        _label(tile, letters, caption, bool(les.any()))
        out.append(tile)
    return out


def _grid(tiles: list[Image.Image], columns: int) -> Image.Image:
    cols = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // cols)
    w = max(t.size[0] for t in tiles)
    h = max(t.size[1] for t in tiles)
    canvas = Image.new("RGB", (cols * w + (cols - 1) * GAP_PX, rows * h + (rows - 1) * GAP_PX))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % cols) * (w + GAP_PX), (i // cols) * (h + GAP_PX)))
    return canvas


def _png(img: Image.Image, text: dict[str, str]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=6)
    return buf.getvalue()


def _axial_display(a: np.ndarray) -> np.ndarray:
    """RAS axial slice a[x, y] -> display rows A..P, columns R..L (radiological)."""
    return a.T[::-1, ::-1]


def _sagittal_display(a: np.ndarray) -> np.ndarray:
    """RAS sagittal slice a[y, z] -> display rows S..I, columns A..P."""
    return a.T[::-1, ::-1]


def _axial_parts(data, les, crd, zooms):
    zs = layout.choose_axial_slices(les, crd)
    fill = float(data.min())
    planes, lesions, cords = [], [], []
    for z in zs:
        win = layout.axial_window(les, crd, z, zooms)
        planes.append(_axial_display(layout.crop(data[:, :, z], win, fill)))
        lesions.append(_axial_display(layout.crop(les[:, :, z], win)))
        cords.append(_axial_display(layout.crop(crd[:, :, z], win)) if crd is not None else None)
    return zs, planes, lesions, cords


def _sagittal_size(plane_shape: tuple[int, int], zooms: tuple[float, float, float]) -> tuple[int, int]:
    """Pixel size (w, h) keeping the physical aspect ratio (y spacing across, z spacing down)."""
    h_mm, w_mm = plane_shape[0] * zooms[2], plane_shape[1] * zooms[1]
    # Longest edge SAGITTAL_MAX_PX, but never flatter than SAGITTAL_MIN_PX (axial scans cover few cm).
    scale = max(SAGITTAL_MAX_PX / max(h_mm, w_mm), SAGITTAL_MIN_PX / h_mm)
    return max(1, round(w_mm * scale)), max(1, round(h_mm * scale))


def render_image_qc(image: nib.Nifti1Image, mask: nib.Nifti1Image,
                    cord: nib.Nifti1Image | None = None, *,
                    levels: nib.Nifti1Image | None = None) -> dict[str, bytes]:
    """QC pictures of one image and its lesion mask, as PNG bytes keyed by view name.

    Views: ``axial`` and ``axialoverlay`` (mosaic over the cord extent: every slice holding lesion plus
    evenly spaced cord slices, each cropped around the cord), ``sagittal`` and ``sagittaloverlay``
    (through the cord centre and the slices richest in lesion), ``thumb`` (one overlay tile, for tables).
    The chosen slices (RAS indices) are stored in each PNG's ``cordlesion:*`` text chunks. ``levels``: the
    cord's vertebral level map (``--disc-labels``): the sagittal views get a column of level names, one
    band per level (``cordlesion:levels``: ``name:first z-last z`` per band, RAS slices).
    """
    data, les, crd, zooms = _ras(image, mask, cord)
    lvl = _ras_levels(image, levels)
    zs, planes, lesions, cords = _axial_parts(data, les, crd, zooms)
    win = _intensity_window(planes)
    axial_letters = ("A", "P", "R", "L")
    captions = [f"z{z}" for z in zs]
    meta = {"cordlesion:axial_slices": ",".join(map(str, zs)), "cordlesion:orientation": "radiological",
            "cordlesion:tile_px": str(TILE_PX), "cordlesion:columns": str(COLUMNS)}
    out = {}
    for view, overlay in (("axial", False), ("axialoverlay", True)):
        tiles = _tiles(planes, lesions, cords, (TILE_PX, TILE_PX), win, axial_letters, captions, overlay)
        grid = _grid(tiles, COLUMNS)
        out[view] = _png(grid if overlay else grid.convert("L"), meta)  # plain views: grey, 1/3 the bytes
        if overlay:
            best = int(np.argmax([les_.sum() for les_ in lesions])) if les.any() else len(tiles) // 2
            out["thumb"] = _png(tiles[best].resize((THUMB_PX, THUMB_PX), Image.LANCZOS),
                                {"cordlesion:axial_slices": str(zs[best])})
    out.update(_sagittal(data, les, crd, zooms, win, lvl))
    return {view: out[view] for view in VIEWS}


def _ras_levels(image: nib.Nifti1Image, levels: nib.Nifti1Image | None) -> np.ndarray | None:
    if levels is None or levels.shape[:3] != image.shape[:3]:
        return None
    data, _ = to_orientation(np.asanyarray(levels.dataobj).astype(np.int16), image.affine, ("R", "A", "S"))
    return np.ascontiguousarray(data)


def level_bands(levels: np.ndarray, z_lo: int, z_hi: int) -> list[tuple[int, int, int]]:
    """(first z, last z, level) of each run of RAS axial slices whose cord voxels mostly hold one level,
    between ``z_lo`` and ``z_hi`` (exclusive), inferior first."""
    bands: list[tuple[int, int, int]] = []
    for z in range(max(0, z_lo), min(levels.shape[2], z_hi)):
        values = levels[:, :, z][levels[:, :, z] > 0]
        if values.size == 0:
            continue
        value = int(np.bincount(values).argmax())
        if bands and bands[-1][2] == value and bands[-1][1] == z - 1:
            bands[-1] = (bands[-1][0], z, value)
        else:
            bands.append((z, z, value))
    return bands


def _draw_levels(tile: Image.Image, bands: list[tuple[int, int, int]], z_hi: int, n_z: int) -> None:
    """A column of level names at the tile's right edge, a band (alternating colours) per level."""
    from ..analysis.levels import level_name

    draw, font = ImageDraw.Draw(tile), _font(11)
    w, h = tile.size
    style = {"font": font, "fill": (255, 255, 255), "stroke_width": 2, "stroke_fill": (0, 0, 0)}
    for i, (z0, z1, value) in enumerate(bands):  # display rows S..I: row of z is z_hi - 1 - z
        top, bottom = (z_hi - 1 - z1) * h / n_z, (z_hi - z0) * h / n_z
        draw.rectangle((w - 6, top, w - 1, bottom - 1), fill=SKY_BLUE if i % 2 else (240, 228, 66))
        if bottom - top >= 10:
            draw.text((w - 9, (top + bottom) / 2), level_name(value), anchor="rm", **style)


def _sagittal(data, les, crd, zooms, win, lvl=None) -> dict[str, bytes]:
    xs = layout.choose_sagittal_slices(les, crd)
    sw = layout.sagittal_window(les, crd, zooms)
    planes = [_sagittal_display(layout.crop(data[x], sw, float(data.min()))) for x in xs]
    lesions = [_sagittal_display(layout.crop(les[x], sw)) for x in xs]
    cords = [_sagittal_display(layout.crop(crd[x], sw)) if crd is not None else None for x in xs]
    size = _sagittal_size(planes[0].shape, zooms)
    captions = [f"x{x}" for x in xs]
    meta = {"cordlesion:sagittal_slices": ",".join(map(str, xs))}
    bands = level_bands(lvl, sw.lo[1], sw.hi[1]) if lvl is not None else []
    if bands:
        from ..analysis.levels import level_name

        meta["cordlesion:levels"] = ",".join(f"{level_name(v)}:{a}-{b}" for a, b, v in bands)
    out = {}
    for view, overlay in (("sagittal", False), ("sagittaloverlay", True)):
        tiles = _tiles(planes, lesions, cords, size, win, ("S", "I", "A", "P"), captions, overlay)
        for tile in tiles if bands else ():
            _draw_levels(tile, bands, sw.hi[1], sw.hi[1] - sw.lo[1])
        # Tall panels (sagittal scans) side by side; flat ones (axial scans, few slices) stacked.
        grid = _grid(tiles, len(tiles) if size[1] >= size[0] else 1)
        out[view] = _png(grid if overlay else grid.convert("L"), meta)
    return out
