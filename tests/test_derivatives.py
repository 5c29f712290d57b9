"""derivatives: output names, atomic writes, dataset_description under concurrency, up-to-date checks."""
from __future__ import annotations

import json
import multiprocessing
import os
import stat
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp import __version__, derivatives
from bidsapp.errors import OutputError
from tests.unprivileged import run_unprivileged, shared_folder


@pytest.mark.parametrize("name, expected", [
    ("sub-01_T2w.nii.gz", "sub-01"),
    ("sub-01_ses-M0_acq-sag_run-2_T2starw.nii", "sub-01_ses-M0_acq-sag_run-2"),
    ("sub-01_ce-gad_rec-x_UNIT1.nii.gz", "sub-01_ce-gad_rec-x"),
])
def test_source_entities(name, expected):
    assert derivatives.source_entities(name) == expected


@pytest.mark.parametrize("task, suffix, label, desc", [
    ("lesion_ms", "T2w", "lesion", "T2w"),
    ("lesion_ms", "T2star", "lesion", "T2star"),
    ("lesion_ms_mp2rage", "UNIT1", "lesion", "UNIT1"),
    ("t2", "T2w", "lesion", "T2wLegacy"),
    ("t2s", "T2starw", "lesion", "T2starwLegacy"),
    ("t2_ax", "T2w", "lesion", "T2wLegacyAx"),
    ("spinalcord", "T2w", "SC", "T2w"),
    # a legacy model on a contrast it was not trained on says so (t2 and t2s on one image stay apart)
    ("t2s", "T2w", "lesion", "T2wLegacyT2s"),
    ("t2", "T2starw", "lesion", "T2starwLegacyT2"),
])
def test_image_names(task, suffix, label, desc):
    src = f"sub-01/ses-M0/anat/sub-01_ses-M0_run-1_{suffix}.nii.gz"
    names = derivatives.image_names(src, task)
    base = f"sub-01/ses-M0/anat/sub-01_ses-M0_run-1_label-{label}_desc-{desc}"
    assert names.mask == f"{base}_mask.nii.gz" and names.mask_json == f"{base}_mask.json"
    assert names.probseg == f"{base}_probseg.nii.gz" and names.lesions_tsv == f"{base}_lesions.tsv"
    # the lesion tasks write their cord mask (lesion_ms since issue 17: the lesion table's cord)
    writes_cord = task in ("lesion_ms", "lesion_ms_mp2rage")
    assert (names.cord is not None) == writes_cord == ("cord" in names.outputs())
    log_label = "" if label == "lesion" else f"_label-{label}"
    assert names.log == f"logs/sub-01/sub-01_ses-M0_run-1_{suffix}{log_label}_desc-{desc}.log"
    assert names.settings == names.log.removesuffix(".log") + "_settings.json"
    qc = f"sub-01/figures/sub-01_ses-M0_run-1_{suffix}_desc-{task.replace('_', '')}"
    assert names.qc_record == f"{qc}_qc.json" and names.figures["thumb"] == f"{qc}_thumb.png"


def test_todays_single_task_names_are_kept():
    # the names every run wrote before the task table (a re-run must find them)
    names = derivatives.image_names("sub-01/anat/sub-01_T2w.nii.gz", "lesion_ms")
    assert names.log == "logs/sub-01/sub-01_T2w_desc-T2w.log"
    assert names.settings == "logs/sub-01/sub-01_T2w_desc-T2w_settings.json"
    assert names.qc_record == "sub-01/figures/sub-01_T2w_desc-lesionms_qc.json"
    unit1 = derivatives.image_names("sub-01/anat/sub-01_UNIT1.nii.gz", "lesion_ms_mp2rage")
    assert unit1.cord == "sub-01/anat/sub-01_label-SC_desc-UNIT1_mask.nii.gz"


@pytest.mark.parametrize("suffix", ["T2w", "T2starw", "T2star", "UNIT1", "PSIR"])
def test_two_tasks_on_one_image_never_share_a_name(suffix):
    from bidsapp import tasks

    src = f"sub-01/anat/sub-01_acq-sag_{suffix}.nii.gz"
    names = {t: derivatives.image_names(src, t) for t in tasks.names(routable=True)}  # what a config routes
    for a in names:
        for b in names:
            if a >= b:
                continue
            shared = set(names[a].paths()) & set(names[b].paths())
            # the one overlap by design: a task's cord mask IS the spinalcord task's mask (plan.route
            # then lets the spinalcord job write it)
            allowed = {p for n in (names[a], names[b]) if n.cord for p in (n.cord, n.cord_json)}
            assert shared <= allowed, (a, b, shared)
            # (or two tasks that both write the image's cord: plan.route lets the first one write it)
            assert not shared or tasks.CORD_MODEL in (a, b) or bool(names[a].cord and names[b].cord)


@pytest.mark.parametrize("name, stem", [("sub-01_T2w.nii.gz", "sub-01_T2w"), ("sub-01_T2w.nii", "sub-01_T2w"),
                                        ("a/b/sub-01_T2w.json", "sub-01_T2w"), ("x", "x")])
def test_nifti_stem(name, stem):
    assert derivatives.nifti_stem(name) == stem


def test_parse_name_keeps_spelling():
    parsed = derivatives.parse_name("sub-01/anat/sub-01_ses-M0_run-01_acq-a+b_T2w.nii.gz")
    assert parsed.pairs == (("sub", "01"), ("ses", "M0"), ("run", "01"), ("acq", "a+b"))
    assert parsed.suffix == "T2w" and parsed.extension == ".nii.gz"


def test_atomic_write_bytes(tmp_path):
    target = tmp_path / "a" / "b.json"
    derivatives.atomic_write_bytes(target, b"one")
    derivatives.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["b.json"]  # no temp file left behind
    mode = stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_atomic_write_failure_leaves_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    target.write_bytes(b"old")

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(derivatives.os, "replace", boom)
    with pytest.raises(OutputError, match=r"x.json: cannot write \(No space left on device\)"):
        derivatives.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.json"]


def test_atomic_save_nifti_roundtrip(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.diag([0.5, 0.75, 3.0, 1.0]))
    out = tmp_path / "m.nii.gz"
    derivatives.atomic_save_nifti(img, out)
    back = nib.load(out)
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), img.get_fdata().astype(np.uint8))
    np.testing.assert_array_equal(back.affine, img.affine)
    assert os.listdir(tmp_path) == ["m.nii.gz"]


_WRITE_AS_USER = """
import sys
from pathlib import Path
from bidsapp import derivatives
try:
    derivatives.atomic_write_bytes(Path(sys.argv[1]), b"x")
except derivatives.OutputError as exc:
    print(exc)
    sys.exit(3)
"""


def test_unwritable_output_raises_output_error():
    """As an unprivileged user (root writes anyway, and CI runs as root): one line naming the file."""
    with shared_folder() as base:
        ro = base / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        proc = run_unprivileged([sys.executable, "-c", _WRITE_AS_USER, ro / "f.json"], timeout=120)
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert proc.stdout == f"{ro / 'f.json'}: cannot write (Permission denied)\n"
        assert list(ro.iterdir()) == []  # no temporary file either


def test_dataset_description(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "r", "DatasetDOI": "doi:10.1/x"}))
    monkeypatch.delenv("SINGULARITY_CONTAINER", raising=False)
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/cordlesion_0.1.0.sif")
    desc = derivatives.dataset_description(raw)
    assert desc["DatasetType"] == "derivative"
    gen = desc["GeneratedBy"][0]
    assert gen["Name"] == "cordlesion" and gen["Version"] == __version__
    assert gen["CodeURL"].startswith("https://")
    assert gen["Container"] == {"Type": "singularity", "Tag": "cordlesion_0.1.0.sif"}
    assert desc["SourceDatasets"] == [{"URL": raw.resolve().as_uri(), "DOI": "doi:10.1/x"}]
    assert desc["DatasetLinks"] == {"raw": raw.resolve().as_uri()}


def test_bidsignore_keeps_user_lines_and_rerun_changes_nothing(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".bidsignore").write_text("mine/\n")
    derivatives.write_dataset_files(out, raw)
    assert (out / ".bidsignore").read_text().splitlines() == ["mine/", *derivatives.BIDSIGNORE_LINES]
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    derivatives.write_dataset_files(out, raw)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def _write_many(out: str, raw: str, n: int) -> None:
    for _ in range(n):
        derivatives.write_dataset_files(Path(out), Path(raw))
        json.loads((Path(out) / "dataset_description.json").read_text())  # always complete


def test_concurrent_dataset_files(tmp_path):
    """Processes starting at once (SLURM array tasks) never leave a partial or mixed file."""
    raw = tmp_path / "raw"
    raw.mkdir()
    out = tmp_path / "out"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(out), str(raw), 30)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert json.loads((out / "dataset_description.json").read_text()) == derivatives.dataset_description(raw)
    assert sorted(os.listdir(out)) == [".bidsignore", "README.md", "dataset_description.json"]


def _seg(tmp_path: Path):
    img = nib.Nifti1Image(np.zeros((4, 4, 3), np.uint8), np.eye(4))
    outputs = derivatives.image_names("sub-01/anat/sub-01_T2w.nii.gz", "lesion_ms").outputs()
    state = {"InputSha256": "ab" * 32, "Task": "lesion_ms", "Models": {}, "Parameters": {"tta": False}}
    probseg = nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), np.eye(4))
    images = {"mask": img, "probseg": probseg, "cord": None}
    info = derivatives.SidecarInfo(source_uri="bids:raw:sub-01/anat/sub-01_T2w.nii.gz", description="d",
                                   mask_type="Lesion", provenance={"State": state})
    written = derivatives.write_segmentation(tmp_path, outputs, images, info)
    return outputs, state, written


def test_write_segmentation_sidecar_last_and_fields(tmp_path, monkeypatch):
    order = []
    real_json = derivatives.atomic_write_json
    real_nii = derivatives.atomic_save_nifti
    monkeypatch.setattr(derivatives, "atomic_write_json",
                        lambda p, o: (order.append(Path(p).name), real_json(p, o)))
    monkeypatch.setattr(derivatives, "atomic_save_nifti",
                        lambda i, p: (order.append(Path(p).name), real_nii(i, p)))
    outputs, _, written = _seg(tmp_path)
    assert order[-1] == "sub-01_label-lesion_desc-T2w_mask.json"
    assert order[:2] == ["sub-01_label-lesion_desc-T2w_mask.nii.gz",
                         "sub-01_label-lesion_desc-T2w_probseg.nii.gz"]
    assert written[-1] == outputs["mask_json"] and len(written) == 4
    side = json.loads((tmp_path / outputs["mask_json"]).read_text())
    assert side["Type"] == "Lesion" and side["Manual"] is False
    assert side["Sources"] == ["bids:raw:sub-01/anat/sub-01_T2w.nii.gz"]
    assert side["Provenance"]["Outputs"] == [outputs["mask"], outputs["probseg"]]


def test_up_to_date(tmp_path):
    outputs, state, _ = _seg(tmp_path)
    assert derivatives.is_up_to_date(tmp_path, outputs["mask_json"], state)
    mask_json = outputs["mask_json"]
    assert not derivatives.is_up_to_date(tmp_path, mask_json, {**state, "InputSha256": "cd" * 32})
    assert not derivatives.is_up_to_date(tmp_path, mask_json, {**state, "Parameters": {"tta": True}})
    (tmp_path / outputs["probseg"]).unlink()  # an output listed in the sidecar went missing
    assert not derivatives.is_up_to_date(tmp_path, outputs["mask_json"], state)
    assert not derivatives.is_up_to_date(tmp_path, "sub-09/anat/none.json", state)


def test_sha256_file(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    assert derivatives.sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"CORDLESION_CONTAINER_TAG": "cordlesion/cordlesion:0.1.0"},
     {"Type": "docker", "Tag": "cordlesion/cordlesion:0.1.0"}),
    ({"CORDLESION_CONTAINER_TAG": "cordlesion/cordlesion:0.1.0",
      "APPTAINER_CONTAINER": "/images/cl-0.1.0.sif"},
     {"Type": "singularity", "Tag": "cl-0.1.0.sif"}),
])
def test_container_info_from_the_image_environment(monkeypatch, env, expected):
    for name in ("CORDLESION_CONTAINER_TAG", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert derivatives.container_info() == expected
