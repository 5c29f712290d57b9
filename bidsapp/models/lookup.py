"""Find the model for a task: an installed release (checked against its ``source.json``) or the demo model.

Installed layout (one folder per manifest entry, swapped in atomically by ``install``)::

    <models_dir>/<model>/source.json
    <models_dir>/<model>/<Trainer>__<Plans>__<configuration>/{plans.json,dataset.json,fold_<k>/...}
    <models_dir>/legacy_lesion/{t2_lesion.onnx,t2_ax_lesion.onnx,t2s_lesion.onnx}

``locate`` never writes anything, so it works on read-only model folders.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError, NoModelsError
from .registry import DEMO_DIR, Manifest, ModelSpec, TaskSpec, canonical_task, load_manifest, search_dirs
from .verify import SOURCE_JSON, check_folder, hash_file

__all__ = ["LocatedModel", "locate", "installed_root", "trainer_folders", "reinstall_hint",
           "TRAINER_FOLDER_RE"]

log = logging.getLogger(__name__)

# nnU-Net's "<Trainer>__<Plans>__<configuration>": plain names only (they are never imported).
_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
TRAINER_FOLDER_RE = rf"^{_PART}__{_PART}__{_PART}$"


@dataclass(frozen=True)
class LocatedModel:
    """A model ready to load: ``path`` is the nnU-Net trainer folder or the ``.onnx`` file."""
    task: str
    path: Path
    release: str
    demo: bool
    sha256: dict[str, str] = field(default_factory=dict)  # relative to the trainer folder / ONNX folder


def trainer_folders(root: Path, configuration: str | None = None) -> list[Path]:
    """Trainer folders directly under ``root`` (name ``A__B__C`` holding a ``plans.json``)."""
    pattern = re.compile(TRAINER_FOLDER_RE)
    found = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.is_symlink() and pattern.match(p.name)
             and (p / "plans.json").is_file()]
    if configuration:
        found = [p for p in found if p.name.rsplit("__", 1)[1] == configuration]
    return found


def _old_copies(base: Path, model: str) -> list[Path]:
    # An install swaps "<model>" -> ".<model>.old-*" then the new one in; if it was killed between the
    # two renames, the previous install is still complete here.
    return sorted((p for p in base.glob(f".{model}.old-*") if (p / SOURCE_JSON).is_file()),
                  key=lambda p: p.stat().st_mtime_ns, reverse=True)


def installed_root(model: ModelSpec, models_dir: str | Path | None = None) -> Path | None:
    """The installed folder of ``model`` in the first search dir that has one, else None."""
    for base in search_dirs(models_dir):
        root = base / model.name
        if (root / SOURCE_JSON).is_file():
            return root
        if base.is_dir() and not root.exists():
            old = _old_copies(base, model.name)
            if old:
                log.warning("%s: missing but an interrupted install left the previous one at %s; using it",
                            root, old[0])
                return old[0]
    return None


def reinstall_hint(model: ModelSpec, models_dir: str | Path | None) -> str:
    """The command that reinstalls ``model`` into the same models folder."""
    where = f" --models-dir {models_dir}" if models_dir is not None else ""
    return f"python -m bidsapp.models install {model.name}{where}"


def _select(task: TaskSpec, model: ModelSpec, root: Path, sha: dict[str, str], source: dict) -> LocatedModel:
    if model.format == "onnx":
        path = root / task.file
        return LocatedModel(task.name, path, source.get("release", model.release), False,
                            {task.file: sha[task.file]})
    rel = source.get("model_path")
    if not isinstance(rel, str) or not rel or "/" in rel or rel.startswith("."):
        raise ModelError(f"{root / SOURCE_JSON}: no valid 'model_path' (the trainer folder name)")
    prefix = rel + "/"
    files = {k[len(prefix):]: v for k, v in sha.items() if k.startswith(prefix)}
    return LocatedModel(task.name, root / rel, source.get("release", model.release), False, files)


def _locate_installed(task: TaskSpec, model: ModelSpec, models_dir: str | Path | None) -> LocatedModel:
    root = installed_root(model, models_dir)
    if root is None:
        searched = ", ".join(str(d) for d in search_dirs(models_dir))
        raise NoModelsError(
            f"no installed model for task {task.name!r} (searched {searched}): install it with "
            f"`python -m bidsapp.models install {task.name}` where a network is available "
            f"(set CORDLESION_MODELS or --models-dir to choose the folder), or run with --demo "
            f"to use the small demo models")
    check = check_folder(root, reinstall_hint=reinstall_hint(model, models_dir))
    located = _select(task, model, root, check.sha256, check.source)
    if not located.path.exists():
        raise ModelError(f"{located.path}: listed in {root / SOURCE_JSON} but missing")
    return located


def _locate_demo(task: TaskSpec, model: ModelSpec) -> LocatedModel:
    if model.format == "onnx":
        path = DEMO_DIR / "legacy" / task.file
        if not path.is_file():
            raise ModelError(f"{path}: demo model for task {task.name!r} is missing from this installation")
        return LocatedModel(task.name, path, "demo", True, {task.file: hash_file(path)})
    base = DEMO_DIR / task.name
    folders = trainer_folders(base, model.configuration) if base.is_dir() else []
    if len(folders) != 1:
        raise ModelError(f"{base}: expected one demo trainer folder for task {task.name!r}, found "
                         f"{len(folders)} (the package is incomplete; train them with "
                         f"`python -m bidsapp.demo.train`)")
    folder = folders[0]
    files = {p.relative_to(folder).as_posix(): hash_file(p)
             for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}
    return LocatedModel(task.name, folder, "demo", True, files)


def locate(task: str, *, models_dir: str | Path | None = None, demo: bool = False,
           manifest: Manifest | str | Path | None = None) -> LocatedModel:
    """The model for ``task`` (a task name or SCT alias).

    ``demo=True``: the embedded demo model (release ``"demo"``). Otherwise the installed release from
    ``models_dir`` (default: see ``registry.search_dirs``), checked against its ``source.json``:
    raises ``NoModelsError`` when none is installed and ``ModelError`` when a file changed.
    """
    m = load_manifest(manifest)
    spec = m.tasks[canonical_task(task, m)]
    model = m.models[spec.model]
    if demo:
        return _locate_demo(spec, model)
    return _locate_installed(spec, model, models_dir)
