"""The packaged manifest, its schema, task aliases, the models-folder rules and locate's errors."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from bidsapp import models
from bidsapp.errors import ConfigError, ModelError, NoModelsError
from bidsapp.models import registry
from bidsapp.models.__main__ import main


def test_packaged_manifest_has_the_official_releases():
    m = models.load_manifest(registry.PACKAGED_MANIFEST)
    assert set(m.tasks) == {"lesion_ms", "lesion_ms_mp2rage", "spinalcord", "t2", "t2_ax", "t2s"}
    ms = m.model_for("lesion_ms")
    assert ms.release == "r20250909" and ms.folds == (0, 1, 2, 3, 4) and ms.network == "ResidualEncoderUNet"
    assert [s.url.rsplit("/", 1)[1] for s in ms.sources] == [f"model_fold{k}.zip" for k in range(5)]
    mp = m.model_for("lesion_ms_mp2rage")
    assert mp.folds == (3,) and mp.release == "r20240610"
    assert mp.folder_name == "nnUNetTrainer_seg_ms_lesion_mp2rage__nnUNetPlans__3d_fullres"
    assert m.model_for("spinalcord").sources[0].url.endswith("/v3.0/model_contrast_agnostic_20250123.zip")
    legacy = m.model_for("t2s")
    assert legacy.format == "onnx" and {t.file for t in legacy.tasks} == {
        "t2_lesion.onnx", "t2_ax_lesion.onnx", "t2s_lesion.onnx"}
    for model in m.models.values():  # every entry cites and licenses; unknown checksums are null
        assert model.citation and model.licence and all(s.url.startswith("https://") for s in model.sources)


@pytest.mark.parametrize("alias, task", [
    ("seg_ms_lesion", "lesion_ms"), ("seg_ms_lesion_mp2rage", "lesion_ms_mp2rage"),
    ("seg_sc_contrast_agnostic", "spinalcord"), ("lesion_ms", "lesion_ms"), ("t2_lesion", "t2"),
    ("t2_ax_lesion", "t2_ax"), ("legacy_t2s", "t2s")])
def test_canonical_task(alias, task):
    assert models.canonical_task(alias) == task


def test_unknown_task_lists_known_ones():
    with pytest.raises(ModelError, match="unknown model task 'seg_gm'.*lesion_ms"):
        models.canonical_task("seg_gm")


def _write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "manifest.json"
    p.write_text(json.dumps(raw))
    return p


def test_schema_refuses_bad_manifests(tmp_path):
    raw = json.loads(registry.PACKAGED_MANIFEST.read_text())
    del raw["models"]["lesion_ms"]["citation"]
    with pytest.raises(ConfigError, match="invalid model manifest.*citation"):
        models.load_manifest(_write(tmp_path, raw))
    raw = json.loads(registry.PACKAGED_MANIFEST.read_text())
    raw["models"]["spinalcord"]["sources"][0]["sha256"] = "not-a-digest"
    with pytest.raises(ConfigError, match="models/spinalcord/sources/0/sha256"):
        models.load_manifest(_write(tmp_path, raw))
    raw = json.loads(registry.PACKAGED_MANIFEST.read_text())
    raw["models"]["spinalcord"]["tasks"]["spinalcord"]["aliases"].append("seg_ms_lesion")
    with pytest.raises(ConfigError, match="'seg_ms_lesion' is defined twice"):
        models.load_manifest(_write(tmp_path, raw))


def test_manifest_injected_by_environment(tmp_path, monkeypatch):
    raw = json.loads(registry.PACKAGED_MANIFEST.read_text())
    raw["models"]["spinalcord"]["release"] = "v9.9"
    monkeypatch.setenv(registry.MANIFEST_ENV, str(_write(tmp_path, raw)))
    assert models.load_manifest().model_for("spinalcord").release == "v9.9"
    monkeypatch.delenv(registry.MANIFEST_ENV)
    assert models.load_manifest().model_for("spinalcord").release == "v3.0"


def test_models_dir_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("CORDLESION_MODELS", str(tmp_path / "env"))
    assert models.search_dirs() == [tmp_path / "env"]
    assert models.default_models_dir() == tmp_path / "env"
    assert models.default_models_dir(tmp_path / "arg") == tmp_path / "arg"  # --models-dir wins
    monkeypatch.delenv("CORDLESION_MODELS")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    user = tmp_path / "home" / ".local" / "share" / "cordlesion" / "models"
    prefix = Path(sys.prefix) / "share" / "cordlesion" / "models"
    assert models.search_dirs() == [user, prefix]
    assert models.default_models_dir() == user
    # A read-only HOME (containers, compute nodes): install goes to the environment's own folder.
    # Tests run as root, for whom permission bits do not apply, so os.access is simulated.
    real_access = os.access
    monkeypatch.setattr(registry.os, "access", lambda p, mode: (
        False if str(p).startswith(str(tmp_path / "home")) else real_access(p, mode)))
    assert models.default_models_dir() == prefix
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert models.search_dirs()[0] == tmp_path / "xdg" / "cordlesion" / "models"


def test_locate_without_models_says_how_to_install(tmp_path):
    with pytest.raises(NoModelsError) as err:
        models.locate("seg_ms_lesion", models_dir=tmp_path)
    msg = str(err.value)
    assert "python -m bidsapp.models install lesion_ms" in msg and "--demo" in msg and str(tmp_path) in msg
    assert "\n" not in msg


def test_cli_path_without_models_exits_1(tmp_path, capsys):
    assert main(["path", "lesion_ms", "--models-dir", str(tmp_path)]) == 1
    assert "python -m bidsapp.models install lesion_ms" in capsys.readouterr().err


def test_cli_usage_errors_exit_2(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["install", "--models-dir", str(tmp_path)])
    assert e.value.code == 2
    assert main(["install", "lesion_ms", "spinalcord", "--from", str(tmp_path)]) == 2


def _trainer(base: Path, name: str = "nnUNetTrainer__nnUNetPlans__3d_fullres") -> Path:
    folder = base / name
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text("{}")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
    return folder


def test_locate_demo_models(tmp_path, monkeypatch):
    from bidsapp.models import lookup

    monkeypatch.setattr(lookup, "DEMO_DIR", tmp_path)
    folder = _trainer(tmp_path / "lesion_ms")
    (tmp_path / "lesion_ms" / "demo_training.json").write_text("{}")  # beside the folder: ignored
    loc = models.locate("seg_ms_lesion", demo=True, models_dir=tmp_path / "nothing-installed")
    assert (loc.task, loc.path, loc.release, loc.demo) == ("lesion_ms", folder, "demo", True)
    assert loc.sha256 == {"plans.json": _sha(b"{}"), "dataset.json": _sha(b"{}"),
                          "fold_0/checkpoint_final.pth": _sha(b"weights")}
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "t2s_lesion.onnx").write_bytes(b"onnx")
    loc = models.locate("t2s", demo=True)
    assert loc.path == tmp_path / "legacy" / "t2s_lesion.onnx"
    assert loc.sha256 == {"t2s_lesion.onnx": _sha(b"onnx")}
    with pytest.raises(ModelError, match="t2_lesion.onnx: demo model for task 't2' is missing"):
        models.locate("t2", demo=True)
    _trainer(tmp_path / "lesion_ms", "nnUNetTrainer__otherPlans__3d_fullres")
    with pytest.raises(ModelError, match="expected one demo trainer folder for task 'lesion_ms', found 2"):
        models.locate("lesion_ms", demo=True)
    with pytest.raises(ModelError, match="found 0"):
        models.locate("spinalcord", demo=True)


def _sha(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()
