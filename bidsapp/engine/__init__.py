"""Inference engines: nnU-Net v2 model folders (torch + MONAI + dynamic-network-architectures).

``build_network`` builds a plans' network without nnunetv2; ``NnUNetModel`` reads a model folder;
``NnUNetPredictor`` runs it on a NIfTI image (see ``nnunet.py`` for the path of one image).
"""
from .modelfolder import NnUNetModel
from .network import build_network
from .nnunet import NnUNetPredictor, resolve_device

__all__ = ["NnUNetModel", "NnUNetPredictor", "build_network", "resolve_device"]
