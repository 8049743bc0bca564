"""Layers that run only in training (auxiliary heads) are never left inconsistent with the pruned model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cuttree


class WithAux(nn.Module):
    """An auxiliary classifier on the first block's output, used only in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)
        self.aux = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.a(x))
        out = self.head(F.adaptive_avg_pool2d(F.relu(self.b(h)), 1).flatten(1))
        if self.training:
            return out, self.aux(F.adaptive_avg_pool2d(h, 1).flatten(1))
        return out


def test_the_group_feeding_a_training_only_head_is_kept_whole() -> None:
    torch.manual_seed(0)
    m = WithAux().eval()
    x = (torch.randn(1, 3, 8, 8),)
    with pytest.warns(
        UserWarning, match=r"kept 1 group\(s\) whole because layers that run only in training \(aux"
    ) as w:
        r = cuttree.prune(m, x, cuttree.Config(ratio=0.5, latency_runs=0))
    assert [m.filename for m in w] == [__file__]  # the warning names the user's line, not cuttree's
    kept = {g.name: len(g.keep) for g in r.plan}
    assert kept == {"a": 16, "b": 16}  # "a" feeds the auxiliary head: whole; "b" halved
    main, aux = r.model.train()(torch.randn(2, 3, 8, 8))
    assert main.shape == aux.shape == (2, 10)
    # the oracle: in eval mode the pruned model equals the original with b's removed channels zeroed
    ref = WithAux().eval()
    ref.load_state_dict(m.state_dict())
    gone = sorted(set(range(32)) - set(r.plan.groups[1].keep))
    with torch.no_grad():
        ref.b.weight[gone] = 0
        ref.b.bias[gone] = 0
        assert torch.allclose(ref(*x), r.model.eval()(*x), atol=1e-6)


def test_torchvision_googlenet_trains_after_pruning() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False).eval()
    x = (torch.randn(1, 3, 96, 96),)
    with pytest.warns(UserWarning, match="layers that run only in training"):
        r = cuttree.prune(m, x, cuttree.Config(ratio=0.3, latency_runs=0))
    out = r.model.train()(torch.randn(2, 3, 96, 96))
    assert [tuple(t.shape) for t in out] == [(2, 1000)] * 3 and r.after.params < r.before.params
    with torch.no_grad():
        assert r.model.eval()(*x).shape == (1, 1000)
