"""The models the latency benches time, by name (shared by onnx_speed.py and latency_target.py)."""

from __future__ import annotations

import torch
import torchvision

from cuttree.models import vgg16_bn_cifar


def build(name: str) -> tuple[torch.nn.Module, int]:
    """``name``'s model in eval mode (seeded, no weights) and its input size."""
    torch.manual_seed(0)
    if name == "vgg16_bn_cifar":
        return vgg16_bn_cifar().eval(), 32
    return torchvision.models.get_model(name, weights=None).eval(), 224
