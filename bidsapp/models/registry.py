"""The registry of official model releases: the packaged manifest, validated by its JSON Schema.

One manifest entry is one installable unit (``ModelSpec``: a release folder, possibly assembled from
several archives) offering one or more tasks (``TaskSpec``). An entry may list ``selectable_releases``
(the same model, another release: ``Manifest.model_for(name, release=...)``, ``install --release``):
they are never installed by default. ``cropped_image`` is SCT's flag for a release trained on crops
around the cord, which ships ``crop_metadata.json``. nnU-Net releases offer one task each; the
legacy ONNX release offers ``t2``, ``t2_ax`` and ``t2s``. Tests inject their own manifest (pointing at a
local server) through the ``manifest`` arguments or the ``CORDLESION_MANIFEST`` environment variable;
the packaged file is never patched.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jsonschema

from ..errors import ConfigError, ModelError

__all__ = ["Manifest", "ModelSpec", "TaskSpec", "SourceSpec", "load_manifest", "canonical_task",
           "MANIFEST_ENV", "MODELS_DIR_ENV", "PACKAGED_MANIFEST", "SCHEMA_PATH", "search_dirs",
           "default_models_dir", "DEMO_DIR"]

MANIFEST_ENV = "CORDLESION_MANIFEST"
MODELS_DIR_ENV = "CORDLESION_MODELS"
PACKAGED_MANIFEST = Path(__file__).resolve().parent / "manifest.json"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "manifest.schema.json"
DEMO_DIR = Path(__file__).resolve().parent / "demo"


@dataclass(frozen=True)
class SourceSpec:
    url: str
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    model: str  # the ModelSpec name that provides this task
    aliases: tuple[str, ...]
    contrasts: tuple[str, ...]
    file: str | None  # ONNX file name inside the model folder; None for nnU-Net tasks


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    format: str  # "nnunetv2" or "onnx"
    release: str
    homepage: str
    tasks: tuple[TaskSpec, ...]
    sources: tuple[SourceSpec, ...]
    configuration: str | None
    folds: tuple[int, ...] | None
    network: str | None
    folder_name: str | None
    citation: str
    licence: str
    cropped_image: bool = False  # trained on crops around the cord: ships crop_metadata.json
    default: bool = True  # False: a selectable release, installed only when asked for
    status: str | None = None  # why a selectable release is not the default


@dataclass(frozen=True)
class Manifest:
    path: Path
    models: dict[str, ModelSpec]
    tasks: dict[str, TaskSpec]
    aliases: dict[str, str]  # alias (and canonical name) -> canonical task
    releases: dict[str, dict[str, ModelSpec]] = field(default_factory=dict)  # model -> release -> spec

    def task(self, name: str) -> TaskSpec:
        return self.tasks[canonical_task(name, self)]

    def model_for(self, name: str, release: str | None = None) -> ModelSpec:
        """The model providing task or alias ``name`` (a model name is accepted too); ``release``: one of
        its releases (the default one or a selectable one), else ``ModelError`` listing them."""
        model = self.models[name] if name in self.models else self.models[self.task(name).model]
        if release is None or release == model.release:
            return model
        known = self.releases.get(model.name, {})
        if release not in known:
            raise ModelError(f"{model.name} has no release {release!r} (known: {', '.join(sorted(known))})")
        return known[release]


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _parse(path: Path, raw: dict) -> Manifest:
    models: dict[str, ModelSpec] = {}
    tasks: dict[str, TaskSpec] = {}
    aliases: dict[str, str] = {}
    releases: dict[str, dict[str, ModelSpec]] = {}
    for name, m in raw["models"].items():
        specs = tuple(TaskSpec(t, name, tuple(d["aliases"]), tuple(d["contrasts"]), d.get("file"))
                      for t, d in m["tasks"].items())
        models[name] = _model_spec(name, m, specs)
        releases[name] = {m["release"]: models[name]}
        for alt in m.get("selectable_releases", []):
            merged = {**m, **alt, "homepage": alt.get("homepage", m["homepage"]),
                      "citation": alt.get("citation", m["citation"])}
            if alt["release"] in releases[name]:
                raise ConfigError(f"{path}: release {alt['release']!r} of {name} is listed twice")
            releases[name][alt["release"]] = _model_spec(name, merged, specs, default=False)
        for t in specs:
            for key in (t.name, *t.aliases):
                if key in aliases or key in tasks:
                    raise ConfigError(f"{path}: task name or alias {key!r} is defined twice")
                aliases[key] = t.name
            tasks[t.name] = t
    return Manifest(path=path, models=models, tasks=tasks, aliases=aliases, releases=releases)


def _model_spec(name: str, m: dict, tasks: tuple[TaskSpec, ...], default: bool = True) -> ModelSpec:
    lay = m["layout"]
    return ModelSpec(
        name=name, description=m["description"], format=m["format"], release=m["release"],
        homepage=m["homepage"], tasks=tasks,
        sources=tuple(SourceSpec(s["url"], s["size"], s["sha256"]) for s in m["sources"]),
        configuration=lay["configuration"], folds=tuple(lay["folds"]) if lay["folds"] else None,
        network=lay["network"], folder_name=lay["folder_name"], citation=m["citation"],
        licence=m["licence"], cropped_image=bool(m.get("cropped_image", False)), default=default,
        status=m.get("status"))


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> Manifest:
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the model manifest ({exc})") from exc
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema()).iter_errors(raw))
    if err is not None:
        where = "/".join(str(x) for x in err.absolute_path) or "(top level)"
        raise ConfigError(f"{p}: invalid model manifest at {where}: {err.message}")
    return _parse(p, raw)


def load_manifest(path: str | Path | Manifest | None = None) -> Manifest:
    """The manifest at ``path``, else ``$CORDLESION_MANIFEST``, else the packaged one (validated, cached)."""
    if isinstance(path, Manifest):
        return path
    chosen = Path(path or os.environ.get(MANIFEST_ENV) or PACKAGED_MANIFEST).resolve()
    try:
        mtime = chosen.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"{chosen}: model manifest not found ({exc.strerror})") from exc
    return _load_cached(str(chosen), mtime)


def canonical_task(name: str, manifest: Manifest | str | Path | None = None) -> str:
    """The canonical task for a task name or alias: ``seg_ms_lesion`` -> ``lesion_ms``,
    ``seg_ms_lesion_mp2rage`` -> ``lesion_ms_mp2rage``, ``seg_sc_contrast_agnostic`` -> ``spinalcord``,
    ``t2_lesion`` -> ``t2``. Raises ``ModelError`` listing the known tasks for an unknown name."""
    m = load_manifest(manifest)
    key = name.strip()
    if key in m.aliases:
        return m.aliases[key]
    raise ModelError(f"unknown model task {name!r}: known tasks are {', '.join(sorted(m.tasks))} "
                     f"(aliases: {', '.join(sorted(set(m.aliases) - set(m.tasks)))})")


def _writable(path: Path) -> bool:
    """Whether ``path`` (or its nearest existing parent) can be written by this process."""
    for p in (path, *path.parents):
        if p.exists():
            return p.is_dir() and os.access(p, os.W_OK | os.X_OK)
    return False


def _user_dir() -> Path | None:
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "cordlesion" / "models"
    home = os.environ.get("HOME")
    if home and home != "/":
        return Path(home) / ".local" / "share" / "cordlesion" / "models"
    return None


def _prefix_dir() -> Path:
    return Path(sys.prefix) / "share" / "cordlesion" / "models"


def search_dirs(models_dir: str | Path | None = None) -> list[Path]:
    """Where installed models are looked for, in order.

    ``models_dir`` if given, else ``$CORDLESION_MODELS`` if set (only that one), else the per-user data
    folder (``$XDG_DATA_HOME/cordlesion/models`` or ``~/.local/share/cordlesion/models``) and then
    ``<sys.prefix>/share/cordlesion/models`` (the environment or container's own folder).
    """
    if models_dir is not None:
        return [Path(models_dir).expanduser()]
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return [Path(env).expanduser()]
    user = _user_dir()
    return [p for p in (user, _prefix_dir()) if p is not None]


def default_models_dir(models_dir: str | Path | None = None) -> Path:
    """Where ``install`` writes: ``models_dir``, else ``$CORDLESION_MODELS``, else the per-user data
    folder when it is writable (HOME may be read-only in containers and on compute nodes), else
    ``<sys.prefix>/share/cordlesion/models``."""
    dirs = search_dirs(models_dir)
    if len(dirs) == 1:
        return dirs[0]
    for d in dirs:
        if _writable(d):
            return d
    return dirs[-1]
