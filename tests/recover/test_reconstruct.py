"""Least-squares refit after surgery: exact where the removed channels are redundant."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from tests.torch.test_llm_depth import llama_stack
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


def test_a_decoder_stack_is_refitted_layer_by_layer_on_the_pruned_stream() -> None:
    """Oracle, per decoder layer: the pruned model's ``down_proj`` inputs (hooked on the refitted
    model: layer 1's inputs come from the refitted layer 0) regressed by hand onto what the
    *original* decoder layer's ``down_proj`` gives on the pruned model's stream (the original layer
    run on the pruned layer's input); the refit equals that least-squares solution."""
    transformers = pytest.importorskip("transformers")
    model = llama_stack(transformers, layers=2)
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 100, (4, 16), generator=g) for _ in range(2)]
    cfg = cuttree.Config(ratio=0.5, criterion="wanda", head_ratio=0.0, ignore=["model.embed_tokens"], min_samples=8,
                         latency_runs=0)  # fmt: skip
    r = cuttree.prune(model, (data[0][:1],), cfg, calib_data=data)
    assert reconstruct(model, r.model, r.plan, data, cfg, ridge=1e-12) == [
        f"model.layers.{i}.mlp.down_proj" for i in range(2)
    ]
    seen: dict[int, list[Any]] = {0: [], 1: []}
    hooks = [
        layer.register_forward_pre_hook(lambda m, a, k, i=i: seen[i].append((a, k)), with_kwargs=True)
        for i, layer in enumerate(r.model.model.layers)
    ]
    with torch.no_grad():
        for x in data:
            r.model(x)
    for h in hooks:
        h.remove()
    for i in range(2):
        rows, want = [], []
        down, orig = r.model.model.layers[i].mlp.down_proj, model.model.layers[i].mlp.down_proj
        grab = [down.register_forward_hook(lambda m, a, o, rows=rows: rows.append(a[0])),
                orig.register_forward_hook(lambda m, a, o, want=want: want.append(o))]  # fmt: skip
        with torch.no_grad():
            for a, k in seen[i]:
                r.model.model.layers[i](*a, **k)
                model.model.layers[i](*a, **k)
        for h in grab:
            h.remove()
        x, y = torch.cat(rows).reshape(-1, 32).double(), torch.cat(want).reshape(-1, 32).double()
        solution = torch.linalg.lstsq(x, y).solution.T
        torch.testing.assert_close(down.weight.double(), solution, atol=2e-4, rtol=1e-3)


def test_a_depth_pruned_stack_refits_the_layers_it_keeps_under_their_new_names() -> None:
    """Layers 0 and 2 of 4 kept, say: the pruned model's layers 0 and 1 are refitted against the
    original's layers the plan kept (not the original's 0 and 1), and the refit lowers the error."""
    transformers = pytest.importorskip("transformers")
    model = llama_stack(transformers, layers=4)
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 100, (4, 16), generator=g) for _ in range(2)]
    cfg = cuttree.Config(ratio=0.5, criterion="wanda", head_ratio=0.0, units=["channels", "layers"],
                         ignore=["model.embed_tokens"], min_samples=8, latency_runs=0)  # fmt: skip
    r = cuttree.prune(model, (data[0][:1],), cfg, calib_data=data)
    (depth,) = [g for g in r.plan if g.unit == "layers"]
    assert len(depth.keep) == 2
    probe = torch.randint(0, 100, (4, 16), generator=g)
    with torch.no_grad():
        before = (r.model(probe).logits - model(probe).logits).pow(2).mean()
    done = reconstruct(model, r.model, r.plan, data, cfg)
    assert done == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    with torch.no_grad():
        assert (r.model(probe).logits - model(probe).logits).pow(2).mean() < before


def test_with_the_hidden_width_pruned_targets_come_from_the_pruned_stream_widened_with_zeros() -> None:
    """Hidden width and MLP pruned (heads kept): on the pruned stream widened back with zeros the
    original q/k/v/gate/up compute what the pruned ones do (the RMS norms are rescaled), so they
    are left as they are; ``down_proj`` is refitted (and the untied ``lm_head``, outside the stack,
    by the general path) and the error on a probe drops."""
    transformers = pytest.importorskip("transformers")
    model = llama_stack(transformers, layers=2)
    for layer in [*model.model.layers]:
        layer.input_layernorm.variance_epsilon = layer.post_attention_layernorm.variance_epsilon = 1e-12
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 100, (4, 16), generator=g) for _ in range(2)]
    cfg = cuttree.Config(ratio=0.25, criterion="wanda", head_ratio=0.0, min_samples=8, latency_runs=0)
    r = cuttree.prune(model, (data[0][:1],), cfg, calib_data=data)
    assert r.model.model.embed_tokens.embedding_dim == 24
    before = copy.deepcopy(r.model)
    probe = torch.randint(0, 100, (4, 16), generator=g)
    done = reconstruct(model, r.model, r.plan, data, cfg)
    assert done == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "lm_head"]
    for name in ("self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
        for i in range(2):
            a, b = (m.model.layers[i].get_submodule(name).weight for m in (r.model, before))
            assert torch.equal(a, b)
    with torch.no_grad():
        err = [(m(probe).logits - model(probe).logits).pow(2).mean() for m in (r.model, before)]
    assert err[0] < err[1]
