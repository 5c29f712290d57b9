"""Install / list / verify / locate against archives served by a local HTTP server (127.0.0.1, port 0).

The archives hold tiny but real nnU-Net v2 folders written by ``bidsapp.demo.modelfolder`` in the shapes
of the official releases: five per-fold zips (lesion_ms), one folder without wrapper and fold_3 only, old
plans format (mp2rage), a wrapped folder with a shipped ``trainer_class.py`` (spinalcord), and an ONNX zip.
"""
from __future__ import annotations

import builtins
import hashlib
import http.server
import io
import json
import os
import shutil
import stat
import threading
import zipfile
from pathlib import Path

import pytest

from bidsapp import models
from bidsapp.demo.modelfolder import (
    PlansSpec,
    make_dataset_json,
    make_plans,
    random_state_dict,
    write_model_folder,
)
from bidsapp.errors import ModelError, NoModelsError
from bidsapp.models import archive, registry
from bidsapp.models import install as install_mod
from bidsapp.models.__main__ import main
from bidsapp.models.install import install

TRAINER = "nnUNetTrainerDAExt_ResEncL__nnUNetResEncUNetLPlans__3d_fullres"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tree(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def releases(tmp_path_factory) -> dict:
    """name -> archive bytes, plus the original files for comparisons."""
    tmp = tmp_path_factory.mktemp("releases")
    ds = make_dataset_json({"background": 0, "lesion": 1}, {"0": "T2w"}, "LPI")
    resenc = make_plans(PlansSpec(network="ResidualEncoderUNet", patch_size=(8, 16, 16),
                                  spacing=(1.0, 1.0, 1.0), base_features=2, max_features=4, max_stages=2))
    sd = random_state_dict(resenc, "3d_fullres", 1, 2, seed=0)
    ms = write_model_folder(tmp / "ms", plans=resenc, dataset_json=ds, trainer="nnUNetTrainerDAExt_ResEncL",
                            fold_state_dicts={k: sd for k in range(5)})
    assert ms.name == TRAINER
    files = _tree(ms)
    out = {"ms_files": files}
    for k in range(5):  # each fold zip: the trainer folder with plans, dataset and ONE fold
        keep = {n: b for n, b in files.items() if not n.startswith("fold_") or n.startswith(f"fold_{k}/")}
        out[f"model_fold{k}.zip"] = _zip({f"{TRAINER}/{n}": b for n, b in keep.items()})
    plain_old = make_plans(PlansSpec(patch_size=(8, 16, 16), spacing=(1.0, 1.0, 1.0), base_features=2,
                                     max_features=4, max_stages=2, old_format=True))
    sd2 = random_state_dict(plain_old, "3d_fullres", 1, 2, seed=1)
    mp = write_model_folder(tmp / "mp", plans=plain_old, dataset_json=ds, fold_state_dicts={3: sd2})
    out["mp2rage.zip"] = _zip(_tree(mp))  # no wrapper folder: the name comes from the manifest
    out["mp_files"] = _tree(mp)
    sc = write_model_folder(tmp / "sc", plans=plain_old, dataset_json=ds, fold_state_dicts={0: sd2, 1: sd2})
    out["sc_folder"] = sc
    sc_files = _tree(sc, "model_contrast_agnostic_20250123/nnUNetTrainer__nnUNetPlans__3d_fullres/")
    sc_files["model_contrast_agnostic_20250123/nnUNetTrainer__nnUNetPlans__3d_fullres/trainer_class.py"] = (
        b"raise SystemExit('executed!')\n")
    out["sc.zip"] = _zip(sc_files)
    out["legacy.zip"] = _zip({f"models/{n}": n.encode() * 100
                              for n in ("t2_lesion.onnx", "t2_ax_lesion.onnx", "t2s_lesion.onnx")})
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        name = self.path.lstrip("/")
        truncated = name.startswith("truncated/")
        data = self.files.get(name.removeprefix("truncated/"))
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if truncated else data)
        if truncated:
            self.close_connection = True

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture(scope="session")
def server(releases):
    _Handler.files = {k: v for k, v in releases.items() if k.endswith(".zip")}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _manifest(tmp: Path, base: str, **changes) -> Path:
    """The packaged manifest with every URL pointing at the local server (the real file is untouched)."""
    raw = json.loads(registry.PACKAGED_MANIFEST.read_text())
    srcs = {"lesion_ms": [f"model_fold{k}.zip" for k in range(5)], "lesion_ms_mp2rage": ["mp2rage.zip"],
            "spinalcord": ["sc.zip"], "legacy_lesion": ["legacy.zip"]}
    for name, archives in srcs.items():
        raw["models"][name]["sources"] = [{"url": f"{base}/{a}", "size": None, "sha256": None}
                                          for a in archives]
    for name, fn in changes.items():
        fn(raw["models"][name])
    path = tmp / "manifest.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture
def env(tmp_path, server, monkeypatch):
    monkeypatch.setenv(registry.MANIFEST_ENV, str(_manifest(tmp_path, server)))
    monkeypatch.delenv(registry.MODELS_DIR_ENV, raising=False)
    return tmp_path / "models"


@pytest.fixture(scope="session")
def installed_ms(tmp_path_factory, server) -> tuple[Path, Path]:
    """lesion_ms installed once from the five per-fold zips (copied by tests that modify it)."""
    tmp = tmp_path_factory.mktemp("ms")
    manifest = _manifest(tmp, server)
    install("lesion_ms", models_dir=tmp / "models", manifest=manifest)
    return tmp / "models", manifest


def _edited(path: Path) -> None:
    """An edit moves the mtime on; made explicit so that coarse filesystem clocks cannot hide it."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def _copy_install(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy2)  # copy2 keeps mtimes: as installed
    return dst


def test_install_merges_per_fold_zips_then_list_verify_locate(env, releases, server, capsys):
    assert main(["install", "seg_ms_lesion", "--models-dir", str(env)]) == 0
    folder = env / "lesion_ms" / TRAINER
    assert sorted(p.name for p in folder.glob("fold_*")) == [f"fold_{k}" for k in range(5)]
    assert _tree(folder) == releases["ms_files"]  # byte-identical to the release's files
    source = json.loads((env / "lesion_ms" / "source.json").read_text())
    assert source["release"] == "r20250909" and source["model_path"] == TRAINER
    assert [s["origin"] for s in source["sources"]] == [f"{server}/model_fold{k}.zip" for k in range(5)]
    assert [s["sha256"] for s in source["sources"]] == [
        _sha(releases[f"model_fold{k}.zip"]) for k in range(5)]
    assert {k: v["sha256"] for k, v in source["files"].items()} == {
        f"{TRAINER}/{n}": _sha(b) for n, b in releases["ms_files"].items()}
    assert not [p for p in env.iterdir() if p.name.startswith(".")]  # no staging left behind

    loc = models.locate("lesion_ms", models_dir=env)
    assert loc.path == folder and loc.release == "r20250909" and loc.demo is False
    assert loc.sha256 == {n: _sha(b) for n, b in releases["ms_files"].items()}

    capsys.readouterr()
    assert main(["list", "--models-dir", str(env)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["lesion_ms"][1:3] == ["r20250909", "installed"]
    assert rows["spinalcord"][2] == "missing" and rows["t2"][2] == "missing"
    assert main(["verify", "--models-dir", str(env)]) == 0
    assert "lesion_ms: OK (7 files re-hashed)" in capsys.readouterr().out
    assert main(["path", "lesion_ms", "--models-dir", str(env)]) == 0
    assert capsys.readouterr().out.strip() == str(folder)


def test_one_changed_byte_fails_verify_and_locate(installed_ms, tmp_path, capsys, monkeypatch):
    base, manifest = installed_ms
    monkeypatch.setenv(registry.MANIFEST_ENV, str(manifest))
    models_dir = _copy_install(base, tmp_path / "models")
    ckpt = models_dir / "lesion_ms" / TRAINER / "fold_2" / "checkpoint_final.pth"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    _edited(ckpt)
    with pytest.raises(ModelError) as err:
        models.locate("lesion_ms", models_dir=models_dir)
    msg = str(err.value)
    assert f"{TRAINER}/fold_2/checkpoint_final.pth: sha256 differs" in msg
    assert f"python -m bidsapp.models install lesion_ms --models-dir {models_dir}" in msg
    assert main(["verify", "lesion_ms", "--models-dir", str(models_dir)]) == 1
    err = capsys.readouterr().err
    assert main(["list", "--models-dir", str(models_dir)]) == 0
    assert "lesion_ms          r20250909  CHANGED" in capsys.readouterr().out
    assert "lesion_ms: FAILED" in err and f"install lesion_ms --models-dir {models_dir}" in err
    # The same change with the mtime put back: only a full verify can see it, and it does.
    st = (models_dir / "lesion_ms" / TRAINER / "plans.json").stat()
    os.utime(ckpt, ns=(st.st_atime_ns, json.loads((models_dir / "lesion_ms" / "source.json").read_text())
                       ["files"][f"{TRAINER}/fold_2/checkpoint_final.pth"]["mtime_ns"]))
    assert main(["verify", "--models-dir", str(models_dir)]) == 1
    # An extra fold would be loaded by the engine: refused too.
    ckpt.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ModelError, match="size"):
        models.locate("lesion_ms", models_dir=models_dir)


def test_extra_file_is_refused(installed_ms, tmp_path):
    base, manifest = installed_ms
    models_dir = _copy_install(base, tmp_path / "models")
    (models_dir / "lesion_ms" / TRAINER / "fold_5").mkdir()
    (models_dir / "lesion_ms" / TRAINER / "fold_5" / "checkpoint_final.pth").write_bytes(b"x")
    with pytest.raises(ModelError, match="fold_5/checkpoint_final.pth: not part of the installed release"):
        models.locate("lesion_ms", models_dir=models_dir, manifest=manifest)


def test_truncated_download_installs_nothing(tmp_path, server, monkeypatch):
    def truncate(m):
        m["sources"][3]["url"] = m["sources"][3]["url"].replace("/model_fold3", "/truncated/model_fold3")
    manifest = _manifest(tmp_path, server, lesion_ms=truncate)
    monkeypatch.setattr(archive, "RETRY_DELAYS", (0.0, 0.0))
    _Handler.requests.clear()
    with pytest.raises(ModelError, match=r"truncated/model_fold3.zip: download truncated: \d+ of \d+ "
                                         r"bytes received \(after 3 attempts\)"):
        install("lesion_ms", models_dir=tmp_path / "models", manifest=manifest)
    assert _Handler.requests.count("/truncated/model_fold3.zip") == 3  # retried, then given up
    assert list((tmp_path / "models").iterdir()) == []  # no model, no staging, no partial download


def test_manifest_checksum_and_size_are_enforced(tmp_path, server, releases):
    data = releases["sc.zip"]

    def wrong_sha(m):
        m["sources"][0]["sha256"] = "0" * 64
    with pytest.raises(ModelError, match="sha256 .* differs from the manifest"):
        install("spinalcord", models_dir=tmp_path / "a",
                manifest=_manifest(tmp_path, server, spinalcord=wrong_sha))

    def right(m):
        m["sources"][0].update(sha256=_sha(data), size=len(data))
    install("spinalcord", models_dir=tmp_path / "b", manifest=_manifest(tmp_path, server, spinalcord=right))
    assert (tmp_path / "b" / "spinalcord" / "source.json").is_file()


def _evil_zip(path: Path, kind: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{TRAINER}/plans.json", b"{}")
        if kind == "dotdot":
            zf.writestr(f"{TRAINER}/../../evil.txt", b"pwned")
        elif kind == "absolute":
            zf.writestr("/tmp/evil_abs.txt", b"pwned")
        else:
            info = zipfile.ZipInfo(f"{TRAINER}/fold_0/checkpoint_final.pth")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_zip_slip_refused_and_nothing_written(tmp_path, kind, env):
    archive = _evil_zip(tmp_path / f"{kind}.zip", kind)
    before = set(tmp_path.rglob("*"))
    assert main(["install", "lesion_ms_mp2rage", "--from", str(archive), "--models-dir", str(env)]) == 1
    assert set(tmp_path.rglob("*")) - before == {env}  # only the (empty) models folder itself
    assert list(env.iterdir()) == []
    assert not Path("/tmp/evil_abs.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    with pytest.raises(ModelError, match="refused"):
        install("lesion_ms_mp2rage", models_dir=env, origin=[str(archive)])


def test_old_plans_single_fold_without_wrapper_folder(env, releases, tmp_path):
    (tmp_path / "mp2rage.zip").write_bytes(releases["mp2rage.zip"])
    assert main(["install", "lesion_ms_mp2rage", "--from", str(tmp_path / "mp2rage.zip"),
                 "--models-dir", str(env)]) == 0
    loc = models.locate("seg_ms_lesion_mp2rage", models_dir=env)
    assert loc.path.name == "nnUNetTrainer_seg_ms_lesion_mp2rage__nnUNetPlans__3d_fullres"
    assert sorted(loc.sha256) == ["dataset.json", "fold_3/checkpoint_final.pth", "plans.json"]
    plans = json.loads((loc.path / "plans.json").read_text())
    assert "UNet_class_name" in plans["configurations"]["3d_fullres"]  # the pre-2.4 plans format


def test_missing_fold_is_refused(env, releases, tmp_path):
    zips = []
    for k in range(4):  # fold 4 missing
        (tmp_path / f"f{k}.zip").write_bytes(releases[f"model_fold{k}.zip"])
        zips += ["--from", str(tmp_path / f"f{k}.zip")]
    assert main(["install", "lesion_ms", *zips, "--models-dir", str(env)]) == 1
    assert list(env.iterdir()) == []


def test_from_folder_and_shipped_python_is_not_installed(env, releases, server):
    assert main(["install", "spinalcord", "--models-dir", str(env)]) == 0  # wrapped zip with trainer_class.py
    assert not list((env / "spinalcord").rglob("*.py"))
    loc = models.locate("spinalcord", models_dir=env)
    assert loc.path.name == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert sorted(loc.sha256) == ["dataset.json", "fold_0/checkpoint_final.pth",
                                  "fold_1/checkpoint_final.pth", "plans.json"]
    other = env.parent / "other"
    assert main(["install", "spinalcord", "--from", str(releases["sc_folder"]),
                 "--models-dir", str(other)]) == 0
    assert models.locate("spinalcord", models_dir=other).sha256 == loc.sha256
    mirror = env.parent / "mirror"  # --from URL: a mirror of the release
    assert main(["install", "spinalcord", "--from", f"{server}/sc.zip", "--models-dir", str(mirror)]) == 0
    assert models.locate("spinalcord", models_dir=mirror).sha256 == loc.sha256


def test_legacy_onnx_release(env, releases):
    assert main(["install", "t2", "--models-dir", str(env)]) == 0
    for task, name in (("t2", "t2_lesion.onnx"), ("t2_ax", "t2_ax_lesion.onnx"), ("t2s", "t2s_lesion.onnx")):
        loc = models.locate(task, models_dir=env)
        assert loc.path == env / "legacy_lesion" / name and loc.release == "r20180613"
        assert loc.sha256 == {name: _sha(name.encode() * 100)}


def test_interrupted_install_leaves_previous_model_usable(env, monkeypatch):
    install("spinalcord", models_dir=env)
    before = models.locate("spinalcord", models_dir=env)

    def boom(*a, **k):
        raise KeyboardInterrupt  # the user presses Ctrl-C while the new release is being checked
    with monkeypatch.context() as mp:
        mp.setattr(install_mod, "record_files", boom)
        with pytest.raises(KeyboardInterrupt):
            install("spinalcord", models_dir=env)
    assert models.locate("spinalcord", models_dir=env) == before
    assert [p.name for p in env.iterdir()] == ["spinalcord"]  # staging removed
    # Killed between the two renames of the swap: the previous install is found aside.
    os.rename(env / "spinalcord", env / ".spinalcord.old-123")
    assert models.locate("spinalcord", models_dir=env).sha256 == before.sha256
    install("spinalcord", models_dir=env)  # a reinstall completes the swap and tidies up
    assert models.locate("spinalcord", models_dir=env).path == before.path
    assert [p.name for p in env.iterdir()] == ["spinalcord"]


def test_read_only_models_dir_works_and_locate_never_writes(installed_ms, tmp_path, monkeypatch):
    base, manifest = installed_ms
    monkeypatch.setenv(registry.MANIFEST_ENV, str(manifest))
    # A copy that did not keep mtimes (plain `cp -r`, some container layers): locate re-hashes.
    ro = tmp_path / "ro"
    shutil.copytree(base, ro, copy_function=shutil.copyfile)
    for p in [ro, *ro.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    listing = {p: p.stat().st_mtime_ns for p in ro.rglob("*")}

    def guard(fn):
        def wrapped(file, mode="r", *a, **k):
            if any(c in mode for c in "wax+") and str(file).startswith(str(ro)):
                raise AssertionError(f"write attempted: {file}")
            return fn(file, mode, *a, **k)
        return wrapped
    real_os_open = os.open

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and str(path).startswith(str(ro)):
            raise AssertionError(f"write attempted: {path}")
        return real_os_open(path, flags, *a, **k)
    try:
        with monkeypatch.context() as mp:
            mp.setattr(builtins, "open", guard(builtins.open))
            mp.setattr(io, "open", guard(io.open))
            mp.setattr(os, "open", os_open)
            loc = models.locate("lesion_ms", models_dir=ro)
            assert main(["verify", "--models-dir", str(ro)]) == 0
            assert main(["list", "--models-dir", str(ro)]) == 0
    finally:
        for p in [ro, *ro.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert loc.path == ro / "lesion_ms" / TRAINER and len(loc.sha256) == 7
    assert {p: p.stat().st_mtime_ns for p in ro.rglob("*")} == listing


def test_no_models_error_when_only_other_tasks_installed(installed_ms):
    base, manifest = installed_ms
    with pytest.raises(NoModelsError, match="install spinalcord"):
        models.locate("seg_sc_contrast_agnostic", models_dir=base, manifest=manifest)


def test_bids_app_run_refuses_a_changed_model(installed_ms, tmp_path, caplog, monkeypatch):
    import nibabel as nib
    import numpy as np

    from bidsapp import cli

    base, manifest = installed_ms
    monkeypatch.setenv(registry.MANIFEST_ENV, str(manifest))
    models_dir = _copy_install(base, tmp_path / "models")
    plans = models_dir / "lesion_ms" / TRAINER / "plans.json"
    plans.write_text(plans.read_text().replace('"batch_size": 2', '"batch_size": 3'))
    _edited(plans)
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)),
             bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    code = cli.main([str(bids), str(tmp_path / "out"), "participant", "--models-dir", str(models_dir),
                     "--skip-bids-validator", "--dry-run", "--no-crop", "--no-cord"])  # lesion_ms alone
    assert code == cli.EXIT["no_input"]
    assert f"{TRAINER}/plans.json: sha256 differs" in caplog.text
    assert "python -m bidsapp.models install lesion_ms" in caplog.text


def _fold_zips(tmp_path: Path, releases: dict, plans_for_fold) -> list[str]:
    args = []
    for k in range(5):
        files = {n: b for n, b in releases["ms_files"].items()
                 if not n.startswith("fold_") or n.startswith(f"fold_{k}/")}
        files["plans.json"] = plans_for_fold(k, files["plans.json"])
        (tmp_path / f"f{k}.zip").write_bytes(_zip({f"{TRAINER}/{n}": b for n, b in files.items()}))
        args += ["--from", str(tmp_path / f"f{k}.zip")]
    return args


def test_per_fold_plans_must_agree(env, releases, tmp_path, capsys):
    def reindented(k, raw):  # the same JSON, written differently by each fold's export: accepted
        return json.dumps(json.loads(raw), indent=k).encode()
    assert main(["install", "lesion_ms", *_fold_zips(tmp_path, releases, reindented),
                 "--models-dir", str(env)]) == 0
    assert json.loads((env / "lesion_ms" / TRAINER / "plans.json").read_text()) == json.loads(
        releases["ms_files"]["plans.json"])

    def other_spacing(k, raw):  # fold 2 planned on another spacing: these folds cannot be ensembled
        plans = json.loads(raw)
        if k == 2:
            plans["configurations"]["3d_fullres"]["spacing"] = [2.0, 1.0, 1.0]
        return json.dumps(plans).encode()
    before = models.locate("lesion_ms", models_dir=env)
    assert main(["install", "lesion_ms", *_fold_zips(tmp_path, releases, other_spacing),
                 "--models-dir", str(env)]) == 1
    assert "f2.zip: plans.json differs from the one in another archive" in capsys.readouterr().err
    assert models.locate("lesion_ms", models_dir=env) == before  # the previous install is untouched


def test_damaged_source_json_is_a_model_error(installed_ms, tmp_path):
    base, manifest = installed_ms
    models_dir = _copy_install(base, tmp_path / "models")
    source = models_dir / "lesion_ms" / "source.json"
    data = json.loads(source.read_text())
    data["files"][f"{TRAINER}/plans.json"] = "deadbeef"
    source.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="source.json: no valid file records"):
        models.locate("lesion_ms", models_dir=models_dir, manifest=manifest)
    source.write_text("{")
    with pytest.raises(ModelError, match="source.json: unreadable"):
        models.locate("lesion_ms", models_dir=models_dir, manifest=manifest)


def test_list_flags_an_install_of_another_release(installed_ms, tmp_path, server, capsys, monkeypatch):
    base, _ = installed_ms

    def newer(m):
        m["release"] = "r20990101"
    monkeypatch.setenv(registry.MANIFEST_ENV, str(_manifest(tmp_path, server, lesion_ms=newer)))
    assert main(["list", "--models-dir", str(base)]) == 0
    assert "lesion_ms          r20250909  other-rel" in capsys.readouterr().out
    assert models.locate("lesion_ms", models_dir=base).release == "r20250909"  # what is really installed


def test_committed_demo_folder_installs_like_a_release(env):
    demo = models.locate("spinalcord", demo=True)  # the DEMO engineer's committed trainer folder
    assert main(["install", "spinalcord", "--from", str(demo.path), "--models-dir", str(env)]) == 0
    loc = models.locate("spinalcord", models_dir=env)
    assert loc.path.name == demo.path.name and loc.sha256 == demo.sha256 and loc.demo is False
