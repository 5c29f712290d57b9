"""Issue 25 against the REAL SCT 7.3 (``make test-sct``), end to end: ``run.py participant --disc-labels``
(demo models) on phantoms in several orientations (sagittal RAS, PSR, ASL oblique; axial LAS under a
sagittal PSR image's discs), then ``sct_label_vertebrae -i IMG -s CORD -c t2 -discfile DISCS`` on the cord
mask the run wrote: our level map equals SCT's ``cord_labeled`` voxel for voxel, and every lesion's
``vert_level`` is the majority level of its voxels in SCT's map. For the axial image SCT is given the discs
our sidecar says were used (``DiscsUsed``: the bounding ones; see docs/LEVELS.md), cut out of the partner's
own file."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp.analysis.lesions import lesion_labels
from bidsapp.analysis.levels import level_name
from bidsapp.analysis.tables import read_tsv
from bidsapp.cli import main
from bidsapp.demo.phantom import Appearance, Grid, make_anatomy, make_phantom
from bidsapp.demo.vertebrae import disc_label_image
from bidsapp.derivatives import image_names
from tests.sct_real import save, sct  # noqa: F401 - session fixture

pytestmark = [pytest.mark.sct_oracle, pytest.mark.slow]

SAGITTAL = dict(voxel_size=(0.8, 0.8, 0.8), fov_mm=(40, 48, 100))

def _sagittal(*orientation: str, tilt: float = 0.0) -> Grid:
    return Grid(orientation=orientation, tilt_deg=tilt, **SAGITTAL)


#: image -> (seed of its subject's anatomy, grid); one subject per seed, discs drawn on each sagittal image
IMAGES = {
    "sub-01/anat/sub-01_acq-sag_T2w.nii.gz": (11, _sagittal("R", "A", "S")),
    "sub-02/anat/sub-02_acq-sag_T2w.nii.gz": (12, _sagittal("P", "S", "R")),
    "sub-03/anat/sub-03_acq-sag_T2w.nii.gz": (13, _sagittal("A", "S", "L", tilt=7.5)),
    "sub-04/anat/sub-04_acq-sag_T2w.nii.gz": (14, _sagittal("P", "S", "R")),
    "sub-04/anat/sub-04_acq-ax_T2w.nii.gz": (14, Grid(orientation=("L", "A", "S"), voxel_size=(0.5, 0.5, 3.0),
                                                      fov_mm=(44, 44, 70), tilt_deg=0.0)),
}
AXIAL = "sub-04/anat/sub-04_acq-ax_T2w.nii.gz"


def _write(bids: Path, labels: Path) -> None:
    (bids / "dataset_description.json").parent.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "levels", "BIDSVersion": "1.9.0"}))
    anatomies = {}
    for rel, (seed, grid) in IMAGES.items():
        rng = np.random.default_rng([seed, len(anatomies)])
        anatomy = anatomies.setdefault(seed, make_anatomy(np.random.default_rng(seed), n_lesions=4,
                                                           z_range=(-30, 30)))
        phantom = make_phantom("T2w", rng=rng, anatomy=anatomy, grid=grid, look=Appearance(noise=0.02))
        save(phantom.image, bids / rel)
        if "acq-sag" in rel:
            save(disc_label_image(phantom.image, anatomy),
                 labels / rel.replace(".nii.gz", "_label-discs_dlabel.nii.gz"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("levels_sct")
    bids, out, labels = root / "bids", root / "out", root / "labels"
    _write(bids, labels)
    assert main([str(bids), str(out), "participant", "--demo", "--skip_bids_validator", "--nprocs", "1",
                 "--omp-nthreads", "1", "--disc-labels", str(labels), "--participant_label", "01", "02", "03",
                 "04"]) == 0
    return bids, out, labels


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).astype(int)


def _discs_used(out: Path, names, labels: Path, folder: Path) -> Path:
    """The disc file SCT is given: the file itself, or (discs of another image) only the discs used."""
    side = json.loads((out / names.levels_json).read_text())
    path = Path(side["DiscLabels"])
    if not side["DiscLabelsShared"]:
        return path
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    kept = np.where(np.isin(data, side["DiscsUsed"]["values"]), data, 0).astype(np.uint8)
    assert 0 < np.count_nonzero(kept) < np.count_nonzero(data), "the case must drop discs beyond the cord"
    return save(nib.Nifti1Image(kept, img.affine, img.header), folder / "bounding.nii.gz")


@pytest.mark.parametrize("source", list(IMAGES))
def test_our_level_map_and_lesion_levels_are_scts(run, sct, tmp_path, source):  # noqa: F811 - fixture
    bids, out, labels = run
    names = image_names(source, "lesion_ms")
    discs = _discs_used(out, names, labels, tmp_path)
    sct.run("sct_label_vertebrae", "-i", bids / source, "-s", out / names.cord, "-c", "t2",
            "-discfile", discs, "-ofolder", tmp_path / "sct")
    theirs = _data(tmp_path / "sct" / (Path(names.cord).name.replace(".nii.gz", "_labeled.nii.gz")))
    ours = _data(out / names.levels)
    assert len(np.unique(theirs[theirs > 0])) >= 3, "the image must span several levels"
    assert ours.shape == theirs.shape and int((ours != theirs).sum()) == 0, \
        f"{int((ours != theirs).sum())} of {int((theirs > 0).sum())} cord voxels differ"
    lesions = lesion_labels(nib.load(out / names.mask))
    rows = read_tsv((out / names.lesions_tsv).read_text())
    assert rows, "the phantom has lesions the demo model finds"
    for row in rows:
        values = theirs[(lesions == int(row["lesion_id"])) & (theirs > 0)]
        majority = level_name(int(np.bincount(values).argmax())) if values.size else "n/a"
        assert row["vert_level"] == majority, row
