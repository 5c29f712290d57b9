"""``bidsapp.analysis.analyze_lesions`` against the REAL ``sct_analyze_lesion`` of SCT 7.3 (``make
test-sct``): the same lesion and cord masks, every column both write, on every lesion, within 1e-3
relative. Lesions are paired by their centroid (SCT's ``lesion_label.nii.gz`` vs ours), not by number.

One difference, measured here: with a cord mask SCT 7.3 measures only the part of a lesion INSIDE the
cord (its volume of a lesion 70 % inside is 70 % of ours); we measure the whole lesion and report the
inside fraction. So SCT's table is compared with ours on the lesion mask cut to the cord, and ours on
the whole mask keeps the whole volume (volume x inside fraction = SCT's).

The cord is SCT's own test cord (``tests/data/sct_t2_seg-manual.nii.gz``, AIL 1 mm, curved); the lesions
are the box lesions of SCT's own test (tests/test_analysis_sct.py) and irregular blobs in and across the
cord. SCT's table is read from the ``lesion_analysis.pkl`` it writes (pandas, in SCT's own Python).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bidsapp.analysis import analyze_lesions
from tests.sct_real import save, sct  # noqa: F401 - session fixture
from tests.test_analysis_sct import CASES, SEG, _mask

pytestmark = pytest.mark.sct_oracle

#: SCT's column -> our field
SHARED = {
    "volume [mm3]": "volume_mm3",
    "length [mm]": "length_mm",
    "width [mm]": "width_mm",
    "max_equivalent_diameter [mm]": "max_equivalent_diameter_mm",
    "max_axial_damage_ratio []": "max_axial_damage_ratio",
    "interpolated_midsagittal_slice": "midsagittal_slice",
    "interpolated_dorsal_bridge_width [mm]": "dorsal_bridge_width_mm",
    "interpolated_ventral_bridge_width [mm]": "ventral_bridge_width_mm",
    "interpolated_total_bridge_width [mm]": "total_bridge_width_mm",
}
READ_PKL = ("import json, pickle, sys; t = pickle.load(open(sys.argv[1], 'rb'))['measures']; "
            "print(t.to_json(orient='records'))")


def _blobs(seg: np.ndarray, seed: int) -> np.ndarray:
    """Irregular lesions: random seeds in the cord grown by a few voxels, some crossing its border."""
    rng = np.random.default_rng(seed)
    inside = np.argwhere(seg > 0)
    seeds = np.zeros(seg.shape, bool)
    for p in inside[rng.choice(len(inside), 5, replace=False)]:
        seeds[tuple(p)] = True
    grown = ndimage.binary_dilation(seeds, iterations=2)
    noise = rng.random(seg.shape) < 0.7
    return (grown & (noise | ndimage.binary_erosion(grown))).astype(np.uint8)


def _sct_table(sct, lesion: Path, cord: Path, out: Path) -> list[dict]:  # noqa: F811 - fixture
    sct.run("sct_analyze_lesion", "-m", lesion, "-s", cord, "-ofolder", out)
    proc = sct.run("python", "-c", READ_PKL, out / "lesion_analysis.pkl")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _paired(ours, labels: nib.Nifti1Image, label: int, cord: np.ndarray):
    """Our lesion whose centroid (world mm) is that of SCT's lesion ``label`` (its label image holds the
    whole lesions) within the cord."""
    idx = np.argwhere((np.asanyarray(labels.dataobj) == label) & (cord > 0)).mean(0)
    centre = labels.affine[:3, :3] @ idx + labels.affine[:3, 3]
    gaps = [float(np.linalg.norm(centre - [m.centroid_x_mm, m.centroid_y_mm, m.centroid_z_mm])) for m in ours]
    assert min(gaps) < 0.01, f"SCT's lesion {label} has no counterpart (closest {min(gaps):.3f} mm)"
    return ours[int(np.argmin(gaps))]


LESIONS = {f"sct_case_{i}": ("boxes", lesions) for i, (lesions, _) in enumerate(CASES)}
LESIONS.update({f"blobs_{seed}": ("blobs", seed) for seed in (1, 2)})


@pytest.mark.parametrize("name", list(LESIONS))
def test_every_shared_column_is_scts(name, sct, tmp_path):  # noqa: F811 - fixture
    seg = nib.load(str(SEG))
    kind, spec = LESIONS[name]
    cord = np.asanyarray(seg.dataobj)
    data = _mask(spec, seg.shape) if kind == "boxes" else _blobs(cord, spec)
    lesion = save(nib.Nifti1Image(data, seg.affine, seg.header), tmp_path / "lesion.nii.gz")
    theirs = _sct_table(sct, lesion, SEG, tmp_path / "sct")
    whole = analyze_lesions(nib.load(str(lesion)), seg).lesions
    cut = nib.Nifti1Image((data * (cord > 0)).astype(np.uint8), seg.affine, seg.header)
    ours = analyze_lesions(cut, seg).lesions
    assert len(ours) == len(theirs) >= 1
    inside = sum(m.volume_mm3 * m.inside_cord_fraction for m in whole)
    assert math.isclose(inside, sum(r["volume [mm3]"] for r in theirs))
    assert sum(m.volume_mm3 for m in whole) == int(data.sum())  # ours: the whole lesions
    worst = 0.0
    labels = nib.load(str(tmp_path / "sct" / "lesion_label.nii.gz"))
    for row in theirs:
        mine = _paired(ours, labels, int(row["label"]), cord)
        assert mine.volume_mm3 == row["volume [mm3]"]
        for col, field in SHARED.items():
            a, b = getattr(mine, field), row[col]
            if b is None or (isinstance(b, float) and math.isnan(b)):
                assert a is None, (name, col, a)
                continue
            rel = abs(a - b) / max(abs(b), 1e-9) if abs(b) > 1e-6 else abs(a - b)
            worst = max(worst, rel)
            assert rel <= 1e-3, (name, int(row["label"]), col, a, b)
    print(json.dumps({"what": "sct_analyze_lesion", "case": name, "lesions": len(theirs),
                      "worst_rel": worst}))
