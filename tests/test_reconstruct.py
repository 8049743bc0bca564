"""Least-squares refit after surgery: exact where the removed channels are redundant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cuttree
from cuttree.reconstruct import reconstruct


def redundant() -> nn.Sequential:
    """Hidden units 0–2 are exactly half of units 3–5, so removing them loses nothing."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        m[0].weight[:3] = 0.5 * m[0].weight[3:]
        m[0].bias[:3] = 0.5 * m[0].bias[3:]
    return m


def test_refit_restores_outputs_when_removed_channels_are_redundant() -> None:
    m = redundant()
    x = (torch.randn(1, 4),)
    cfg = cuttree.Config(ratio=0.5, min_samples=8, latency_runs=0)
    r = cuttree.prune(m, x, cfg)
    assert r.plan.groups[0].keep == (3, 4, 5)
    data = [torch.randn(64, 4)]
    probe = torch.randn(32, 4)
    assert not torch.allclose(r.model(probe), m(probe), atol=1e-2)
    assert reconstruct(m, r.model, r.plan, data, cfg, ridge=1e-12) == ["2"]
    torch.testing.assert_close(r.model(probe), m(probe), atol=1e-4, rtol=1e-4)
    # the layer that lost only outputs is untouched
    torch.testing.assert_close(r.model[0].weight, m[0].weight[3:])


def test_prune_with_reconstruct_refits_and_leaves_the_original_alone() -> None:
    m = redundant()
    ref = [p.clone() for p in m.parameters()]
    cfg = cuttree.Config(ratio=0.5, min_samples=8, latency_runs=0, reconstruct=True)
    probe = torch.randn(32, 4)
    r = cuttree.prune(m, (torch.randn(1, 4),), cfg, calib_data=[torch.randn(64, 4)])
    torch.testing.assert_close(r.model(probe), m(probe), atol=1e-2, rtol=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(ref, m.parameters(), strict=True))


def test_reconstruct_without_data_or_with_too_little_is_an_error() -> None:
    cfg = cuttree.Config(ratio=0.5, min_samples=8, latency_runs=0, reconstruct=True)
    with pytest.raises(ValueError, match="reconstruct=true needs calibration data"):
        cuttree.prune(redundant(), (torch.randn(1, 4),), cfg)
    with pytest.raises(ValueError, match="has 4 samples; min_samples=8"):
        cuttree.prune(redundant(), (torch.randn(1, 4),), cfg, calib_data=[torch.randn(4, 4)])


def test_conv_refit_restores_outputs_when_removed_channels_are_redundant() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2, padding=1)).eval()
    with torch.no_grad():
        m[0].weight[:2] = 0.5 * m[0].weight[2:]
        m[0].bias[:2] = 0.5 * m[0].bias[2:]
    cfg = cuttree.Config(ratio=0.5, min_samples=8, latency_runs=0)
    r = cuttree.prune(m, (torch.randn(1, 2, 6, 6),), cfg)
    assert r.plan.groups[0].keep == (2, 3)
    probe = torch.randn(4, 2, 6, 6)
    assert reconstruct(m, r.model, r.plan, [torch.randn(16, 2, 6, 6)], cfg, ridge=1e-12) == ["2"]
    torch.testing.assert_close(r.model(probe), m(probe), atol=1e-4, rtol=1e-4)


def test_conv1d_refit_restores_outputs_when_removed_channels_are_redundant() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 3, 3, stride=2, padding=2, dilation=2))
    m.eval()
    with torch.no_grad():
        m[0].weight[:2] = 0.5 * m[0].weight[2:]
        m[0].bias[:2] = 0.5 * m[0].bias[2:]
    cfg = cuttree.Config(ratio=0.5, min_samples=8, latency_runs=0)
    r = cuttree.prune(m, (torch.randn(1, 2, 9),), cfg)
    probe = torch.randn(4, 2, 9)
    assert reconstruct(m, r.model, r.plan, [torch.randn(16, 2, 9)], cfg, ridge=1e-12) == ["2"]
    torch.testing.assert_close(r.model(probe), m(probe), atol=1e-4, rtol=1e-4)
