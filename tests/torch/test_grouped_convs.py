"""Grouped convolutions: two units, whole groups (a group's input and output channels together)
and the same positions of the width inside every group; exact counts, the masked-original
oracle, and torchvision's ResNeXt/RegNet blocks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import cuttree


def tiny() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, groups=4),  # 4 groups: 4 inputs → 8 outputs each
        nn.ReLU(),
        nn.Conv2d(32, 8, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def test_whole_groups_go_with_their_inputs_exact_counts() -> None:
    torch.manual_seed(0)
    model, x = tiny(), torch.randn(2, 3, 8, 8)
    r = cuttree.prune(model, (x,), cuttree.Config(ratio=0.5, ignore=["4"], group_width=False, latency_runs=0))
    [g] = list(r.plan)
    assert (g.name, g.unit, g.size, len(g.keep)) == (
        "0",
        "groups",
        4,
        2,
    )  # named after the first producer of the coupled channels
    conv = r.model[2]
    assert (conv.groups, conv.in_channels, conv.out_channels, tuple(conv.weight.shape)) == (2, 8, 16, (16, 4, 3, 3))
    assert r.model[0].out_channels == 8 and r.model[4].in_channels == 16
    kept_in = torch.tensor([j * 4 + c for j in g.keep for c in range(4)])
    kept_out = torch.tensor([j * 8 + c for j in g.keep for c in range(8)])
    assert torch.equal(r.model[0].weight, model[0].weight[kept_in])
    assert torch.equal(conv.weight, model[2].weight[kept_out])
    masked = copy.deepcopy(model)
    with torch.no_grad():
        gone = torch.tensor([c for c in range(32) if c not in kept_out.tolist()])
        masked[4].weight[:, gone] = 0
        torch.testing.assert_close(r.model(x), masked(x), rtol=1e-5, atol=1e-6)


def test_groups_and_the_width_inside_them_go_together_exact_counts_and_oracle() -> None:
    torch.manual_seed(0)
    model, x = tiny(), torch.randn(2, 3, 8, 8)
    r = cuttree.prune(model, (x,), cuttree.Config(ratio=0.5, ignore=["4"], latency_runs=0))
    assert [(g.name, g.unit, g.size, len(g.keep)) for g in r.plan] == [
        ("0", "groups", 4, 2),
        ("0:width", "width", 4, 2),  # the conv's input width: the first conv's outputs, the weight's dim 1
        ("2:width", "width", 8, 4),  # its output width: the same rows of every group
    ]
    groups, w_in, w_out = (g.keep for g in r.plan)
    conv = r.model[2]
    assert (conv.groups, conv.in_channels, conv.out_channels, tuple(conv.weight.shape)) == (2, 4, 8, (8, 2, 3, 3))
    kept_in = torch.tensor([g * 4 + j for g in groups for j in w_in])
    kept_out = torch.tensor([g * 8 + j for g in groups for j in w_out])
    assert torch.equal(r.model[0].weight, model[0].weight[kept_in])
    assert torch.equal(conv.weight, model[2].weight[kept_out][:, list(w_in)])
    assert r.plan.macs_after == r.after.macs == 40_496  # the MAC estimate crosses the two units exactly
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked[0].weight[[c for c in range(16) if c not in kept_in.tolist()]] = 0
        masked[0].bias[[c for c in range(16) if c not in kept_in.tolist()]] = 0
        masked[4].weight[:, [c for c in range(32) if c not in kept_out.tolist()]] = 0
        torch.testing.assert_close(r.model(x), masked(x), rtol=1e-5, atol=1e-6)


def test_ratio_zero_keeps_every_group_and_width_bit_identical() -> None:
    torch.manual_seed(0)
    model, x = tiny(), torch.randn(2, 3, 8, 8)
    r = cuttree.prune(model, (x,), cuttree.Config(ratio=0.0, latency_runs=0))
    assert {"groups", "width"} <= {g.unit for g in r.plan} and r.plan.channels_after == r.plan.channels_before
    with torch.no_grad():
        assert torch.equal(r.model(x), model(x))


# parameters kept at ratio 0.3 (64×64 inputs, seed 0): whole groups and the width inside them,
# rounded to the target's block (8 by default; avx512's 16 are the figures an AVX-512 machine
# gave when round_to: auto read the host); Torch-Pruning 1.6.1 keeps 12,437,402 and 2,012,838
# (bench/grouped_convs.py, side by side)
KEPT = {
    ("resnext50_32x4d", "generic"): 10_319_562,
    ("regnet_y_400mf", "generic"): 1_843_463,
    ("resnext50_32x4d", "avx512"): 10_344_066,
    ("regnet_y_400mf", "avx512"): 1_888_599,
}


@pytest.mark.parametrize(("name", "target"), list(KEPT))
def test_torchvision_grouped_blocks_prune_their_groups_and_widths(name: str, target: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    r = cuttree.prune(model, (x,), cuttree.Config(ratio=0.3, target=target, latency_runs=0))
    grouped = [(n, m) for n, m in r.model.named_modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels]
    originals = dict(model.named_modules())
    assert grouped and all(m.groups < originals[n].groups for n, m in grouped)  # every grouped conv lost groups
    assert all(m.in_channels // m.groups < originals[n].in_channels // originals[n].groups for n, m in grouped)
    with torch.no_grad():
        assert r.model(x).shape == (1, 1000)
    assert r.after.params == KEPT[name, target] and r.plan.macs_after == r.after.macs
