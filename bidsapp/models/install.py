"""Install an official release: fetch its archive(s), unpack into a staging folder next to the
destination, assemble and check the layout, write ``source.json``, then swap it into place by rename.

A failure at any step removes the staging folder and leaves the previous install untouched.
Per-fold archives (``lesion_ms`` r20250909: ``model_fold0..4.zip``) are merged into one trainer folder.
Python shipped in an archive (``trainer_class.py``, which SCT executes) is never installed, imported or
run. A ``crop_metadata.json`` (releases trained on crops, at the root of their archives) is checked and
installed into the trainer folder, where ``crop_metadata.read`` finds it.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import ModelError
from . import crop_metadata
from .archive import Fetched, copy_tree, download, safe_extract
from .lookup import TRAINER_FOLDER_RE
from .registry import Manifest, ModelSpec, default_models_dir, load_manifest
from .verify import SOURCE_JSON, hash_file, record_files

__all__ = ["install", "Installed", "check_nnunet_layout"]

log = logging.getLogger(__name__)

_TRAINER_RE = re.compile(TRAINER_FOLDER_RE)
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")
_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
# Python shipped in archives (SCT's trainer_class.py) is never used by us: not even copied.
_SKIPPED_SUFFIXES = (".py", ".pyc", ".pyo", ".so")


@dataclass(frozen=True)
class Installed:
    model: str
    path: Path  # <models_dir>/<model>
    release: str
    files: int
    bytes: int


# ---------------------------------------------------------------------------------------------- fetching

def _is_url(s: str) -> bool:
    return urllib.parse.urlparse(s).scheme in ("http", "https", "file")


def _fetch_sources(model: ModelSpec, origin: list[str] | None, staging: Path) -> list[tuple[str, Path]]:
    """(origin, local path) per source: downloaded archives, local zips, or local folders."""
    if origin:
        items = [(o, None, None) for o in origin]
    else:
        items = [(s.url, s.size, s.sha256) for s in model.sources]
    got: list[tuple[str, Path]] = []
    for k, (where, size, sha) in enumerate(items):
        if _is_url(where):
            log.info("downloading %s", where)
            f: Fetched = download(where, staging / f"download-{k}.zip", expected_size=size,
                                  expected_sha256=sha)
            got.append((where, f.path))
        else:
            p = Path(where).expanduser().resolve()
            if not p.exists():
                raise ModelError(f"{p}: no such archive or folder")
            got.append((str(p), p))
    return got


def _unpack(got: list[tuple[str, Path]], staging: Path) -> list[Path]:
    roots = []
    for k, (_, path) in enumerate(got):
        root = staging / f"unpacked-{k}"
        root.mkdir()
        if path.is_dir():
            copy_tree(path, root)
        else:
            safe_extract(path, root)
        roots.append(root)
    return roots


# ---------------------------------------------------------------------------------------------- assembly

def _candidate_folders(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that hold an nnU-Net ``plans.json`` + ``dataset.json``."""
    return sorted(Path(d) for d, _, files in os.walk(root)
                  if "plans.json" in files and "dataset.json" in files)


def _folder_name(folder: Path, model: ModelSpec) -> str:
    if _TRAINER_RE.match(folder.name):
        return folder.name
    if model.folder_name:
        return model.folder_name
    # An archive holding the folder's content without the folder: nnU-Net's default trainer name.
    try:
        plans_name = json.loads((folder / "plans.json").read_text())["plans_name"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{folder / 'plans.json'}: no plans_name to name the trainer folder") from exc
    name = f"nnUNetTrainer__{plans_name}__{model.configuration}"
    if not _TRAINER_RE.match(name):
        raise ModelError(f"{folder / 'plans.json'}: plans_name {plans_name!r} is not a plain name")
    return name


def _pick_trainer_folder(root: Path, model: ModelSpec, origin: str) -> tuple[str, Path]:
    found = _candidate_folders(root)
    named = [f for f in found if _TRAINER_RE.match(f.name)]
    if named:  # releases may hold several configurations: keep the manifest's one
        found = [f for f in named if f.name.rsplit("__", 1)[1] == model.configuration]
    if len(found) != 1:
        raise ModelError(f"{origin}: expected one nnU-Net {model.configuration} folder (plans.json + "
                         f"dataset.json), found {len(found)}")
    return _folder_name(found[0], model), found[0]


# Files every fold of a release must share: the folds are only ensembled if they agree on these.
_SHARED = ("plans.json", "dataset.json", "crop_metadata.json")


def _same_content(a: Path, b: Path) -> bool:
    if a.read_bytes() == b.read_bytes():
        return True
    if a.suffix == ".json":  # the same JSON written with another key order or indentation
        try:
            return json.loads(a.read_text()) == json.loads(b.read_text())
        except ValueError:
            return False
    return False


def _merge_file(src: Path, out: Path, rel: Path, origin: str) -> None:
    target = out / rel
    if target.exists():
        if _same_content(src, target):
            return
        if rel.as_posix() in _SHARED:
            raise ModelError(f"{origin}: {target.name} differs from the one in another archive of the "
                             f"release: these folds cannot be combined")
        log.warning("%s: %s differs from the one in another archive; keeping the first", origin, target.name)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, target)


def _merge_into(folder: Path, out: Path, origin: str) -> None:
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder)
        if path.suffix in _SKIPPED_SUFFIXES or "__pycache__" in rel.parts:
            log.info("%s: not installing %s (code shipped with the model is never used)", origin, rel)
            continue
        if _FOLD_RE.match(rel.parts[0]) and (out / rel).exists():
            raise ModelError(f"{origin}: {rel} is also in another archive of the release")
        _merge_file(path, out, rel, origin)


def _assemble_nnunet(model: ModelSpec, roots: list[Path], origins: list[str], out: Path) -> str:
    names = set()
    for root, origin in zip(roots, origins, strict=True):
        name, folder = _pick_trainer_folder(root, model, origin)
        names.add(name)
        if len(names) > 1:
            raise ModelError(f"{origin}: trainer folder {name!r} differs from {sorted(names - {name})[0]!r} "
                             f"in another archive of the release")
        _merge_into(folder, out / name, origin)
        _merge_crop_metadata(root, out / name, origin)
    name = names.pop()
    check_nnunet_layout(out / name, model)
    found = crop_metadata.read(out / name)
    if model.cropped_image and found is None:
        raise ModelError(f"{model.name} {model.release}: the release is trained on crops but none of its "
                         f"archives has a {crop_metadata.FILE}")
    return name


def _merge_crop_metadata(root: Path, dest: Path, origin: str) -> None:
    """The archive's ``crop_metadata.json`` (SCT: at the root of the release's zip; one in the trainer
    folder was merged with the folder) into ``dest``; the archives of a release that have one must agree."""
    hits = sorted(root.rglob(crop_metadata.FILE))
    if len(hits) > 1:
        raise ModelError(f"{origin}: {len(hits)} {crop_metadata.FILE} files in one archive")
    if hits:
        _merge_file(hits[0], dest, Path(crop_metadata.FILE), origin)


def _assemble_onnx(model: ModelSpec, roots: list[Path], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for task in model.tasks:
        hits = [p for r in roots for p in r.rglob(task.file) if p.is_file()]
        if len(hits) != 1:
            raise ModelError(f"{model.name}: expected one {task.file} in the release, found {len(hits)}")
        os.replace(hits[0], out / task.file)


def check_nnunet_layout(folder: Path, model: ModelSpec) -> list[int | str]:
    """Check an nnU-Net v2 trainer folder: plans.json (old or new network format) with the manifest's
    configuration, dataset.json with labels, and a checkpoint in every expected fold. Returns the folds."""
    plans = _read_json(folder / "plans.json")
    dataset = _read_json(folder / "dataset.json")
    config = (plans.get("configurations") or {}).get(model.configuration)
    if not isinstance(config, dict):
        raise ModelError(f"{folder / 'plans.json'}: no configuration {model.configuration!r}")
    if "architecture" not in config and "UNet_class_name" not in config and "inherits_from" not in config:
        raise ModelError(f"{folder / 'plans.json'}: {model.configuration} has neither 'architecture' (plans "
                         f"v2.4+) nor 'UNet_class_name' (older plans)")
    if not isinstance(dataset.get("labels"), dict) or not dataset["labels"]:
        raise ModelError(f"{folder / 'dataset.json'}: no labels")
    folds = []
    for d in sorted(folder.iterdir()):
        m = _FOLD_RE.match(d.name)
        if m and d.is_dir():
            if not any((d / c).is_file() for c in _CHECKPOINTS):
                raise ModelError(f"{d}: no {' or '.join(_CHECKPOINTS)}")
            folds.append(int(m.group(1)) if m.group(1).isdigit() else "all")
    if not folds:
        raise ModelError(f"{folder}: no fold_<k> folder with a checkpoint")
    missing = sorted(set(model.folds or ()) - set(folds))
    if missing:
        raise ModelError(f"{folder}: release {model.release} must have folds {list(model.folds)}, "
                         f"missing {missing}")
    return folds


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: missing or not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object")
    return data


# ---------------------------------------------------------------------------------------------- install

def _write_source(out: Path, model: ModelSpec, got: list[tuple[str, Path]], model_path: str | None) -> dict:
    files = record_files(out)
    sources = []
    for origin, path in got:
        entry = {"origin": origin}
        if path.is_file():
            entry.update(size=path.stat().st_size, sha256=hash_file(path))
        sources.append(entry)
    source = {
        "model": model.name, "release": model.release, "format": model.format,
        "tasks": [t.name for t in model.tasks], "model_path": model_path,
        "sources": sources, "manifest_urls": [s.url for s in model.sources],
        "installed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "app_version": __version__, "files": files,
    }
    tmp = out / (SOURCE_JSON + ".tmp")
    tmp.write_text(json.dumps(source, indent=2) + "\n")
    os.replace(tmp, out / SOURCE_JSON)
    return source


def _swap_into_place(staged: Path, dest: Path) -> None:
    """Rename ``staged`` to ``dest``; an existing ``dest`` is renamed aside first and removed after.
    Between the two renames ``locate`` falls back to the aside copy, so there is never no model."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:12]}")
        os.rename(dest, old)
    os.rename(staged, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _remove_leftovers(dest)


def _remove_leftovers(dest: Path) -> None:
    """Remove what killed installs left: aside copies (the new install is in place) and staging
    folders older than a day (a younger one may belong to an install running right now)."""
    now = time.time()
    for p in dest.parent.glob(f".{dest.name}.*"):
        stale = ".old-" in p.name or (".tmp-" in p.name and now - p.stat().st_mtime > 86400)
        if stale and p.is_dir() and not p.is_symlink():
            log.info("removing %s left by an interrupted install", p)
            shutil.rmtree(p, ignore_errors=True)


def install(name: str, *, models_dir: str | Path | None = None, origin: list[str] | None = None,
            manifest: Manifest | str | Path | None = None, release: str | None = None) -> Installed:
    """Install the release providing task/alias/model ``name`` into ``models_dir`` (default:
    ``registry.default_models_dir``). ``origin``: URLs, local zips or folders to use instead of the
    manifest's URLs (e.g. a mirror, or archives fetched elsewhere); one per fold where split.
    ``release``: one of the manifest's selectable releases instead of the default one (it replaces
    the installed release of that model)."""
    m = load_manifest(manifest)
    model = m.model_for(name, release)
    base = default_models_dir(models_dir)
    try:
        base.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=base, prefix=f".{model.name}.tmp-"))
    except OSError as exc:
        raise ModelError(f"{base}: cannot write the models folder ({exc.strerror}); choose another with "
                         f"--models-dir or CORDLESION_MODELS") from exc
    try:
        got = _fetch_sources(model, origin, staging)
        roots = _unpack(got, staging)
        out = staging / "model"
        if model.format == "onnx":
            _assemble_onnx(model, roots, out)
            model_path = None
        else:
            out.mkdir()
            model_path = _assemble_nnunet(model, roots, [o for o, _ in got], out)
        source = _write_source(out, model, got, model_path)
        _swap_into_place(out, base / model.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    total = sum(f["size"] for f in source["files"].values())
    log.info("installed %s %s in %s (%d files, %d bytes)", model.name, model.release, base / model.name,
             len(source["files"]), total)
    return Installed(model.name, base / model.name, model.release, len(source["files"]), total)
