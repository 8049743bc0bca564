"""Architectures cuttree ships (trusted by ``cuttree.load``): the CIFAR-shaped models of its demos
and benchmarks, written to match the pretrained weights in ``../shared/data``.

>>> from cuttree.models import vgg16_bn_cifar
>>> sum(p.numel() for p in vgg16_bn_cifar().parameters())
14728266
"""

from cuttree.models.cifar import BasicBlock, CifarResNet, resnet20, resnet32, resnet44, resnet56, vgg16_bn_cifar
from cuttree.models.enet import ENet, enet


def __getattr__(name: str) -> object:  # the text models need transformers: imported on first use
    if name == "minilm":
        from cuttree.models.text import minilm

        return minilm
    if name == "causal_lm":
        from cuttree.models.language import causal_lm

        return causal_lm
    raise AttributeError(f"module 'cuttree.models' has no attribute '{name}'")


__all__ = [
    "BasicBlock",
    "CifarResNet",
    "ENet",
    "causal_lm",
    "enet",
    "minilm",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "vgg16_bn_cifar",
]
