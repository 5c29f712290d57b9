"""Bad-input rows of docs/RELIABILITY.md through the whole app (``cli.main`` with ``--demo``).

Each bad image gives one line naming the file and the reason, the good images still get their outputs,
and the run exits 1. Bad arguments and datasets are refused at the door with their documented codes.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from reliability_data import (
    MASK,
    add_bad_images,
    copy_dataset,
    image_path,
    main_in_process,
    scan_outputs,
    tiny_bids,
)

from bidsapp.engine.modelfolder import NnUNetModel
from bidsapp.errors import ModelError
from bidsapp.models import locate

FAST = ["--demo", "--skip_bids_validator", "--nprocs", "1", "--omp-nthreads", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Read-only tiny dataset (2 subjects); copy it before changing it."""
    return tiny_bids(tmp_path_factory.mktemp("rel_inputs") / "bids", n_subjects=2)


def _main(args: list, capsys) -> tuple[int, str]:
    code = main_in_process(args)
    return code, capsys.readouterr().err


def test_bad_images_among_good_ones(tiny, tmp_path, capsys):
    bids = copy_dataset(tiny, tmp_path / "bids")
    bad = add_bad_images(bids)
    fifo = image_path(bids, "sub-01", "fifo")
    os.mkfifo(fifo)  # an unreadable "file": must be refused, never opened (opening a FIFO blocks)
    bad[str(fifo)] = "not a regular file"
    out = tmp_path / "out"
    code, err = _main([bids, out, "participant", *FAST], capsys)
    assert code == 1, err
    failed_lines = [line for line in err.splitlines() if "FAILED" in line]
    assert len(failed_lines) == len(bad), "\n".join(failed_lines)
    for path, reason in bad.items():
        lines = [line for line in failed_lines if path in line]
        assert len(lines) == 1 and reason in lines[0], (path, reason, lines)
    assert "Traceback" not in err  # expected refusals: one line on the console...
    logs = [p.read_text() for p in (out / "logs").rglob("*.log")]
    assert sum("Traceback" in text for text in logs) == len(bad)  # ...the traceback in its own log
    for n in ("01", "02"):  # the good images still produced their outputs
        assert (out / MASK.format(n=n)).is_file()
        assert (out / MASK.format(n=n).replace(".nii.gz", ".json")).is_file()
    found = scan_outputs(out)
    # each good image: its lesion mask and (issue 17) the cord mask its lesion table is measured against
    assert sorted(m for m in found["nifti"] if m.endswith("_mask.nii.gz") and "label-lesion" in m) == \
        sorted(MASK.format(n=n) for n in ("01", "02"))
    assert sorted(m for m in found["nifti"] if m.endswith("_mask.nii.gz") and "label-SC" in m) == \
        sorted(MASK.format(n=n).replace("label-lesion", "label-SC") for n in ("01", "02"))
    assert found["temp"] == []
    assert not list((bids).rglob("*label-lesion*")), "something was written into bids_dir"


def test_missing_dataset_description(tiny, tmp_path, capsys):
    bids = copy_dataset(tiny, tmp_path / "bids")
    (bids / "dataset_description.json").unlink()
    code, err = _main([bids, tmp_path / "out", "participant", *FAST], capsys)
    assert code == 66
    assert f"{bids}: not a BIDS dataset (no dataset_description.json)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", [".", "sub-01/cordlesion", "derivatives", "via_symlink"])
def test_output_dir_equal_to_or_inside_bids_dir(tiny, tmp_path, capsys, where):
    bids = copy_dataset(tiny, tmp_path / "bids")
    if where == "via_symlink":  # a symlink elsewhere that points into bids_dir is still inside it
        (tmp_path / "link").symlink_to(bids / "code", target_is_directory=True)
        (bids / "code").mkdir()
        out = tmp_path / "link" / "cordlesion"
    else:
        out = bids / where
    before = sorted(p.relative_to(bids).as_posix() for p in bids.rglob("*"))
    code, err = _main([bids, out, "participant", *FAST], capsys)
    assert code == 73
    assert "output_dir is bids_dir or inside it but not in derivatives/<name>" in err
    assert f"{bids}-cordlesion" in err
    assert sorted(p.relative_to(bids).as_posix() for p in bids.rglob("*")) == before


def test_participant_label_not_in_dataset(tiny, tmp_path, capsys):
    code, err = _main([tiny, tmp_path / "out", "participant", "--participant_label", "99", *FAST], capsys)
    assert code == 18
    assert "participant_label 99" in err and "sub-01" in err and "sub-02" in err


def test_one_missing_label_among_present_ones_warns_and_runs(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _main([tiny, out, "participant", "--participant_label", "02", "sub-99", *FAST], capsys)
    assert code == 0, err
    assert "no image selected for participant(s) sub-99" in err
    assert (out / MASK.format(n="02")).is_file() and not (out / MASK.format(n="01")).exists()


@pytest.mark.parametrize("label", ["../01", "01/..", "..", "sub-01/anat", "sub-.."])
def test_labels_with_slash_or_dotdot(tiny, tmp_path, capsys, label):
    code, err = _main([tiny, tmp_path / "out", "participant", "--participant_label", label, *FAST], capsys)
    assert code == 64
    assert f"{label!r} is not a BIDS label" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, key", [
    ({"rules": [{"match": {"suffix": 5}, "tasks": ["lesion_ms"]}]}, "rules[0].match.suffix"),
    ({"rules": [{"match": {"suffix": "T2w"}, "tasks": "lesion_ms"}]}, "rules[0].tasks"),
    ({"rules": [{"match": {"suffix": "T2w", "run": "1/2"}, "tasks": []}]}, "rules[0].match.run"),
    ({"rules": {"T2w": "lesion_ms"}}, "rules"),
    ({"use_default_rules": "yes"}, "use_default_rules"),
])
def test_routing_config_wrong_types(tiny, tmp_path, capsys, config, key):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code, err = _main([tiny, tmp_path / "out", "participant", "--config", path, *FAST], capsys)
    assert code == 64
    assert re.search(rf"{re.escape(str(path))}: {re.escape(key)}: ", err), err


# ---- model folders ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_folder() -> Path:
    return Path(locate("lesion_ms", demo=True).path)


def test_model_folder_missing_a_fold(demo_folder, tmp_path):
    folder = copy_dataset(demo_folder, tmp_path / demo_folder.name)
    folds = sorted(p for p in folder.glob("fold_*") if p.is_dir())
    assert folds, "demo model has no fold folders"
    missing = folds[-1]
    for f in missing.iterdir():
        f.unlink()
    missing.rmdir()
    wanted = [int(p.name.split("_")[1]) for p in folds]
    with pytest.raises(ModelError) as info:
        NnUNetModel.load(folder, folds=wanted)
    assert str(info.value).startswith(f"{missing / 'checkpoint_final.pth'}: missing"), info.value


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint(demo_folder, tmp_path, damage):
    folder = copy_dataset(demo_folder, tmp_path / demo_folder.name)
    ckpt = sorted(folder.glob("fold_*/checkpoint_*.pth"))[0]
    raw = ckpt.read_bytes()
    ckpt.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(ModelError) as info:
        NnUNetModel.load(folder)
    assert str(info.value).startswith(f"{ckpt}: "), info.value
    assert "\n" not in str(info.value)


def test_checkpoint_with_wrong_weights_is_refused(demo_folder, tiny, tmp_path):
    from bidsapp.engine.nnunet import NnUNetPredictor
    from bidsapp.imaging import load_image

    folder = copy_dataset(demo_folder, tmp_path / demo_folder.name)
    ckpt = sorted(folder.glob("fold_*/checkpoint_*.pth"))[0]
    state = torch.load(str(ckpt), weights_only=False)  # our own demo file: trusted
    first = next(iter(state["network_weights"]))
    state["network_weights"][first] = torch.zeros(3)  # wrong shape for the plans' network
    torch.save(state, str(ckpt))
    with pytest.raises(ModelError) as info:  # when the predictor loads the fold, before any image
        NnUNetPredictor(NnUNetModel.load(folder), device="cpu").predict(
            load_image(image_path(tiny, "sub-01", "sag")))
    assert str(info.value).startswith(f"{ckpt}: weights do not fit plans.json"), info.value
