"""Releases as SCT publishes them: lesion_ms r20250909 from its five per-fold archives with the training's
``trainer_class.py`` (never imported nor run), the manifest's facts (folder name, citations, licences),
and the selectable next releases with their ``crop_metadata.json``."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bidsapp import models
from bidsapp.engine import NnUNetModel, NnUNetPredictor
from bidsapp.errors import ModelError
from bidsapp.models import crop_metadata, load_manifest
from bidsapp.models.__main__ import main
from bidsapp.models.install import install
from tests import sct_oracle as sct
from tests.engine_models import one_torch_thread  # noqa: F401 - autouse fixture

PADS = {"pad_superior": 40.0, "pad_inferior": 100.0, "pad_left": 15.0, "pad_right": 15.0,
        "pad_anterior": 15.0, "pad_posterior": 22.0}


def _side_effect_trainer(sentinel: Path) -> str:
    """A trainer_class.py that, if ever imported or run, writes ``sentinel`` and leaves a module mark."""
    return (f"import sys\nopen({str(sentinel)!r}, 'w').write('executed')\n"
            f"sys.modules.setdefault('cordlesion_trainer_ran', sys)\n"
            f"def get_trainer_class():\n    raise SystemExit('trainer_class.py executed')\n")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    sentinel = tmp / "TRAINER_CLASS_RAN"
    folder, archives = sct.build_lesion_ms_release(tmp, _side_effect_trainer(sentinel))
    return folder, archives, sentinel


def test_the_planted_trainer_class_has_teeth(release, tmp_path):
    """Run on its own, the planted file does write the sentinel: its absence below means something."""
    _, archives, sentinel = release
    with zipfile.ZipFile(archives[0]) as zf:
        code = zf.read(f"{sct.LESION_FOLDER}/trainer_class.py").decode()
    probe = tmp_path / "probe.py"
    probe.write_text(code.replace(str(sentinel), str(tmp_path / "probe_ran")))
    subprocess.run([sys.executable, str(probe)], check=True, cwd=tmp_path)
    assert (tmp_path / "probe_ran").read_text() == "executed"


def test_install_from_the_five_fold_archives_never_runs_trainer_class(release, tmp_path):
    folder, archives, sentinel = release
    with zipfile.ZipFile(archives[0]) as zf:
        assert f"{sct.LESION_FOLDER}/trainer_class.py" in zf.namelist()
    for k, a in enumerate(archives[1:], start=1):
        with zipfile.ZipFile(a) as zf:
            assert not any("trainer_class" in n for n in zf.namelist())
            assert any(n.startswith(f"{sct.LESION_FOLDER}/fold_{k}/") for n in zf.namelist())
    argv = ["install", "lesion_ms", "--models-dir", str(tmp_path / "models")]
    for a in archives:
        argv += ["--from", str(a)]
    assert main(argv) == 0
    located = models.locate("lesion_ms", models_dir=tmp_path / "models")
    assert located.path.name == sct.LESION_FOLDER == load_manifest().models["lesion_ms"].folder_name
    assert located.release == "r20250909"
    assert not list(located.path.parent.rglob("*.py")), "code shipped in an archive is never installed"
    assert sorted(p.name for p in located.path.glob("fold_*")) == [f"fold_{k}" for k in range(5)]
    model = NnUNetModel.load(located.path)
    assert model.folds == [0, 1, 2, 3, 4]
    img = sct.sct_image("las", seed=1)
    ours = NnUNetPredictor(model, ensemble="sct", precision="fp32").predict_maps(img)
    source = NnUNetPredictor(NnUNetModel.load(folder), ensemble="sct", precision="fp32").predict_maps(img)
    assert np.array_equal(ours.votes, source.votes) and ours.mask(1).any()
    assert not sentinel.exists(), "trainer_class.py was executed"
    assert "cordlesion_trainer_ran" not in sys.modules and "trainer_class" not in sys.modules


def test_manifest_facts():
    m = load_manifest()
    ms = m.models["lesion_ms"]
    assert ms.folder_name == sct.LESION_FOLDER and ms.release == "r20250909" and ms.folds == (0, 1, 2, 3, 4)
    assert [s.url.rsplit("/", 1)[1] for s in ms.sources] == [f"model_fold{k}.zip" for k in range(5)]
    title = ("Generalizable spinal cord multiple sclerosis lesion segmentation across MRI contrasts, "
             "protocols, and centers")
    assert title in ms.citation
    assert "32(6):598-613" in ms.citation and "10.1177/13524585261427333" in ms.citation
    mp = m.models["lesion_ms_mp2rage"]
    assert "Automatic Multiple Sclerosis Lesion Segmentation in the Spinal Cord on 3T and 7T MP2RAGE Images" \
           in mp.citation and "ESMRMB 2024" in mp.citation
    legacy = m.models["legacy_lesion"]
    assert "MIT" not in legacy.licence and "no licence file" in legacy.licence
    assert models.describe("seg_ms_lesion")["citation"] == ms.citation


def test_next_releases_are_selectable_not_default():
    m = load_manifest()
    assert m.model_for("lesion_ms").release == "r20250909" and not m.model_for("lesion_ms").cropped_image
    assert m.model_for("spinalcord").release == "v3.0"
    nxt = m.model_for("lesion_ms", "r20260703")
    assert nxt.cropped_image and not nxt.default and nxt.folds == (0, 1, 2, 3, 4)
    assert all("seg-sc-ms-lesion-multicontrast/releases/download/r20260703/" in s.url for s in nxt.sources)
    v4 = m.model_for("seg_sc_contrast_agnostic", "v4.0")
    assert v4.cropped_image and v4.sources[0].url.endswith("v4.0/model_contrast_agnostic_20260628.zip")
    with pytest.raises(ModelError, match="no release 'r1999'"):
        m.model_for("lesion_ms", "r1999")


def _with_crop_metadata(archives: list[Path], dest: Path, text: str | None) -> list[Path]:
    """Copies of ``archives`` with ``crop_metadata.json`` (``text``) at the root of each zip, as SCT's
    crop releases ship it."""
    out = []
    for a in archives:
        buf = io.BytesIO()
        with zipfile.ZipFile(a) as src, zipfile.ZipFile(buf, "w") as zf:
            for info in src.infolist():
                zf.writestr(info, src.read(info))
            if text is not None:
                zf.writestr(crop_metadata.FILE, text)
        path = dest / a.name
        path.write_bytes(buf.getvalue())
        out.append(path)
    return out


def test_selected_crop_release_installs_its_crop_metadata(release, tmp_path, capsys):
    _, archives, _ = release
    zips = _with_crop_metadata(archives, tmp_path, json.dumps(PADS))
    done = install("lesion_ms", models_dir=tmp_path / "models", origin=[str(z) for z in zips],
                   release="r20260703")
    assert done.release == "r20260703"
    located = models.locate("lesion_ms", models_dir=tmp_path / "models")
    assert located.release == "r20260703" and crop_metadata.FILE in located.sha256
    pads = crop_metadata.read(located.path)
    assert pads == crop_metadata.CropPadding(40.0, 100.0, 15.0, 15.0, 15.0, 22.0)
    assert pads.by_direction()["P"] == 22.0
    assert main(["list", "--models-dir", str(tmp_path / "models")]) == 0
    assert "lesion_ms          r20260703  selected" in capsys.readouterr().out
    assert main(["verify", "lesion_ms", "--models-dir", str(tmp_path / "models")]) == 0


@pytest.mark.parametrize("text, message", [
    (None, "trained on crops but none of its archives has a crop_metadata.json"),
    (json.dumps({"pad_superior": 40.0}), "missing padding key"),
    (json.dumps({**PADS, "pad_left": -1}), "pad_left must be a number of mm >= 0"),
])
def test_a_crop_release_without_valid_crop_metadata_is_refused(release, tmp_path, text, message):
    _, archives, _ = release
    zips = _with_crop_metadata(archives, tmp_path, text)
    with pytest.raises(ModelError, match=message):
        install("lesion_ms", models_dir=tmp_path / "models", origin=[str(z) for z in zips],
                release="r20260703")
    assert not (tmp_path / "models" / "lesion_ms").exists()
