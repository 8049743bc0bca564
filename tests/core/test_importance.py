"""Contract tests over every criterion, and exact values for each on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_exact import X, chain
from torch import nn

import cuttree
from cuttree.core.importance import REGISTRY, scorer
from cuttree.frontends.torch.groups import build_graph
from cuttree.frontends.torch.util import to_numpy


def weights(m: nn.Module) -> dict[str, np.ndarray]:
    return {k: to_numpy(p) for k, p in m.named_parameters()}


def calib(n: int = 16, batch: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, 3, 4, 4, generator=g), torch.randint(0, 2, (batch,), generator=g))
        for _ in range(n // batch)
    ]


class Pooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = chain()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean((2, 3))


@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if c.structured))
def test_every_criterion_contract(name: str) -> None:
    m = Pooled()
    with torch.no_grad():
        m.net[3].weight.normal_()
    cfg = cuttree.Config(ratio=0.5, criterion=name, min_samples=4, latency_runs=0)
    r = cuttree.prune(m, X, cfg, calib_data=calib())
    g = r.plan.groups[0]
    assert g.size == 4 and len(g.keep) == 2
    again = cuttree.prune(m, X, cfg, calib_data=calib())
    assert again.plan.groups[0].keep == g.keep  # deterministic


def test_l2_exact() -> None:
    m = chain()
    g = build_graph(m, X).groups[0]
    s = scorer("l2")(g, weights(m), {}, 0)
    w = (np.arange(1, 5) / 3) ** 2 * 3  # three input weights each
    np.testing.assert_allclose(s, np.sqrt(w + 1.0))  # + γ² = 1


def test_bn_scale_exact() -> None:
    m = chain()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([0.5, -3.0, 1.0, 2.0]))
    r = cuttree.prune(m, X, cuttree.Config(ratio=0.5, criterion="bn_scale", latency_runs=0))
    assert r.plan.groups[0].keep == (1, 3) and r.plan.groups[0].criterion == "bn_scale"


def test_activation_exact() -> None:
    m = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 1, 1)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        m[0].bias.zero_()
    x = torch.zeros(4, 3, 2, 2)
    x[:, 0], x[:, 1], x[:, 2] = 1.0, -5.0, 2.0
    cfg = cuttree.Config(ratio=1 / 3, criterion="activation", min_samples=4, latency_runs=0)
    r = cuttree.prune(m, (x[:1],), cfg, calib_data=[x])
    assert r.plan.groups[0].keep == (1, 2)  # mean |a| = 1, 5, 2: channel 0 goes


def test_taylor_exact() -> None:
    m = Pooled()
    data = calib()
    g = build_graph(m, X).groups[0]
    # oracle: (Σ w·∂L/∂w over the channel's slices)² with summed gradients
    m.zero_grad()
    for x, y in data:
        torch.nn.functional.cross_entropy(m(x), y).backward()
    want = np.zeros(4)
    for mem in g.members:
        p = dict(m.named_parameters()).get(mem.tensor)
        if p is not None:
            prod = (p.detach() * p.grad).double().movedim(mem.dim, 0).reshape(p.shape[mem.dim], -1).sum(1).numpy()
            np.add.at(want, mem.channels, prod[mem.positions])
    cfg = cuttree.Config(ratio=0.5, criterion="taylor", min_samples=4, latency_runs=0)
    from cuttree.frontends.torch.calibrate import gradients

    grads = {k: to_numpy(v) for k, v in gradients(m, data, cfg).items()}
    got = scorer("taylor")(g, weights(m), grads, 0)
    np.testing.assert_allclose(got, want**2, rtol=1e-6)


def test_too_few_calibration_samples_is_an_error() -> None:
    cfg = cuttree.Config(ratio=0.5, criterion="activation", min_samples=32, latency_runs=0)
    with pytest.raises(ValueError, match="has 16 samples; min_samples=32"):
        cuttree.prune(Pooled(), X, cfg, calib_data=calib(16))
    with pytest.raises(ValueError, match="has 0 samples"):
        cuttree.prune(Pooled(), X, cfg, calib_data=[])
    with pytest.raises(ValueError, match="needs calibration data"):
        cuttree.prune(Pooled(), X, cfg)


def test_a_dataset_of_samples_calibrates_like_its_batches() -> None:
    data, m = calib(16, 16), Pooled()
    samples = torch.utils.data.TensorDataset(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))
    cfg = cuttree.Config(ratio=0.5, criterion="taylor", min_samples=4, latency_runs=0)
    from cuttree.frontends.torch.calibrate import gradients

    a, b = gradients(m, data, cfg), gradients(m, samples, cfg)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_taylor_on_per_token_logits_is_a_clear_error() -> None:
    """Classification takes one label per sample; a language model's per-token output is refused
    in one line instead of failing inside torch's cross-entropy."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5)).eval()
    x = torch.randn(4, 3, 6)
    calib = [(x, torch.randint(0, 5, (4, 3)))]
    with pytest.raises(ValueError, match=r"^classification loss needs logits \(N, classes\) and one label per sample"):
        cuttree.prune(net, (x,), cuttree.Config(ratio=0.5, criterion="taylor", min_samples=2, latency_runs=0), calib)
