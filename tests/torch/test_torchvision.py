"""A sample of real torchvision architectures (the full 80-model zoo is bench/zoo.py)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import cuttree

SAMPLE = [
    "resnet18",
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",
    "densenet121",
    "efficientnet_b0",
    "swin_t",
    "vit_b_16",
]


@pytest.mark.parametrize("name", SAMPLE)
def test_torchvision_prunes(name: str) -> None:
    model = torchvision.models.get_model(name, weights=None).eval()
    x = (torch.randn(1, 3, 224, 224),)
    r = cuttree.prune(model, x, cuttree.Config(ratio=0.3, latency_runs=0))
    with torch.no_grad():
        assert r.model.eval()(*x).shape == (1, 1000)
    assert r.after.params < r.before.params
    assert r.plan.macs_after == r.after.macs


def test_pretrained_cifar_resnet(data_dir) -> None:  # type: ignore[no-untyped-def]
    from cuttree.models import resnet20

    m = resnet20()
    cuttree.load_weights(m, data_dir / "weights" / "cifar10_resnet20.safetensors")
    x = (torch.randn(4, 3, 32, 32),)
    same = cuttree.prune(m, x, cuttree.Config(ratio=0.0, latency_runs=0))
    with torch.no_grad():
        assert torch.equal(same.model.eval()(*x), m.eval()(*x))
    r = cuttree.prune(m, x, cuttree.Config(macs_target=0.5, latency_runs=0))
    assert r.after.macs <= r.before.macs // 2
