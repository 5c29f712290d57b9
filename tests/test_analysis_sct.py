"""SCT 7.3's own expectations for ``sct_analyze_lesion``, on its own test cord.

Port of ``testing/cli/test_cli_sct_analyze_lesion.py`` (SCT 7.3): box lesions placed on the grid of SCT's
``t2/t2_seg-manual.nii.gz`` (AIL = nibabel P-S-R, 1 mm), expected values computed as SCT's
``compute_expected_measurements`` does, compared with SCT's rules: volume and damage ratio exact, the
rest within SCT's relative tolerance, the length never below the box's height (the angle correction
only lengthens), the diameter and bridges never above (the cosines only shorten).
"""
from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import center_of_mass

from bidsapp.analysis import analyze_lesions

SEG = Path(__file__).parent / "data" / "sct_t2_seg-manual.nii.gz"

# (start (x: AP, y: IS, z: LR), size) in the image's own AIL grid, with SCT's tolerance
CASES = [
    ([((29, 45, 25), (3, 10, 2))], 0.001),          # straight region
    ([((29, 27, 25), (1, 4, 1))], 0.001),           # SCT #3633
    ([((31, 0, 25), (4, 15, 3))], 0.1),             # curved region
    ([((31, 0, 25), (4, 15, 3)), ((29, 45, 25), (3, 10, 2))], 0.1),
    ([((29, 50, 29), (2, 5, 2)), ((29, 45, 23), (3, 10, 2))], 0.1),
]


def _mask(lesions, shape) -> np.ndarray:
    data = np.zeros(shape, np.uint8)
    for (x, y, z), (dx, dy, dz) in lesions:
        data[x:x + dx, y:y + dy, z:z + dz] = 1
    return data


def _expected(lesions, seg: np.ndarray) -> list[dict]:
    """SCT's compute_expected_measurements (interpolated bridges, no NLI), for box lesions."""
    # the largest lesion, as sct_analyze_lesion picks it (SCT's test helper takes the first one, which in
    # its last two-lesion case is the smaller: it passes there only through its 10 % tolerance)
    largest = max(lesions, key=lambda les: int(np.prod(les[1])))
    (ly0, ldy) = largest[0][1], largest[1][1]
    z_center = int(round(np.mean(range(ly0, ly0 + ldy))))
    mid = float(np.mean([center_of_mass(seg[:, z, :])[1] for z in range(z_center - 2, z_center + 3)]))
    decimal, z_ceil, z_floor = mid - math.floor(mid), int(np.ceil(mid)), int(np.floor(mid))
    out = []
    for (x0, y0, z0), (dx, dy, dz) in lesions:
        min_area = min(np.sum(seg[:, y, :]) for y in range(y0, y0 + dy))
        x = x0 + dx // 2
        bridges = {}
        for z in range(z0, z0 + dz):
            dorsal = [max(0.0, np.sum(seg[x:, y, z]) - (x0 + dx - x)) for y in range(y0, y0 + dy)]
            ventral = [max(0.0, np.sum(seg[:x, y, z]) - (x - x0)) for y in range(y0, y0 + dy)]
            bridges[z] = {"dorsal": min(dorsal), "ventral": min(ventral)}
        interp = {}
        for key in ("dorsal", "ventral"):
            ceil, floor = bridges.get(z_ceil, {}).get(key), bridges.get(z_floor, {}).get(key)
            if ceil is None and floor is None:
                ap = {z: min(np.sum(seg[:, y, z]) for y in range(y0, y0 + dy)) for z in (z_ceil, z_floor)}
                interp[key] = (decimal * ap[z_ceil] + (1 - decimal) * ap[z_floor]) / 2
            else:
                ceil = floor if ceil is None else ceil
                floor = ceil if floor is None else floor
                interp[key] = decimal * ceil + (1 - decimal) * floor
        out.append({"volume_mm3": dx * dy * dz, "length_mm": dy, "width_mm": dx,
                    "max_equivalent_diameter_mm": 2 * np.sqrt(dx * dz / np.pi),
                    "max_axial_damage_ratio": dx * dz / min_area,
                    "dorsal_bridge_width_mm": interp["dorsal"], "ventral_bridge_width_mm": interp["ventral"],
                    "midsagittal_slice": mid, "start": (x0, y0, z0)})
    return out


@pytest.mark.parametrize("lesions,rtol", CASES)
def test_matches_scts_expected_measurements(lesions, rtol):
    cord_img = nib.load(SEG)
    seg = np.asanyarray(cord_img.dataobj)
    mask = nib.Nifti1Image(_mask(lesions, seg.shape), cord_img.affine, cord_img.header)
    analysis = analyze_lesions(mask, cord_img)
    assert analysis.count == len(lesions)
    for expected in _expected(lesions, seg):
        x0, y0, z0 = expected["start"]
        row = next(r for r in analysis.lesions if r.first_slice == y0 and  # S-I is the image's axis 1
                   abs(r.centroid_x_mm - _world(cord_img, expected, lesions)[0]) < 1e-6)
        assert row.volume_mm3 == expected["volume_mm3"]
        assert row.max_axial_damage_ratio == pytest.approx(expected["max_axial_damage_ratio"], rel=1e-12)
        assert row.midsagittal_slice == pytest.approx(expected["midsagittal_slice"], rel=1e-9)
        for key in ("length_mm", "width_mm", "max_equivalent_diameter_mm", "dorsal_bridge_width_mm",
                    "ventral_bridge_width_mm"):
            assert getattr(row, key) == pytest.approx(expected[key], rel=rtol), key
        assert row.length_mm >= expected["length_mm"]
        assert round(row.max_equivalent_diameter_mm, 10) <= round(expected["max_equivalent_diameter_mm"], 10)
        assert round(row.dorsal_bridge_width_mm, 10) <= round(expected["dorsal_bridge_width_mm"], 10)
        assert round(row.ventral_bridge_width_mm, 10) <= round(expected["ventral_bridge_width_mm"], 10)


def _world(img, expected, lesions):
    """World centroid of the box lesion that starts at ``expected['start']``."""
    (x0, y0, z0), (dx, dy, dz) = next(les for les in lesions if les[0] == expected["start"])
    ijk = np.array([x0 + (dx - 1) / 2, y0 + (dy - 1) / 2, z0 + (dz - 1) / 2])
    return img.affine[:3, :3] @ ijk + img.affine[:3, 3]


def test_partly_outside_the_cord_whole_lesion_volume_and_fraction():
    """SCT's last case: L-R slice 19 of the box lies outside the cord. SCT crops the lesion to the cord
    (volume 3x3x4); we keep the whole lesion (3x3x5) and report the fraction inside."""
    cord_img = nib.load(SEG)
    seg = np.asanyarray(cord_img.dataobj)
    lesions = [((29, 40, 19), (3, 3, 5))]
    data = _mask(lesions, seg.shape)
    row = analyze_lesions(nib.Nifti1Image(data, cord_img.affine, cord_img.header), cord_img).lesions[0]
    inside = np.count_nonzero(data & (seg > 0))
    assert row.volume_mm3 == 45
    assert row.inside_cord_fraction == pytest.approx(inside / 45)
    assert inside == 36  # the premise of SCT's test: exactly one L-R slice outside
    min_area = min(np.sum(seg[:, y, :]) for y in range(40, 43))
    assert row.max_axial_damage_ratio == pytest.approx(3 * 4 / min_area, rel=1e-12)  # inside part, as SCT
