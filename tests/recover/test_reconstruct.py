"""Least-squares refit after surgery: exact where the removed channels are redundant."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import cuttree
from cuttree.recover.reconstruct import reconstruct


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


class Tokens(nn.Module):
    """A per-token model called like a text encoder: ``model(input_ids, attention_mask)``.

    Hidden units 0–2 are a quarter of units 3–5 on every real token (ids 1–9, whose embeddings have
    no fourth component) but not on the padding token 0, whose embedding is (0, 0, 0, 100)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4)
        self.up, self.down = nn.Linear(4, 6), nn.Linear(6, 3)
        with torch.no_grad():
            self.emb.weight[:, 3] = 0.0
            self.emb.weight[0] = torch.tensor([0.0, 0.0, 0.0, 100.0])
            self.up.weight[3:, 3] = 0.0
            self.up.weight[:3] = 0.25 * self.up.weight[3:]
            self.up.weight[:3, 3] = 0.01  # seen by the padding token only
            self.up.bias[:3] = 0.25 * self.up.bias[3:]
            self.down.weight[:, :3] *= 0.1  # the smallest channels by l1 as well

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(self.emb(input_ids)))) * attention_mask[..., None]


def _sentences(n: int, length: int, pad: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 10, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    ids[:, length - pad :], mask[:, length - pad :] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def test_keyword_input_batches_of_different_lengths_refit_on_real_tokens_only() -> None:
    m = Tokens().eval()
    one = (torch.randint(1, 10, (1, 5)), torch.ones(1, 5, dtype=torch.long))
    cfg = cuttree.Config(ratio=0.5, min_samples=8, latency_runs=0, ignore=["emb"])
    r = cuttree.prune(m, one, cfg)
    assert [(g.name, g.keep) for g in r.plan.groups if len(g.keep) < g.size] == [("up", (3, 4, 5))]
    data = [_sentences(16, 5, 2, 0), _sentences(16, 7, 3, 1)]  # no common length: never concatenated
    probe = _sentences(32, 6, 2, 2)
    assert (r.model(**probe) - m(**probe)).abs().max() > 1e-3
    unmasked = copy.deepcopy(r.model)
    assert reconstruct(m, r.model, r.plan, data, cfg, ridge=1e-12) == ["down"]
    # exact on real tokens: the padding rows, which no refit could match as well, were left out
    torch.testing.assert_close(r.model(**probe), m(**probe), atol=1e-4, rtol=1e-4)
    # the same fit with the padding counted as tokens is not
    everything = [{**b, "attention_mask": torch.ones_like(b["attention_mask"])} for b in data]
    reconstruct(m, unmasked, r.plan, everything, cfg, ridge=1e-12)
    assert (unmasked(**probe) - m(**probe)).abs().max() > 1e-3
