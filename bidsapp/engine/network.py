"""Build nnU-Net's networks from a plans dict, with dynamic-network-architectures only.

nnU-Net resolves the class and layer names in ``plans.json`` with ``pydoc.locate``, which imports
whatever module a plans file names. We never import anything a model folder names: every class
and layer type must be on the allow-lists below, otherwise :class:`ModelError`.
"""
from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from ..errors import ModelError

#: network classes we build; the keys are the short names used by both plan formats
NETWORKS: dict[str, type[nn.Module]] = {
    "PlainConvUNet": PlainConvUNet,
    "ResidualEncoderUNet": ResidualEncoderUNet,
}

#: layer types a plans file may name (``conv_op``, ``norm_op``, ``dropout_op``, ``nonlin``)
LAYERS: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        nn.Conv1d, nn.Conv2d, nn.Conv3d,
        nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
        nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm,
        nn.Dropout, nn.Dropout2d, nn.Dropout3d,
        nn.LeakyReLU, nn.ReLU, nn.PReLU, nn.GELU, nn.ELU,
    )
}

_IMPORT_KEYS = ("conv_op", "norm_op", "dropout_op", "nonlin")


def architecture(plans: dict, configuration: str) -> dict:
    """Return ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}`` for ``configuration``.

    Plans of nnU-Net >= 2.4 carry this dict; older plans carry ``UNet_class_name``,
    ``conv_kernel_sizes`` etc., which we convert exactly as nnunetv2's ``ConfigurationManager`` does.
    """
    try:
        config = plans["configurations"][configuration]
    except (KeyError, TypeError) as exc:
        raise ModelError(f"plans.json: no configuration {configuration!r}") from exc
    if "architecture" in config:
        return deepcopy(config["architecture"])
    return _architecture_from_old_plans(config)


def nnunet_default_layers(dim: int) -> dict:
    """The layer choices nnU-Net's default planners write (and assume for old-format plans)."""
    return {
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def _architecture_from_old_plans(config: dict) -> dict:
    try:
        name = config["UNet_class_name"]
        n_stages = len(config["n_conv_per_stage_encoder"])
        dim = len(config["patch_size"])
        blocks_key = "n_conv_per_stage" if name == "PlainConvUNet" else "n_blocks_per_stage"
        kwargs = {
            "n_stages": n_stages,
            "features_per_stage": [min(config["UNet_base_num_features"] * 2 ** i,
                                       config["unet_max_num_features"]) for i in range(n_stages)],
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": deepcopy(config["conv_kernel_sizes"]),
            "strides": deepcopy(config["pool_op_kernel_sizes"]),
            blocks_key: deepcopy(config["n_conv_per_stage_encoder"]),
            "n_conv_per_stage_decoder": deepcopy(config["n_conv_per_stage_decoder"]),
            **nnunet_default_layers(dim),
        }
    except (KeyError, TypeError) as exc:
        raise ModelError(f"plans.json: old-format configuration lacks {exc}") from exc
    return {"network_class_name": name, "arch_kwargs": kwargs, "_kw_requires_import": list(_IMPORT_KEYS)}


_TRUSTED_PREFIXES = ("dynamic_network_architectures.", "torch.nn.")


def _short(name: Any, table: dict[str, type], what: str) -> type:
    """The allow-listed class for a plans name: a bare name or one under dynamic_network_architectures
    or torch.nn; anything else (another module, even with a known class name) is refused."""
    text = str(name)
    short = text.rsplit(".", 1)[-1]
    if short not in table or ("." in text and not text.startswith(_TRUSTED_PREFIXES)):
        raise ModelError(f"plans.json: unsupported {what} {name!r} (supported: {', '.join(sorted(table))})")
    return table[short]


def resolve_architecture(plans: dict, configuration: str) -> tuple[type[nn.Module], dict]:
    """The network class and its keyword arguments (layer types resolved), deep supervision off."""
    arch = architecture(plans, configuration)
    cls = _short(arch.get("network_class_name"), NETWORKS, "network class")
    kwargs = dict(arch.get("arch_kwargs") or {})
    for key in arch.get("_kw_requires_import") or ():
        if kwargs.get(key) is not None:
            kwargs[key] = _short(kwargs[key], LAYERS, key)
    kwargs["deep_supervision"] = False
    return cls, kwargs


def build_network(plans: dict, configuration: str, num_input_channels: int, num_classes: int) -> nn.Module:
    """Instantiate the plans' network with deep supervision off, in eval mode, on the CPU."""
    cls, kwargs = resolve_architecture(plans, configuration)
    try:
        net = cls(input_channels=num_input_channels, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ModelError(f"plans.json: cannot build {cls.__name__} ({exc})") from exc
    return net.eval()


def random_state_dict(plans: dict, configuration: str, num_input_channels: int, num_classes: int,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights as nnU-Net initialises them (He init via the network's ``initialize``), seeded."""
    torch.manual_seed(seed)
    net = build_network(plans, configuration, num_input_channels, num_classes)
    if hasattr(net, "initialize"):
        net.apply(net.initialize)
    return net.state_dict()


def instance_norms_as_group_norms(net: nn.Module) -> nn.Module:
    """Replace each InstanceNorm (no running stats) by the GroupNorm with one group per channel.

    The two compute the same normalisation (mean and variance per sample and channel over space,
    same eps and affine parameters, same state-dict keys), but PyTorch's CPU GroupNorm kernel is
    fused and handles channels-last tensors natively, where InstanceNorm3d is markedly slower.
    """
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.modules.instancenorm._InstanceNorm) and not child.track_running_stats:
                n = child.num_features
                device = child.weight.device if child.affine else None  # "meta" stays meta
                group = nn.GroupNorm(n, n, eps=child.eps, affine=child.affine, device=device)
                if child.affine:
                    group.weight.data.copy_(child.weight.data)
                    group.bias.data.copy_(child.bias.data)
                setattr(module, name, group)
    return net
