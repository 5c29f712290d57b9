"""Synthetic spinal cord MRI with known lesions: pure functions returning nibabel images.

The anatomy lives in scanner (RAS+) millimetres, independent of any image grid: a curved cord of
elliptical cross-section (white matter with a grey-matter butterfly), a ring of CSF, vertebral
bodies with discs in front, laminae behind, muscle around. Lesions are ellipsoids defined in the
cord's own coordinates, so they follow its curve and stay inside it. An image is the anatomy sampled
on a grid (orientation, voxel size, field of view, obliquity), with partial volume by supersampling
each voxel, a contrast's tissue intensities, a smooth multiplicative bias field and Rician noise.
Ground truth masks are the voxels more than half filled by lesion (cord) on the same grid.

Example::

    rng = np.random.default_rng(0)
    anat = make_anatomy(rng, n_lesions=2)
    grid = Grid(orientation=("P", "S", "R"), voxel_size=(0.8,) * 3)
    ph = make_phantom("T2w", rng=rng, anatomy=anat, grid=grid, look=Appearance(noise=0.02))
    ph.image, ph.lesion, ph.cord  # nib.Nifti1Image on one grid
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "CONTRASTS",
    "Lesion",
    "Anatomy",
    "Phantom",
    "Grid",
    "Appearance",
    "make_anatomy",
    "make_phantom",
    "grid_affine",
    "add_lesions",
    "SAGITTAL_ORIENTATIONS",
    "AXIAL_ORIENTATIONS",
]

# Tissue classes, in order of precedence when regions overlap (higher wins).
MUSCLE, BONE, DISC, CSF, WM, GM, LESION = range(7)
N_TISSUES = 7

#: Mean tissue intensities per contrast, as fractions of the contrast's full scale
#: (muscle, bone marrow, disc, CSF, white matter, grey matter, lesion).
#: T2w/T2*w: lesions and CSF bright; UNIT1: cord bright, CSF dark, lesions darker than the cord.
CONTRASTS: dict[str, dict] = {
    "T2w": {"tissue": (0.26, 0.34, 0.62, 1.00, 0.36, 0.42, 0.66), "scale": 1500.0, "rician": True},
    "T2starw": {"tissue": (0.22, 0.12, 0.40, 0.95, 0.34, 0.46, 0.68), "scale": 900.0, "rician": True},
    "UNIT1": {"tissue": (0.48, 0.80, 0.32, 0.10, 0.76, 0.66, 0.46), "scale": 4095.0, "rician": False},
    "inv-1": {"tissue": (0.16, 0.30, 0.40, 0.52, 0.22, 0.18, 0.14), "scale": 2000.0, "rician": True},
    "inv-2": {"tissue": (0.50, 0.70, 0.60, 0.78, 0.60, 0.64, 0.66), "scale": 2000.0, "rician": True},
}
CONTRASTS["T2star"] = CONTRASTS["T2starw"]  # deprecated BIDS suffix, same sequence

#: Orientations scanners and converters write (nibabel axis codes: where each array axis points TO).
SAGITTAL_ORIENTATIONS = (("P", "S", "R"), ("A", "S", "L"), ("P", "I", "R"), ("R", "A", "S"), ("L", "P", "S"))
AXIAL_ORIENTATIONS = (("L", "A", "S"), ("R", "A", "S"), ("L", "P", "S"), ("R", "P", "I"))

#: the vertebral column along S-I: where the phase ``(z / vertebra_period + vertebra_phase) mod 1`` is above
#: DISC_PHASE lies disc, below it bone; vertebral bodies are elliptic cylinders (R-L, A-P semi-axes) whose
#: posterior surface lies BODY_GAP_MM in front of the thecal sac (bidsapp.demo.vertebrae names the discs)
DISC_PHASE = 0.78
BODY_SEMI_AXES_MM = (9.0, 7.0)
BODY_GAP_MM = 1.5

_AXIS_VECTORS = {
    "R": (1, 0, 0),
    "L": (-1, 0, 0),
    "A": (0, 1, 0),
    "P": (0, -1, 0),
    "S": (0, 0, 1),
    "I": (0, 0, -1),
}


@dataclass(frozen=True)
class Lesion:
    """An ellipsoid in cord coordinates: centre offset from the centreline in units of the cord's
    semi-axes (``u`` along R-L, ``v`` along A-P, both within the unit disc) at height ``z`` (mm), and
    semi-axes in mm (R-L, A-P, S-I)."""

    u: float
    v: float
    z: float
    semi_axes: tuple[float, float, float]

    @property
    def diameters_mm(self) -> tuple[float, float, float]:
        return tuple(2 * s for s in self.semi_axes)


@dataclass(frozen=True)
class Anatomy:
    """One subject's cord, in RAS+ mm. The centreline is ``x = ax sin(kx z + px)``,
    ``y = ay sin(ky z + py)``; the cord's semi-axes (R-L ``rx``, A-P ``ry``) swell by ``swell``
    (relative) around ``z_swell`` (cervical enlargement)."""

    ax: float
    kx: float
    px: float
    ay: float
    ky: float
    py: float
    rx: float
    ry: float
    swell: float
    z_swell: float
    csf_margin: tuple[float, float, float]  # R-L, anterior, posterior CSF thickness (mm)
    vertebra_period: float
    vertebra_phase: float
    lesions: tuple[Lesion, ...] = field(default_factory=tuple)

    def centreline(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.ax * np.sin(self.kx * z + self.px), self.ay * np.sin(self.ky * z + self.py)

    def radii(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        factor = 1.0 + self.swell * np.exp(-(((z - self.z_swell) / 30.0) ** 2))
        return self.rx * factor, self.ry * factor


@dataclass(frozen=True)
class Phantom:
    """An image and its ground truth on the same grid (uint8 0/1 masks)."""

    contrast: str
    image: nib.Nifti1Image
    lesion: nib.Nifti1Image
    cord: nib.Nifti1Image
    anatomy: Anatomy


@dataclass(frozen=True)
class Grid:
    """Where and how an image samples the anatomy. ``orientation``: nibabel axis codes of the array
    axes; ``voxel_size`` per array axis (mm); ``fov_mm``: R-L, A-P, S-I extents; ``centre``: RAS mm of
    the grid centre (None: near the cord, a random offset of a few mm); ``tilt_deg``: obliquity about
    R-L (None: random +-8 degrees)."""

    orientation: Sequence[str] = ("R", "A", "S")
    voxel_size: Sequence[float] = (0.8, 0.8, 0.8)
    fov_mm: Sequence[float] = (40.0, 48.0, 96.0)
    centre: Sequence[float] | None = None
    tilt_deg: float | None = None


@dataclass(frozen=True)
class Appearance:
    """How the sampled tissues look. ``noise``: Rician sigma relative to the contrast's scale (None:
    1-3 %); ``bias``: strength of the bias field (None: 0.1-0.25); ``intensity_jitter``: relative
    per-tissue spread of the contrast's mean intensities; ``lesion_contrast``: lesion intensity
    relative to the brighter (ratio > 1) or darker (ratio < 1) of white and grey matter (None: the
    contrast's table); integer ``dtype`` images are rounded and clipped as scanners store them."""

    noise: float | None = None
    bias: float | None = None
    intensity_jitter: float = 0.08
    lesion_contrast: float | None = None
    dtype: type = np.int16


def _random_lesion(
    rng: np.random.Generator, z_range: tuple[float, float], size_range: tuple[float, float]
) -> Lesion:
    """Lesion with a longest diameter (along the cord, as MS cord lesions are elongated) drawn in
    ``size_range`` mm and in-plane diameters of 2-6 mm; centre mostly in white matter (outer cord)."""
    length = rng.uniform(*size_range)
    in_plane_max = max(2.0, min(6.0, length))
    dx, dy = rng.uniform(2.0, in_plane_max), rng.uniform(2.0, min(in_plane_max, 5.0))
    radius = math.sqrt(rng.uniform(0.1, 0.55))  # white matter lies at normalised radius ~0.5-1
    angle = rng.uniform(0, 2 * math.pi)
    z = rng.uniform(*z_range)
    return Lesion(
        u=radius * math.cos(angle),
        v=radius * math.sin(angle),
        z=float(z),
        semi_axes=(dx / 2, dy / 2, length / 2),
    )


def add_lesions(
    anatomy: Anatomy,
    rng: np.random.Generator,
    n: int,
    *,
    z_range: tuple[float, float] = (-35, 35),
    size_range: tuple[float, float] = (2.0, 15.0),
) -> Anatomy:
    """A copy of ``anatomy`` with ``n`` more random lesions (e.g. new lesions at a follow-up)."""
    new = tuple(_random_lesion(rng, z_range, size_range) for _ in range(n))
    return replace(anatomy, lesions=anatomy.lesions + new)


def make_anatomy(
    rng: np.random.Generator,
    *,
    n_lesions: int | None = None,
    z_range: tuple[float, float] = (-35, 35),
    lesion_size_range: tuple[float, float] = (2.0, 15.0),
    cord_diameter_range: tuple[float, float] = (7.0, 10.0),
) -> Anatomy:
    """Random subject anatomy. ``n_lesions`` None draws 0-4. The cord's mean diameter (geometric mean
    of the R-L and A-P diameters) lies in ``cord_diameter_range``; R-L/A-P ratio 1.2-1.5."""
    swell = rng.uniform(0.0, 0.08)
    diameter = rng.uniform(cord_diameter_range[0], cord_diameter_range[1] / (1 + swell))  # swollen too
    ratio = rng.uniform(1.2, 1.5)
    rx, ry = diameter / 2 * math.sqrt(ratio), diameter / 2 / math.sqrt(ratio)
    anatomy = Anatomy(
        ax=rng.uniform(0, 2.0),
        kx=2 * math.pi / rng.uniform(120, 250),
        px=rng.uniform(0, 2 * math.pi),
        ay=rng.uniform(2.0, 6.0),
        ky=2 * math.pi / rng.uniform(120, 220),
        py=rng.uniform(0, 2 * math.pi),
        rx=rx,
        ry=ry,
        swell=swell,
        z_swell=rng.uniform(-40, 40),
        csf_margin=(rng.uniform(2.0, 3.5), rng.uniform(2.0, 4.0), rng.uniform(1.5, 3.0)),
        vertebra_period=rng.uniform(15.0, 19.0),
        vertebra_phase=rng.uniform(0, 1),
    )
    n = int(rng.integers(0, 5)) if n_lesions is None else n_lesions
    return add_lesions(anatomy, rng, n, z_range=z_range, size_range=lesion_size_range)


def _rotation_x(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])


def grid_affine(
    orientation: Sequence[str],
    voxel_size: Sequence[float],
    shape: Sequence[int],
    centre: Sequence[float] = (0.0, 0.0, 0.0),
    tilt_deg: float = 0.0,
) -> np.ndarray:
    """Affine of a grid whose array axes point to ``orientation`` (nibabel codes, e.g. ("P","S","R")),
    with ``voxel_size`` per array axis, centred on ``centre`` (RAS mm), tilted about the R-L axis."""
    directions = np.array([_AXIS_VECTORS[c] for c in orientation], dtype=float).T  # columns
    if abs(np.linalg.det(directions)) != 1:
        raise ValueError(f"orientation {tuple(orientation)} does not name three different axes")
    linear = _rotation_x(tilt_deg) @ directions @ np.diag([float(v) for v in voxel_size])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(centre, float) - linear @ ((np.asarray(shape, float) - 1) / 2)
    return affine


def shape_for_fov(orientation: Sequence[str], voxel_size: Sequence[float], fov_mm: Sequence[float]) -> tuple:
    """Array shape covering ``fov_mm`` (R-L, A-P, S-I extents) with the given axes and voxel sizes."""
    world = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    return tuple(
        max(1, int(round(fov_mm[world[c]] / v))) for c, v in zip(orientation, voxel_size, strict=True)
    )


def _labels(anatomy: Anatomy, xyz: np.ndarray) -> np.ndarray:
    """Tissue class (int8) of each point of ``xyz`` (3, N) in RAS mm."""
    x, y, z = xyz
    cx, cy = anatomy.centreline(z)
    rx, ry = anatomy.radii(z)
    dx, dy = x - cx, y - cy
    u, v = dx / rx, dy / ry
    labels = np.full(x.shape, MUSCLE, dtype=np.int8)

    # vertebral bodies in front of the canal, discs between them; laminae behind
    m_lr, m_ant, m_post = anatomy.csf_margin
    phase = np.mod(z / anatomy.vertebra_period + anatomy.vertebra_phase, 1.0)
    is_disc = phase > DISC_PHASE
    body_rx, body_ry = BODY_SEMI_AXES_MM
    body_cy = cy + ry + m_ant + BODY_GAP_MM + body_ry
    in_body = (dx / body_rx) ** 2 + ((y - body_cy) / body_ry) ** 2 <= 1
    labels[in_body] = BONE
    labels[in_body & is_disc] = DISC
    lamina_cy = cy - ry - m_post - 3.0
    in_lamina = ((dx / (rx + m_lr + 5.0)) ** 2 + ((y - lamina_cy) / 2.5) ** 2 <= 1) & (phase < 0.6)
    labels[in_lamina] = BONE

    # thecal sac (CSF), wider in front than behind
    sac_ry = np.where(dy >= 0, ry + m_ant, ry + m_post)
    labels[(dx / (rx + m_lr)) ** 2 + (dy / sac_ry) ** 2 <= 1] = CSF

    cord = u * u + v * v <= 1
    labels[cord] = WM
    # the finer structures are computed on the few points inside the cord only
    inside_cord = np.flatnonzero(cord)
    cu, cv, cz = u[inside_cord], v[inside_cord], z[inside_cord]
    cdx, cdy, crx, cry = dx[inside_cord], dy[inside_cord], rx[inside_cord], ry[inside_cord]
    # grey-matter butterfly: two tilted horns joined by a commissure
    horn = (np.abs(cu) < 0.3) & (np.abs(cv) < 0.11)
    for side in (-1.0, 1.0):
        hu = cu - side * 0.28
        ru, rv = hu * 0.94 - side * cv * 0.34, side * hu * 0.34 + cv * 0.94
        horn |= (ru / 0.17) ** 2 + (rv / 0.62) ** 2 <= 1
    labels[inside_cord[horn]] = GM

    for lesion in anatomy.lesions:
        a, b, c = lesion.semi_axes
        inside = ((cdx - lesion.u * crx) / a) ** 2 + ((cdy - lesion.v * cry) / b) ** 2 + (
            (cz - lesion.z) / c
        ) ** 2 <= 1
        labels[inside_cord[inside]] = LESION
    return labels


def _supersampling(voxel_size: Sequence[float]) -> list[np.ndarray]:
    """Sub-voxel offsets (voxel units): one sample per mm along each axis, so thick slices average
    their whole thickness (partial volume) as the scanner does; in-plane, the point spread function
    (a Gaussian blur in :func:`make_phantom`) softens the edges."""
    counts = [max(1, math.ceil(v / 1.0 - 1e-6)) for v in voxel_size]
    axes = [(np.arange(n) + 0.5) / n - 0.5 for n in counts]
    return [np.array(o) for o in np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)]


def _rasterise(
    anatomy: Anatomy,
    affine: np.ndarray,
    shape: Sequence[int],
    voxel_size: Sequence[float],
    tissue: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean intensity, lesion fraction and cord fraction of every voxel."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    intensity = np.zeros(idx.shape[1], np.float32)
    lesion = np.zeros_like(intensity)
    cord = np.zeros_like(intensity)
    offsets = _supersampling(voxel_size)
    affine32 = affine.astype(np.float32)
    for off in offsets:
        xyz = affine32[:3, :3] @ (idx + off[:, None].astype(np.float32)) + affine32[:3, 3:4]
        labels = _labels(anatomy, xyz)
        intensity += tissue[labels]
        lesion += labels == LESION
        cord += labels >= WM
    n = len(offsets)
    return tuple(a.reshape(shape) / n for a in (intensity, lesion, cord))


def _bias_field(
    rng: np.random.Generator, affine: np.ndarray, shape: Sequence[int], strength: float
) -> np.ndarray:
    """Smooth multiplicative field exp(sum of a few low-frequency waves), +-``strength`` roughly:
    coil sensitivity varies over centimetres."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    affine32 = affine.astype(np.float32)
    xyz = affine32[:3, :3] @ idx + affine32[:3, 3:4]
    log_field = np.zeros(idx.shape[1], np.float32)
    for _ in range(4):
        k = rng.normal(size=3)
        k = (k * 2 * math.pi / rng.uniform(80, 200) / np.linalg.norm(k)).astype(np.float32)
        log_field += np.float32(rng.normal(0, strength / 2)) * np.cos(
            k @ xyz + np.float32(rng.uniform(0, 6.28))
        )
    log_field += xyz[1] * np.float32(rng.uniform(-1, 1) * strength / 30.0)  # coil behind the neck
    return np.exp(log_field).reshape(shape)


def _tissue_intensities(
    contrast: str, rng: np.random.Generator, jitter: float, lesion_contrast: float | None
) -> np.ndarray:
    base = np.array(CONTRASTS[contrast]["tissue"], dtype=np.float32)
    tissue = base * rng.uniform(1 - jitter, 1 + jitter, size=N_TISSUES).astype(np.float32)
    if lesion_contrast is not None:  # relative to the brighter (T2) or darker (T1) of white and grey matter
        cord = (tissue[WM], tissue[GM])
        tissue[LESION] = (max(cord) if lesion_contrast > 1 else min(cord)) * lesion_contrast
    return tissue * CONTRASTS[contrast]["scale"]


def make_phantom(
    contrast: str,
    *,
    rng: np.random.Generator,
    anatomy: Anatomy | None = None,
    grid: Grid = Grid(),
    look: Appearance = Appearance(),
) -> Phantom:
    """Sample ``anatomy`` (random if None) as one ``contrast`` image (a key of :data:`CONTRASTS`) on
    ``grid``, looking as ``look`` says. qform and sform both get code 1 (scanner), as dcm2niix writes
    them. The random draws come in a fixed order (grid centre, tilt, tissue intensities, bias, noise),
    each only when its setting is None, so one seed gives byte-identical images."""
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; expected one of {sorted(CONTRASTS)}")
    anatomy = anatomy if anatomy is not None else make_anatomy(rng)
    voxel_size = grid.voxel_size
    shape = shape_for_fov(grid.orientation, voxel_size, grid.fov_mm)
    centre = grid.centre
    if centre is None:
        centre = (rng.uniform(-3, 3), rng.uniform(-3, 3) + 2.0, rng.uniform(-5, 5))
    tilt = rng.uniform(-8, 8) if grid.tilt_deg is None else grid.tilt_deg
    affine = grid_affine(grid.orientation, voxel_size, shape, centre, tilt)
    tissue = _tissue_intensities(contrast, rng, look.intensity_jitter, look.lesion_contrast)
    clean, lesion_frac, cord_frac = _rasterise(anatomy, affine, shape, voxel_size, tissue)
    clean = ndimage.gaussian_filter(clean, sigma=0.5, mode="nearest")  # point spread function

    strength = rng.uniform(0.1, 0.25) if look.bias is None else look.bias
    data = clean * _bias_field(rng, affine, shape, strength)
    sigma = (rng.uniform(0.01, 0.03) if look.noise is None else look.noise) * CONTRASTS[contrast]["scale"]
    n1 = rng.normal(0, sigma, shape).astype(np.float32)
    if CONTRASTS[contrast]["rician"]:  # magnitude of complex Gaussian noise
        n2 = rng.normal(0, sigma, shape).astype(np.float32)
        data = np.sqrt((data + n1) ** 2 + n2**2)
    else:  # UNIT1 is a ratio image, noise roughly Gaussian inside the body
        data = data + n1
    data = _cast(data, look.dtype, contrast)
    return Phantom(
        contrast=contrast,
        image=_nifti(data, affine, voxel_size),
        lesion=_nifti((lesion_frac > 0.5).astype(np.uint8), affine, voxel_size),
        cord=_nifti((cord_frac > 0.5).astype(np.uint8), affine, voxel_size),
        anatomy=anatomy,
    )


def _cast(data: np.ndarray, dtype: type, contrast: str) -> np.ndarray:
    if not np.issubdtype(dtype, np.integer):
        return data.astype(dtype)
    top = 4095 if contrast == "UNIT1" else np.iinfo(dtype).max
    return np.clip(np.rint(data), 0, top).astype(dtype)


def _nifti(data: np.ndarray, affine: np.ndarray, voxel_size: Sequence[float]) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms(tuple(float(v) for v in voxel_size))
    return img
