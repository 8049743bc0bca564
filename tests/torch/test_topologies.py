"""Topology zoo: every model in tests/topologies.py prunes correctly (contract + oracle)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import cuttree
from cuttree.frontends.torch.measure import count_macs
from cuttree.frontends.torch.rules import rule_for_module
from topologies import TOPOLOGIES

# Norms over the channel dim itself (GroupNorm with one group, the LayerNorm on the attention
# model's residual stream) change when channels go, so zero-masking the original is not an
# oracle for those models (tests/torch/test_attention.py checks heads alone against one).
NO_ORACLE = {"encoder_decoder", "attention"}


def outputs(model: nn.Module, x: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t for t in tree_flatten(model.eval()(*x))[0] if isinstance(t, torch.Tensor)]


def masked_original(model: nn.Module, plan: cuttree.PruningPlan) -> nn.Module:
    """The unpruned model with every removed channel's *input* slices in its consumers zeroed."""
    m = copy.deepcopy(model)
    modules = dict(m.named_modules())
    state = dict(m.named_parameters())
    for g in plan:
        gone = torch.zeros(g.size, dtype=torch.bool)
        gone[torch.as_tensor(g.removed, dtype=torch.long)] = True
        for mem in g.members:
            mod_name, _, attr = mem.tensor.rpartition(".")
            if rule_for_module(modules[mod_name]).out_dims.get(attr) == mem.dim or mem.tensor not in state:
                continue
            pos = torch.as_tensor(mem.positions)[gone[torch.as_tensor(mem.channels)]]
            with torch.no_grad():
                state[mem.tensor].index_fill_(mem.dim, pos, 0.0)
    return m


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_prune_nothing_is_bit_identical(name: str) -> None:
    model, x = TOPOLOGIES[name]()
    r = cuttree.prune(model, x, cuttree.Config(ratio=0.0, latency_runs=0))
    for a, b in zip(outputs(model, x), outputs(r.model, x), strict=True):
        assert torch.equal(a, b)
    assert r.after.params == r.before.params


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_prune_half(name: str) -> None:
    model, x = TOPOLOGIES[name]()
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    r = cuttree.prune(model, x, cuttree.Config(ratio=0.5, latency_runs=0))
    # the given model is untouched
    assert all(torch.equal(state0[k], v) for k, v in model.state_dict().items())
    before, after = outputs(model, x), outputs(r.model, x)
    assert [t.shape for t in before] == [t.shape for t in after]
    assert r.after.params < r.before.params
    assert r.after.macs < r.before.macs
    # the plan's MAC estimate is what the FLOP counter measures
    assert r.plan.macs_after == r.after.macs == count_macs(r.model, x)
    if name not in NO_ORACLE:
        oracle = outputs(masked_original(model, r.plan), x)
        for a, b in zip(oracle, after, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
