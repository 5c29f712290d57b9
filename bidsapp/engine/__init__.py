"""Inference engines: nnU-Net v2 model folders run with torch and dynamic-network-architectures alone
(no nnunetv2, no MONAI), and the legacy ONNX models (``onnx.py``).

``build_network`` builds a plans' network without nnunetv2; ``NnUNetModel`` reads a model folder;
``NnUNetPredictor`` runs it on a NIfTI image (see ``nnunet.py`` for the path of one image);
``resolve_precision`` picks the numeric precision for a device (``precision.py``).

The names are imported on first use, so ``bidsapp.engine.precision`` (which a command line reads before
it loads any model) costs no torch import.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"NnUNetModel": "modelfolder", "build_network": "network", "NnUNetPredictor": "nnunet",
          "resolve_device": "nnunet", "Levers": "nnunet", "resolve_precision": "precision",
          "PRECISIONS": "precision"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
