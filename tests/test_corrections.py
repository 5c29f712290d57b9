"""Corrected masks (issue 24): the finder of label files by naming convention, the checks with the reason a
user reads for each bad case, the sidecar's GeneratedBy, and the figures measured on corrections."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bidsapp.analysis import analyze_lesions
from bidsapp.analysis.tables import lesion_tsv
from bidsapp.corrections import (
    CORD,
    LESION,
    LabelKind,
    check_mask,
    find_candidates,
    find_label_files,
    generated_by,
    load_correction,
    load_corrections,
    manual_entry,
)
from bidsapp.errors import CorrectionError
from bidsapp.figures import ModelMasks, kinds_for, measure, model_table

SOURCE = "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_T2w.nii.gz"
AFFINE = np.array([[0.0, 0.0, -0.8, 40.0], [-0.8, 0.0, 0.0, 30.0], [0.0, 1.5, 0.0, -60.0], [0, 0, 0, 1]])


def _image(shape=(24, 20, 12), affine=AFFINE) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.ones(shape, np.float32), affine)


def _blobs(shape=(24, 20, 12), centres=((6, 6, 4), (16, 12, 7))) -> np.ndarray:
    data = np.zeros(shape, np.uint8)
    for x, y, z in centres:
        data[x - 1:x + 2, y - 1:y + 2, z - 1:z + 2] = 1
    return data


def _save(path: Path, data: np.ndarray, affine=AFFINE, sidecar: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    if sidecar is not None:
        path.with_name(path.name.split(".")[0] + ".json").write_text(json.dumps(sidecar))
    return path


def _folder(root: Path) -> Path:
    return root / "sub-01" / "ses-M0" / "anat"


# ------------------------------------------------------------------------------------------ finding
@pytest.mark.parametrize("name", [
    "sub-01_ses-M0_acq-sag_T2w_lesion-manual.nii.gz",                 # manual_correction.py's -suffix
    "sub-01_ses-M0_acq-sag_T2w_lesion-manual.nii",
    "sub-01_ses-M0_acq-sag_T2w_label-lesion_desc-manual_mask.nii.gz",  # stem + BIDS entities
    "sub-01_ses-M0_acq-sag_label-lesion_desc-manual_mask.nii.gz",      # BIDS-Derivatives form
])
def test_each_naming_convention_is_found(tmp_path, name):
    _save(_folder(tmp_path) / name, _blobs())
    assert find_label_files(tmp_path, SOURCE, LESION) == [_folder(tmp_path) / name]
    assert find_label_files(tmp_path, SOURCE, CORD) == []


def test_other_images_and_kinds_are_not_taken(tmp_path):
    folder = _folder(tmp_path)
    for name in ("sub-01_ses-M0_acq-ax_T2w_lesion-manual.nii.gz",      # another image of the session
                 "sub-01_ses-M0_acq-sag_T2starw_lesion-manual.nii.gz",  # another contrast
                 "sub-01_ses-M0_acq-sag_T2w_lesion.nii.gz",             # SCT / manual-correction default
                 "sub-01_ses-M0_acq-sag_T2w_seg.nii.gz",                # SCT's automatic cord
                 ".sub-01_ses-M0_acq-sag_T2w_lesion-manual.nii.gz",     # a temp file
                 "sub-01_ses-M0_acq-sag_T2w_lesion-manual.json"):
        _save(folder / name, _blobs()) if name.endswith(".gz") else (folder / name).write_text("{}")
    cord = _save(folder / "sub-01_ses-M0_acq-sag_T2w_seg-manual.nii.gz", _blobs())
    assert find_label_files(tmp_path, SOURCE, LESION) == []
    assert find_label_files(tmp_path, SOURCE, CORD) == [cord]
    assert find_label_files(tmp_path / "missing", SOURCE, LESION) == []


def test_a_kind_is_a_set_of_suffixes_and_may_span_the_session(tmp_path):
    """The finder is not lesion-specific: disc labels (issue 25) are another kind, and may come from any
    image of the session."""
    discs = LabelKind("discs", "disc labels", ("_label-discs_dlabel", "_labels-disc-manual", "_labels-disc",
                                               "_totalspineseg_discs"), ("label-discs_dlabel",))
    folder = _folder(tmp_path)
    sag = _save(folder / "sub-01_ses-M0_acq-sag_T2w_labels-disc-manual.nii.gz", _blobs())
    axial = "sub-01/ses-M0/anat/sub-01_ses-M0_acq-ax_T2w.nii.gz"
    assert find_label_files(tmp_path, SOURCE, discs) == [sag]
    assert find_label_files(tmp_path, axial, discs) == []
    assert find_label_files(tmp_path, axial, discs, session=True) == [sag]


# ------------------------------------------------------------------------------------------ checking
def test_a_good_mask_lands_on_the_image_grid_as_uint8(tmp_path):
    image = _image()
    for dtype in (np.uint8, np.int16, np.float32, np.float64):
        path = _save(tmp_path / f"m_{np.dtype(dtype).name}.nii.gz", _blobs().astype(dtype))
        mask = check_mask(path, image)
        assert mask.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(mask.dataobj), _blobs())
        assert np.allclose(mask.affine, image.affine, atol=1e-6) and mask.shape == image.shape
    four_d = _save(tmp_path / "4d.nii.gz", _blobs()[..., None])      # one volume saved as 4D
    assert np.array_equal(np.asarray(check_mask(four_d, image).dataobj), _blobs())
    nudged = AFFINE.copy()
    nudged[:3, 3] += 2e-4                                               # a viewer's float32 rounding
    assert check_mask(_save(tmp_path / "nudged.nii.gz", _blobs(), nudged), image).shape == image.shape
    empty = _save(tmp_path / "empty.nii.gz", np.zeros((24, 20, 12), np.uint8))
    assert not np.asarray(check_mask(empty, image).dataobj).any()      # allowed: 0 lesions


@pytest.mark.parametrize("case,expected", [
    ("shape", "not on the image's grid: shape 24x20x11, the image's is 24x20x12"),
    ("affine", "not on the image's grid: its affine differs from the image's by up to 0.8 mm (resampled, or "
               "saved in another space?)"),
    ("soft", "not binary: a soft map (54 voxels with values between whole numbers, 0.6 to 0.6); threshold it "
             "to 0/1"),
    ("labels", "not binary: a label map (values 0, 1, 2, 3); keep one label as 1, the rest 0"),
    ("255", "not binary: values 0, 255 (a binary mask holds 0 and 1 only)"),
    ("nan", "it holds NaN (not a binary mask)"),
    ("2d", "not a 3D mask (shape 24x20)"),
    ("garbage", "cannot read the NIfTI file"),
])
def test_each_bad_mask_is_refused_with_its_reason(tmp_path, case, expected):
    path = tmp_path / f"sub-01_T2w_{case}_lesion-manual.nii.gz"
    data, affine = _blobs(), AFFINE.copy()
    if case == "shape":
        data = data[:, :, :11]
    elif case == "affine":
        affine[0, 3] += 0.8                                             # shifted by one voxel
    elif case == "soft":
        data = data.astype(np.float32) * 0.6
    elif case == "labels":
        data = sum(k * _blobs(centres=(c,)) for k, c in ((1, (6, 6, 4)), (2, (16, 12, 7)), (3, (6, 14, 8))))
    elif case == "255":
        data = data * 255
    elif case == "nan":
        data = data.astype(np.float32)
        data[0, 0, 0] = np.nan
    elif case == "2d":
        data = data[:, :, 0]
    if case == "garbage":
        path.write_bytes(b"\x1f\x8b not a nifti")
    else:
        _save(path, data, affine)
    with pytest.raises(CorrectionError) as err:
        check_mask(path, _image())
    assert str(err.value).startswith(f"{path}: {expected}")
    assert "\n" not in str(err.value)


def test_two_candidates_for_one_image_are_refused(tmp_path):
    folder = _folder(tmp_path)
    a = _save(folder / "sub-01_ses-M0_acq-sag_T2w_lesion-manual.nii.gz", _blobs())
    b = _save(folder / "sub-01_ses-M0_acq-sag_label-lesion_desc-manual_mask.nii.gz", _blobs())
    candidates = find_candidates(tmp_path, SOURCE, [LESION])
    with pytest.raises(CorrectionError) as err:
        load_correction(LESION, candidates.files["lesion"], _image(), SOURCE)
    assert str(err.value) == (f"{folder}: 2 corrected lesion masks for sub-01_ses-M0_acq-sag_T2w.nii.gz "
                              f"({a.name}, {b.name}): keep one")
    loaded = load_corrections(candidates, _image(), SOURCE, [LESION, CORD])   # refused, not raised
    assert loaded.corrections == {} and loaded.refused == (str(err.value),)


# ------------------------------------------------------------------------------------------ sidecars
def test_author_and_date_come_from_the_last_manual_entry(tmp_path):
    entries = [{"Name": "cordlesion", "Version": "0.1.0"},
               {"Name": "Manual", "Author": "Ada Lovelace", "Date": "2025-01-02 10:11:12"},
               {"Name": "Manual", "Author": "Grace Hopper", "Date": "2025-03-04 05:06:07"}]
    path = _save(tmp_path / "x_lesion-manual.nii.gz", _blobs(),
                 sidecar={"SpatialReference": "orig", "GeneratedBy": entries})
    assert generated_by(path) == entries
    assert manual_entry(generated_by(path), path) == ("Grace Hopper", "2025-03-04 05:06:07")
    single = _save(tmp_path / "y_lesion-manual.nii.gz", _blobs(), sidecar={"GeneratedBy": entries[1]})
    assert manual_entry(generated_by(single), single) == ("Ada Lovelace", "2025-01-02 10:11:12")
    bare = _save(tmp_path / "z_lesion-manual.nii.gz", _blobs())          # no sidecar: still a correction
    assert manual_entry(generated_by(bare), bare) == (None, None)


def test_a_model_mask_prepared_for_correction_is_not_a_correction(tmp_path):
    path = _save(tmp_path / "x_lesion-manual.nii.gz", _blobs(),
                 sidecar={"GeneratedBy": [{"Name": "cordlesion", "Version": "0.1.0"}]})
    with pytest.raises(CorrectionError, match="written by cordlesion .* not corrected: its sidecar's "
                                              "GeneratedBy has no Manual entry"):
        manual_entry(generated_by(path), path)


# ------------------------------------------------------------------------------------------ figures
def _model(image: nib.Nifti1Image) -> ModelMasks:
    cord = np.zeros(image.shape, np.uint8)
    cord[3:20, 3:17, :] = 1
    model_mask = _blobs(centres=((6, 6, 4), (16, 12, 7), (10, 10, 9)))
    mask, cord_img = nib.Nifti1Image(model_mask, AFFINE), nib.Nifti1Image(cord, AFFINE)
    return ModelMasks(mask, cord_img, model_table(mask, cord_img, drop_outside_cord=False))


def _load(root: Path, image: nib.Nifti1Image):
    return load_corrections(find_candidates(root, SOURCE, [LESION, CORD]), image, SOURCE, [LESION, CORD])


def test_figures_are_measured_on_the_corrected_mask_and_say_so(tmp_path):
    image = _image()
    model = _model(image)
    fixed = _save(_folder(tmp_path) / "sub-01_ses-M0_acq-sag_T2w_lesion-manual.nii.gz", _blobs(),
                  sidecar={"GeneratedBy": [{"Name": "Manual", "Author": "A B", "Date": "2025-01-01"}]})
    loaded = _load(tmp_path, image)
    figures = measure(model, loaded, mask_kind=LESION, cord_kind=CORD)
    mask_data = np.asarray(figures.mask.dataobj)
    assert np.array_equal(mask_data, _blobs()) and figures.stats.count == 2
    assert figures.stats.total_mm3 == pytest.approx(2 * 27 * 0.8 * 0.8 * 1.5, abs=1e-3)
    expected = lesion_tsv(analyze_lesions(nib.load(str(fixed)), model.cord),
                          {"mask_source": "manual", "cord_source": "model"})
    assert figures.table.table == expected
    assert figures.source["mask"] == {"source": "manual", "path": str(fixed), "sha256": loaded.corrections[
        "lesion"].sha256, "author": "A B", "date": "2025-01-01"}
    assert figures.source["cord"] == {"source": "model"} and figures.manual
    # no correction: the model's own table, its columns saying "model"
    plain = measure(model, mask_kind=LESION, cord_kind=CORD)
    assert plain.table is model.table and plain.stats.count == 3 and not plain.manual
    assert plain.table.table.splitlines()[1].endswith("\tmodel\tmodel")


def test_an_empty_correction_is_reported_as_zero_lesions(tmp_path):
    image = _image()
    _save(_folder(tmp_path) / "sub-01_ses-M0_acq-sag_T2w_lesion-manual.nii.gz", 0 * _blobs())
    loaded = _load(tmp_path, image)
    figures = measure(_model(image), loaded, mask_kind=LESION, cord_kind=CORD)
    assert figures.stats.count == 0 and figures.source["notes"] == ["0 lesions after correction (the model "
                                                                    "found 3)"]
    assert figures.table.table.count("\n") == 1                        # the header only


def test_a_corrected_cord_changes_the_cord_figures_only(tmp_path):
    image = _image()
    model = _model(image)
    cord = np.zeros(image.shape, np.uint8)
    cord[3:20, 3:10, :] = 1                                              # the third lesion is now outside
    fixed = _save(_folder(tmp_path) / "sub-01_ses-M0_acq-sag_T2w_seg-manual.nii.gz", cord)
    loaded = _load(tmp_path, image)
    figures = measure(model, loaded, mask_kind=LESION, cord_kind=CORD, drop_outside_cord=True)
    kept = ndimage.label(np.asarray(figures.mask.dataobj))[1]
    assert kept == 2 and figures.stats.count == 2                        # the lesion outside was dropped
    assert figures.source["mask"] == {"source": "model"} and figures.source["cord"]["path"] == str(fixed)
    assert figures.table.table.splitlines()[1].endswith("\tmodel\tmanual")


def test_which_kinds_a_task_reads():
    assert kinds_for("lesion_ms", cord_used=True) == (LESION, CORD)
    assert kinds_for("lesion_ms", cord_used=False) == (LESION, None)
    assert kinds_for("spinalcord", cord_used=True) == (CORD, None)
    assert kinds_for("t2", cord_used=True) == (LESION, None)             # legacy: no lesion table
