"""SCT 7's command line: ``python -m bidsapp.segment lesion_ms -i IMAGE -o OUT -qc QC --soft`` (the task as a
subcommand, SCT 7 names and the older ones), next to today's ``-t`` and the legacy ``-c``; ``--ensemble``."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bidsapp import cli, segment
from bidsapp.errors import EXIT
from tests import sct_oracle as sct
from tests.engine_models import one_torch_thread  # noqa: F401 - autouse fixture


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "sub-01_T2w.nii.gz"
    nib.save(sct.sct_image("las", seed=2), path)
    return path


def _arr(path):
    return np.asanyarray(nib.load(path).dataobj)


def test_lesion_ms_subcommand_with_soft_and_qc(image, tmp_path):
    out = tmp_path / "res" / "t2_lesion.nii.gz"
    out.parent.mkdir()
    rc = segment.main(["lesion_ms", "-i", str(image), "-o", str(out), "-qc", str(tmp_path / "qc"), "--soft",
                       "--demo", "--device", "cpu"])
    assert rc == 0
    soft = tmp_path / "res" / "t2_lesion_msLesionSoft.nii.gz"  # SCT's -soft-ms-lesion suffix
    assert out.is_file() and soft.is_file()
    assert _arr(out).dtype == np.uint8 and _arr(soft).dtype == np.float32
    assert sorted(p.name for p in (tmp_path / "qc").iterdir())  # QC pictures written
    # the same run through -t and an SCT 6 name: the same mask
    again = tmp_path / "again.nii.gz"
    assert segment.main(["-i", str(image), "-t", "seg_ms_lesion", "-o", str(again), "--demo",
                         "--device", "cpu"]) == 0
    assert np.array_equal(_arr(again), _arr(out))


@pytest.mark.parametrize("name, suffix", [("spinalcord", "_seg"), ("seg_sc_contrast_agnostic", "_seg")])
def test_cord_subcommand_writes_scts_name(image, tmp_path, name, suffix):
    rc = segment.main([name, "-i", str(image), "-ofolder", str(tmp_path), "--demo", "--device", "cpu"])
    assert rc == 0 and (tmp_path / f"sub-01_T2w{suffix}.nii.gz").is_file()


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
