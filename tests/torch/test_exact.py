"""Tiny hand-built models with exact expected groups, scores and kept channels."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cuttree
from cuttree.core.importance import scorer
from cuttree.frontends.torch.groups import build_graph
from cuttree.frontends.torch.util import to_numpy


def chain() -> nn.Sequential:
    """conv(3→4) → BN → ReLU → conv(4→2); channel c of the first conv has |w| = c + 1."""
    m = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.arange(1, 5, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 1, 1) / 3)
        m[3].weight.zero_()
    return m.eval()


X = (torch.randn(1, 3, 4, 4),)


def test_chain_group_members_exact() -> None:
    g = build_graph(chain(), X)
    assert [gr.name for gr in g.groups] == ["0"]
    grp = g.groups[0]
    assert grp.size == 4
    assert {(m.tensor, m.dim) for m in grp.members} == {
        ("0.weight", 0),
        ("1.weight", 0),
        ("1.bias", 0),
        ("1.running_mean", 0),
        ("1.running_var", 0),
        ("3.weight", 1),
    }
    assert g.protected == {"3": "output"}


def test_l1_scores_and_kept_channels_exact() -> None:
    m = chain()
    g = build_graph(m, X)
    scores = scorer("l1")(g.groups[0], {k: to_numpy(p) for k, p in m.named_parameters()}, {}, 0)
    # conv weight |w| sums (c+1) plus BN γ = 1 and β = 0; the zeroed consumer adds nothing
    np.testing.assert_allclose(scores, [1 + 1, 2 + 1, 3 + 1, 4 + 1])
    r = cuttree.prune(m, X, cuttree.Config(ratio=0.5, latency_runs=0))
    assert r.plan.groups[0].keep == (2, 3)
    assert r.model[0].out_channels == 2 and r.model[1].num_features == 2 and r.model[3].in_channels == 2
    torch.testing.assert_close(r.model[0].weight[:, 0, 0, 0], torch.tensor([1.0, 4 / 3]))


def test_threshold_exact() -> None:
    # scores 2, 3, 4, 5: below 0.7 × 5 = 3.5 are channels 0 and 1
    r = cuttree.prune(chain(), X, cuttree.Config(threshold=0.7, latency_runs=0))
    assert r.plan.groups[0].keep == (2, 3)
    # beside a ratio, a channel goes if either selects it: the threshold's two, not the ratio's one
    r = cuttree.prune(chain(), X, cuttree.Config(threshold=0.7, ratio=0.25, latency_runs=0))
    assert r.plan.groups[0].keep == (2, 3)
    # and the ratio's three where it asks for more
    r = cuttree.prune(chain(), X, cuttree.Config(threshold=0.7, ratio=0.75, latency_runs=0))
    assert r.plan.groups[0].keep == (3,)


def test_min_channels_and_round_to() -> None:
    r = cuttree.prune(chain(), X, cuttree.Config(ratio=0.75, min_channels=2, latency_runs=0))
    assert r.plan.groups[0].keep == (2, 3)
    r = cuttree.prune(chain(), X, cuttree.Config(ratio=0.75, round_to=3, latency_runs=0))
    assert r.plan.groups[0].keep == (1, 2, 3)


@pytest.mark.parametrize(("target", "block"), [("generic", 8), ("avx2", 8), ("cuda", 8), ("avx512", 16)])
def test_round_to_auto_rounds_groups_of_64_channels_or_more_to_the_targets_block(target: str, block: int) -> None:
    """conv(3→64) → conv(64→32) → conv(32→10): at ratio 0.3 the 64-channel group keeps
    64 − ⌊19.2⌋ = 45 → 48 (a multiple of 8 and of 16), the 32-channel group keeps 32 − ⌊9.6⌋ =
    23 (too small to round); at ratio 0.2 the block decides: 52 → 56 with 8, → 64 with 16. The
    target is named, so the plan is the same whatever CPU runs this test."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 32, 3), nn.ReLU(), nn.Conv2d(32, 10, 1)).eval()
    x = (torch.randn(1, 3, 8, 8),)
    auto = cuttree.prune(m, x, cuttree.Config(ratio=0.3, target=target, latency_runs=0))
    assert [len(g.keep) for g in auto.plan.groups] == [48, 23]
    assert auto.plan.config["target"] == target  # recorded in the plan
    free = cuttree.prune(m, x, cuttree.Config(ratio=0.3, round_to=1, latency_runs=0))
    assert [len(g.keep) for g in free.plan.groups] == [45, 23]
    assert set(free.plan.groups[0].keep) <= set(auto.plan.groups[0].keep)  # the same ranking, 3 more kept
    light = cuttree.prune(m, x, cuttree.Config(ratio=0.2, target=target, latency_runs=0))
    assert [len(g.keep) for g in light.plan.groups] == [{8: 56, 16: 64}[block], 26]


def test_default_plan_does_not_read_the_host_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default target is generic: a host with AVX-512 and one without plan alike; only
    ``target: this-machine`` follows the host."""
    from cuttree.core import planner

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 10, 1)).eval()
    x = (torch.randn(1, 3, 8, 8),)
    plans = {}
    for host in (8, 16):
        monkeypatch.setattr(planner, "host_channel_block", lambda host=host: host)
        default, _ = cuttree.make_plan(m, x, cuttree.Config(ratio=0.2))
        here, _ = cuttree.make_plan(m, x, cuttree.Config(ratio=0.2, target="this-machine"))
        plans[host] = (len(default.groups[0].keep), len(here.groups[0].keep))
    assert plans == {8: (56, 56), 16: (56, 64)}


def test_round_to_and_target_refuse_bad_values() -> None:
    for bad in (0, 2.5, "eight", True):
        with pytest.raises(ValueError, match=r"config key 'round_to' = .*: must be a whole number ≥ 1 .* or 'auto'"):
            cuttree.Config(ratio=0.3, round_to=bad)
    with pytest.raises(ValueError, match=r"config key 'target' = 'avx-512'"):
        cuttree.Config(ratio=0.3, target="avx-512")


def test_budget_that_empties_a_layer_is_an_error() -> None:
    with pytest.raises(cuttree.PlanError, match="remove all 4 channels of '0'"):
        cuttree.prune(chain(), X, cuttree.Config(ratio=1.0, latency_runs=0))


class Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(5, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


def test_concat_offsets_exact() -> None:
    g = build_graph(Cat(), X)
    a, b = g.group("a"), g.group("b")
    assert a.member("c.weight", 1).positions.tolist() == [0, 1]
    assert b.member("c.weight", 1).positions.tolist() == [2, 3, 4]


class FlattenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 2, 1), nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


def test_flatten_blocks_exact() -> None:
    g = build_graph(FlattenNet(), X)
    m = g.group("conv").member("fc.weight", 1)
    assert m.positions.tolist() == list(range(32))
    assert m.channels.tolist() == [0] * 16 + [1] * 16
    r = cuttree.prune(FlattenNet(), X, cuttree.Config(ratio=0.5, latency_runs=0))
    assert r.model.fc.in_features == 16


def test_depthwise_follows_its_input() -> None:
    m = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.Conv2d(6, 2, 1))
    r = cuttree.prune(m, X, cuttree.Config(ratio=0.5, latency_runs=0))
    dw = r.model[1]
    assert (dw.in_channels, dw.out_channels, dw.groups) == (3, 3, 3)
    assert len(r.plan.groups) == 1  # first conv, depthwise conv and last conv's input in one group


def test_ignore_keeps_layer_outputs() -> None:
    r = cuttree.prune(chain(), X, cuttree.Config(ratio=0.5, ignore=("0",), latency_runs=0))
    assert r.plan.groups == () and r.model[0].out_channels == 4


def test_override_of_output_layer_is_an_error() -> None:
    cfg = cuttree.Config(ratio=0.5, layers={"3": {"ratio": 0.5}}, latency_runs=0)
    with pytest.raises(cuttree.PlanError, match="produces a model output"):
        cuttree.prune(chain(), X, cfg)


def test_unknown_layer_names_suggest_a_match() -> None:
    with pytest.raises(ValueError, match=r"unknown layer 'clasifier' — did you mean 'classifier'"):
        m = nn.Sequential()
        m.add_module("features", nn.Conv2d(3, 4, 1))
        m.add_module("classifier", nn.Conv2d(4, 2, 1))
        cuttree.prune(m, X, cuttree.Config(ratio=0.5, ignore=("clasifier",), latency_runs=0))


def test_global_scope_removes_ratio_of_all_channels() -> None:
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    r = cuttree.prune(m, X, cuttree.Config(ratio=0.5, scope="global", latency_runs=0))
    assert r.plan.channels_before == 16 and r.plan.channels_after == 8


@pytest.mark.parametrize("scope", ["local", "global"])
def test_macs_target_is_met_and_estimate_is_exact(scope: str) -> None:
    from cuttree.models import resnet20

    m = resnet20()
    x = (torch.randn(1, 3, 32, 32),)
    r = cuttree.prune(m, x, cuttree.Config(macs_target=0.5, scope=scope, latency_runs=0))
    assert r.after.macs <= 0.5 * r.before.macs
    assert r.after.macs >= 0.45 * r.before.macs
    assert r.plan.macs_after == r.after.macs


def test_macs_target_widens_groups_between_rounded_steps() -> None:
    """Three 64-channel groups of 1×1 convs at 4×4, rounded to 8: MACs = 16·(3a + ab + bc + 10c).
    The uniform ratio gives 48/48/48 (5,232 of 9,024 per pixel, 58.0%); 56 everywhere is 77.6%.
    Of the single widenings to 56 only the first group's fits 63% (5,640 ≤ 5,685.1; the last's
    5,696 does not): the plan keeps 56/48/48 and nothing more can widen."""
    m = nn.Sequential(
        nn.Conv2d(3, 64, 1, bias=False), nn.ReLU(), nn.Conv2d(64, 64, 1, bias=False), nn.ReLU(),
        nn.Conv2d(64, 64, 1, bias=False), nn.ReLU(), nn.Conv2d(64, 10, 1, bias=False),
    )  # fmt: skip
    r = cuttree.prune(m, X, cuttree.Config(macs_target=0.63, round_to=8, latency_runs=0))
    assert [c.out_channels for c in r.model if isinstance(c, nn.Conv2d)] == [56, 48, 48, 10]
    assert r.before.macs == 16 * 9024 and r.after.macs == 16 * 5640 == r.plan.macs_after


def test_unreachable_macs_target_is_an_error() -> None:
    with pytest.raises(cuttree.PlanError, match="unreachable"):
        cuttree.prune(chain(), X, cuttree.Config(macs_target=0.01, latency_runs=0))


class StdConv(nn.Conv2d):
    """A weight-standardized conv (BiT, timm's StdConv2d): each filter normalized over its inputs,
    so removing an input channel is not zeroing it, and the trace pins the channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = nn.functional.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True)
        return nn.functional.conv2d(x, w.reshape_as(self.weight), self.bias, padding=1)


def test_a_model_with_nothing_prunable_says_so_and_comes_back_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(StdConv(3, 8, 3), nn.ReLU(), StdConv(8, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.randn(1, 3, 4, 4)
    with pytest.warns(UserWarning, match=r"^nothing in this model can be pruned, so it is returned unchanged") as w:
        r = cuttree.prune(model, (x,), cuttree.Config(ratio=0.5, latency_runs=0))
    [msg] = [str(m.message) for m in w if str(m.message).startswith("nothing")]
    assert "pinned (0: a fixed size in the model's code; 2: a model output)" in msg
    assert {m.filename for m in w} == {__file__}  # the warning names the user's line, not cuttree's
    assert r.after.params == r.before.params and torch.equal(r.model(x), model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing asked, nothing said
        cuttree.prune(model, (x,), cuttree.Config(ratio=0.0, latency_runs=0))


class Glu(nn.Module):
    """A fused gate/up projection split with ``chunk`` (SwiGLU as LLaMA-style MLPs and timm's
    GluMlp write it); with ``couple=False`` the halves go through separate layers instead."""

    def __init__(self, couple: bool = True) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.couple = nn.Linear(6, 2 * 8), nn.Linear(8, 3), nn.Linear(8, 3), couple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.fc1(x).chunk(2, dim=-1)
        if self.couple:
            return self.fc2(a * nn.functional.silu(b))
        return torch.cat([self.fc2(a), self.fc3(b)], dim=-1)


def test_equal_halves_of_a_chunk_lose_the_same_positions() -> None:
    """Channel i of the gate and channel i of the up half form one channel: position i and 8 + i
    of fc1 go together, and the pruned model computes what the dense one does with them zeroed."""
    from cuttree.frontends.torch.validate import zeroed

    torch.manual_seed(0)
    m, x = Glu().eval(), (torch.randn(4, 6),)
    [g] = build_graph(m, x).groups
    assert g.size == 8
    assert {
        (mem.tensor, mem.dim, tuple(mem.positions), tuple(mem.channels))
        for mem in g.members
        if mem.tensor == "fc1.weight"
    } == {("fc1.weight", 0, tuple(range(16)), tuple(range(8)) * 2)}
    r = cuttree.prune(m, x, cuttree.Config(ratio=0.5, latency_runs=0))
    assert r.model.fc1.out_features == 8 and r.model.fc2.in_features == 4
    with torch.no_grad():
        torch.testing.assert_close(r.model(*x), zeroed(m, r.plan)(*x), rtol=0, atol=1e-6)


def test_halves_of_a_chunk_that_are_never_coupled_are_kept_whole() -> None:
    """Pruned apart, the halves could lose different channels and ``chunk`` would then split at
    the wrong place: the trace pins them when the walk ends."""
    m, x = Glu(couple=False).eval(), (torch.randn(4, 6),)
    assert [g.name for g in build_graph(m, x).groups] == []


def test_a_tiled_channel_dim_loses_every_copy_of_a_channel() -> None:
    """``repeat`` along channels: the consumer's input positions c and C + c are one channel."""
    from cuttree.frontends.torch.validate import zeroed

    class Tiled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)).repeat(1, 2, 1, 1))

    torch.manual_seed(0)
    m, x = Tiled().eval(), (torch.randn(2, 3, 4, 4),)
    [g] = build_graph(m, x).groups
    [b_in] = [mem for mem in g.members if mem.tensor == "b.weight"]
    assert g.size == 8 and (b_in.dim, tuple(b_in.positions), tuple(b_in.channels)) == (
        1,
        tuple(range(16)),
        tuple(range(8)) * 2,
    )
    r = cuttree.prune(m, x, cuttree.Config(ratio=0.5, latency_runs=0))
    assert (r.model.a.out_channels, r.model.b.in_channels) == (4, 8)
    with torch.no_grad():
        torch.testing.assert_close(r.model(*x), zeroed(m, r.plan)(*x), rtol=0, atol=1e-6)


def test_unfolded_patches_keep_their_channels() -> None:
    """``F.unfold`` (im2col) puts channel c at c·k² … c·k² + k² − 1: the linear layer reading the
    patches loses those k² inputs with the channel; ``Tensor.unfold`` over pixels keeps channels."""
    from cuttree.frontends.torch.validate import zeroed

    class Patches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8 * 4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.a(x))
            rows = y.unfold(2, 2, 2).sum(-1)  # (N, 8, 2, 4): windows over the rows
            return self.fc(nn.functional.unfold(rows, 2, stride=2).transpose(1, 2))

    torch.manual_seed(0)
    m, x = Patches().eval(), (torch.randn(2, 3, 4, 4),)
    graph = build_graph(m, x)
    [g] = graph.groups
    assert graph.unsupported == {}
    [fc_in] = [mem for mem in g.members if mem.tensor == "fc.weight"]
    assert g.size == 8 and tuple(fc_in.channels) == tuple(np.repeat(np.arange(8), 4))
    r = cuttree.prune(m, x, cuttree.Config(ratio=0.5, latency_runs=0))
    assert (r.model.a.out_channels, r.model.fc.in_features) == (4, 16)
    with torch.no_grad():
        torch.testing.assert_close(r.model(*x), zeroed(m, r.plan)(*x), rtol=0, atol=1e-6)


def test_params_target_with_global_scope_ranks_every_group_together() -> None:
    """``params_target`` under ``scope: global`` used to leave every group out of the global pool
    (only ``ratio`` and ``macs_target`` entered it), so the search found nothing to remove and
    called the target unreachable. Two hidden layers of 32; the target keeps at most half."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(2, 8)
    r = cuttree.prune(m, (x,), cuttree.Config(params_target=0.5, scope="global", latency_runs=0))
    dense = sum(p.numel() for p in m.parameters())
    after = sum(p.numel() for p in r.model.parameters())
    assert 0.4 < after / dense <= 0.5
