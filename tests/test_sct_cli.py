"""SCT 7's command line: ``python -m bidsapp.segment lesion_ms -i IMAGE -o OUT -qc QC --soft`` (the task as a
subcommand, SCT 7 names and the older ones), next to today's ``-t`` and the legacy ``-c``; ``--ensemble``."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bidsapp import cli, segment
from bidsapp.errors import EXIT
from tests import sct_oracle as sct
from tests.containers_phantoms import DICE_MARGIN, dice, write_image
from tests.engine_models import one_torch_thread  # noqa: F401 - autouse fixture

#: the demo models on the small LAS phantom below (seed 12): measured Dice (Intel Xeon, AVX-512), less
#: DICE_MARGIN
LESION_FLOOR, CORD_FLOOR = 0.333 - DICE_MARGIN, 0.965 - DICE_MARGIN
#: README "Quality control": -qc writes <name>_<task>_<view>.png for these views
QC_VIEWS = ("axial", "axialoverlay", "sagittal", "sagittaloverlay", "thumb")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "sub-01_T2w.nii.gz"
    nib.save(sct.sct_image("las", seed=2), path)
    return path


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A small T2w phantom with lesions, its ground truth beside it (lesion, cord)."""
    return write_image(tmp_path_factory.mktemp("phantom") / "sub-01_T2w.nii.gz", "T2w", seed=12,
                       orientation=("L", "A", "S"))


def _arr(path):
    return np.asanyarray(nib.load(path).dataobj)


def _lesion_slices_ras(mask_path) -> set[int]:
    """RAS z indices of the slices holding lesion, computed here from the mask file."""
    ras = np.asanyarray(nib.as_closest_canonical(nib.load(mask_path)).dataobj) > 0
    return {int(z) for z in np.flatnonzero(ras.any(axis=(0, 1)))}


def test_lesion_ms_subcommand_with_soft_and_qc(phantom, tmp_path):
    image = phantom.image.get_filename()
    out = tmp_path / "res" / "t2_lesion.nii.gz"
    out.parent.mkdir()
    rc = segment.main(["lesion_ms", "-i", str(image), "-o", str(out), "-qc", str(tmp_path / "qc"), "--soft",
                       "--demo", "--device", "cpu"])
    assert rc == 0
    soft = tmp_path / "res" / "t2_lesion_msLesionSoft.nii.gz"  # SCT's -soft-ms-lesion suffix
    mask, probs = nib.load(out), nib.load(soft)
    for img in (mask, probs):  # on the input grid, exactly
        assert img.shape == phantom.image.shape and np.array_equal(img.affine, phantom.image.affine)
    assert _arr(out).dtype == np.uint8 and set(np.unique(_arr(out))) <= {0, 1}
    assert _arr(soft).dtype == np.float32 and 0 <= _arr(soft).min() and _arr(soft).max() <= 1
    measured = dice(mask, phantom.lesion)
    print(f"lesion_ms Dice {measured:.3f}")
    assert measured >= LESION_FLOOR, measured
    _assert_qc_pictures(tmp_path / "qc", "sub-01_T2w", "lesion_ms", _lesion_slices_ras(out))
    # the same run through -t and an SCT 6 name: the same mask
    again = tmp_path / "again.nii.gz"
    assert segment.main(["-i", str(image), "-t", "seg_ms_lesion", "-o", str(again), "--demo",
                         "--device", "cpu"]) == 0
    assert np.array_equal(_arr(again), _arr(out))


def _assert_qc_pictures(folder, stem: str, task: str, lesion_slices: set[int]) -> None:
    """The README's names; decodable PNGs; the axial mosaic holds every slice with lesion (its
    ``cordlesion:axial_slices`` chunk); the overlays show the lesion in vermillion; the plain views: grey."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{stem}_{task}_{v}.png" for v in QC_VIEWS)
    pics = {v: Image.open(folder / f"{stem}_{task}_{v}.png") for v in QC_VIEWS}
    assert lesion_slices, "the demo model found no lesion: nothing to check the pictures against"
    shown = {int(z) for z in pics["axialoverlay"].text["cordlesion:axial_slices"].split(",")}
    assert lesion_slices <= shown, (sorted(lesion_slices), sorted(shown))
    assert pics["thumb"].size == (112, 112)
    for view in ("axial", "sagittal"):
        assert pics[view].mode == "L" and pics[f"{view}overlay"].mode == "RGB"
        assert pics[f"{view}overlay"].size == pics[view].size
        colours = {tuple(c) for c in np.asarray(pics[f"{view}overlay"]).reshape(-1, 3)}
        assert (213, 94, 0) in colours, f"{view}overlay: no lesion outline (Okabe-Ito vermillion)"


@pytest.mark.parametrize("name, suffix", [("spinalcord", "_seg"), ("seg_sc_contrast_agnostic", "_seg")])
def test_cord_subcommand_writes_scts_name(phantom, tmp_path, name, suffix):
    rc = segment.main([name, "-i", phantom.image.get_filename(), "-ofolder", str(tmp_path), "--demo",
                       "--device", "cpu"])
    assert rc == 0
    cord = nib.load(tmp_path / f"sub-01_T2w{suffix}.nii.gz")
    assert cord.shape == phantom.image.shape and np.array_equal(cord.affine, phantom.image.affine)
    assert set(np.unique(np.asanyarray(cord.dataobj))) <= {0, 1}
    measured = dice(cord, phantom.cord)  # the cord model's mask: the lesion model's would not reach this
    print(f"{name} cord Dice {measured:.3f}")
    assert measured >= CORD_FLOOR, measured


def test_soft_ms_lesion_alias_and_ensemble_flag(image, tmp_path):
    args = segment.build_parser().parse_args(segment.subcommand_argv(
        ["lesion_ms_mp2rage", "-i", str(image), "-soft-ms-lesion", "p.nii.gz", "--ensemble", "logits"]))
    assert args.task == "lesion_ms_mp2rage" and str(args.soft) == "p.nii.gz" and args.ensemble == "logits"
    assert segment.subcommand_argv(["-i", "x.nii.gz", "-c", "t2"]) == ["-i", "x.nii.gz", "-c", "t2"]
    run = cli.build_parser().parse_args([str(tmp_path), str(tmp_path / "o"), "participant", "--ensemble",
                                         "logits"])
    assert run.ensemble == "logits"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([str(tmp_path), str(tmp_path / "o"), "participant",
                                       "--ensemble", "vote"])


def test_unknown_subcommand_is_a_usage_error(image, capsys):
    assert segment.main(["lesion", "-i", str(image)]) == EXIT["usage"]
    assert "lesion" in capsys.readouterr().err
