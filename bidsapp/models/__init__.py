"""Official SCT lesion models: the registry (manifest + schema), install, verify and locate.

``locate(task, models_dir=None, demo=False)`` is what pipelines call before loading a model; it checks
the installed files against ``source.json`` on every call (sizes and mtimes; re-hashing only what
changed). The command line is ``python -m bidsapp.models list|install|verify|path``.
"""
from . import crop_metadata
from .lookup import LocatedModel, locate
from .registry import (
    Manifest,
    ModelSpec,
    TaskSpec,
    canonical_task,
    default_models_dir,
    load_manifest,
    search_dirs,
)

__all__ = ["LocatedModel", "locate", "canonical_task", "load_manifest", "Manifest", "ModelSpec", "TaskSpec",
           "default_models_dir", "search_dirs", "describe", "crop_metadata"]


def describe(task: str, release: str | None = None) -> dict:
    """Provenance of a task's official release (``release``: a selectable one) for sidecars: release,
    URLs, citation, licence, whether it is trained on crops."""
    m = load_manifest()
    spec = m.model_for(task, release)
    return {"task": canonical_task(task, m), "model": spec.name, "release": spec.release,
            "urls": [s.url for s in spec.sources], "homepage": spec.homepage, "citation": spec.citation,
            "licence": spec.licence, "cropped_image": spec.cropped_image, "default": spec.default}
