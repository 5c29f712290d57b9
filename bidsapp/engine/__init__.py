"""Inference engines: nnU-Net v2 model folders (torch + MONAI + dynamic-network-architectures).

``build_network`` builds a plans' network without nnunetv2; the predictor lives in ``nnunet.py``.
"""
from .network import build_network

__all__ = ["build_network"]
