"""Official SCT lesion models: the registry (manifest + schema), install, verify and locate.

``locate(task, models_dir=None, demo=False)`` is what pipelines call before loading a model; it checks
the installed files against ``source.json`` on every call (sizes and mtimes; re-hashing only what
changed). The command line is ``python -m bidsapp.models list|install|verify|path``.
"""
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
           "default_models_dir", "search_dirs", "describe"]


def describe(task: str) -> dict:
    """Provenance of a task's official release for sidecars: release, URLs, citation, licence."""
    m = load_manifest()
    spec = m.model_for(task)
    return {"task": canonical_task(task, m), "model": spec.name, "release": spec.release,
            "urls": [s.url for s in spec.sources], "homepage": spec.homepage, "citation": spec.citation,
            "licence": spec.licence}
