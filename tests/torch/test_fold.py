"""Layers that compute their weight in forward (weight standardization, weight norm), and group
norms with several channels per group: folded and pruned exactly, or kept whole with a warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from test_topologies import masked_original, outputs
from torch import nn

import cuttree
from cuttree.files import cuttree_file as io
from cuttree.frontends.torch.fold import fold_computed_weights


class StdConv(nn.Conv2d):
    """Weight standardization as BiT and timm's StdConv2d write it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = nn.functional.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True)
        return nn.functional.conv2d(x, w.reshape_as(self.weight), self.bias, self.stride, self.padding)


def std_net() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        StdConv(8, 4, 1),  # a 1×1 kernel: the standardization reduces over its input channels alone
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    with torch.no_grad():
        net[1].weight.copy_(torch.arange(1, 9, dtype=torch.float32))  # channel c scores below c + 1
    return net.eval(), (torch.randn(2, 3, 6, 6),)


def test_a_weight_standardized_conv_is_not_pruned_through_unless_folded() -> None:
    """Removing an input channel of a standardized 1×1 conv re-standardizes its filters: not
    zeroing. The trace pins those channels (it pruned them before: 0.21 off the oracle)."""
    net, x = std_net()
    with pytest.warns(UserWarning) as caught:
        r = cuttree.prune(net, x, cuttree.Config(ratio=0.5, latency_runs=0))
    said = [str(w.message) for w in caught]
    assert said[0] == (
        "1 conv/linear layer(s) compute their weight in forward (3; weight standardization or weight norm, say): "
        "cuttree keeps the channels it cannot prune through whole; set fold_computed_weights: true to make them "
        "plain layers holding that weight (exact) and prune them"
    )
    assert not r.plan.groups and r.after.params == r.before.params


def test_folded_weight_standardization_prunes_exactly_and_round_trips(tmp_path: Path) -> None:
    net, x = std_net()
    folded, names = fold_computed_weights(net, x)
    assert names == ("3",) and type(folded[3]) is nn.Conv2d and type(net[3]) is StdConv  # the input untouched
    assert torch.equal(folded(*x), net(*x))  # the same weight, the same conv: bit for bit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for, so nothing to warn about
        r = cuttree.prune(net, x, cuttree.Config(ratio=0.5, latency_runs=0, fold_computed_weights=True))
    assert r.plan.folded == ("3",) and [(g.name, g.keep) for g in r.plan] == [("0", (4, 5, 6, 7))]
    torch.testing.assert_close(outputs(r.model, x), outputs(masked_original(folded, r.plan), x), rtol=0, atol=1e-6)
    # the plan names its folds: applied to the original it folds first, which needs the inputs
    again = cuttree.PruningPlan.from_dict(r.plan.to_dict())
    assert again.folded == ("3",)
    with pytest.raises(ValueError, match=r"^the plan was made with 1 layer\(s\) folded into plain ones \(3 …\)"):
        cuttree.apply_plan(std_net()[0], again)
    applied = cuttree.apply_plan(std_net()[0], again, x)
    assert torch.equal(applied(*x), r.model(*x))
    # a .cuttree file rebuilds the original architecture, folds it and loads the folded weights
    path = io.save(r, tmp_path / "small.cuttree", arch="cuttree.models:nothing")
    loaded = io.load(path, build=lambda: std_net()[0])
    assert type(loaded[3]) is nn.Conv2d and torch.equal(loaded(*x), r.model(*x))


def test_weight_norm_folds_too() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.utils.parametrizations.weight_norm(nn.Linear(8, 3))).eval()
    x = (torch.randn(4, 6),)
    r = cuttree.prune(net, x, cuttree.Config(ratio=0.5, latency_runs=0, fold_computed_weights=True))
    assert r.plan.folded == ("2",) and [len(g.keep) for g in r.plan] == [4]
    folded, _ = fold_computed_weights(net, x)
    torch.testing.assert_close(outputs(r.model, x), outputs(masked_original(folded, r.plan), x), rtol=0, atol=1e-6)


def test_an_in_place_activation_after_the_layer_does_not_stop_the_fold() -> None:
    """NFNets apply their activation in place on the conv's output: the check uses copies."""
    torch.manual_seed(0)
    net = nn.Sequential(StdConv(3, 8, 1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 1)).eval()
    x = (torch.randn(2, 3, 4, 4),)
    folded, names = fold_computed_weights(net, x)
    assert names == ("0",) and torch.equal(folded(*x), net(*x))


def test_a_layer_that_cannot_be_folded_exactly_stays_with_a_warning() -> None:
    class PaddedStd(StdConv):  # pads its input itself ("same" padding computed per call): not one plain conv
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))

    net = nn.Sequential(nn.Conv2d(3, 8, 1), PaddedStd(8, 4, 3)).eval()
    with pytest.warns(UserWarning, match=r"^kept 1 layer\(s\) that compute their weight as they are \(1\)"):
        folded, names = fold_computed_weights(net, (torch.randn(1, 3, 5, 5),))
    assert names == () and type(folded[1]) is PaddedStd


def test_group_norm_loses_whole_groups_exactly() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.Conv2d(16, 5, 1), nn.Flatten()
    ).eval()
    with torch.no_grad():
        net[0].weight.mul_(torch.tensor([1.0, 3.0, 0.5, 2.0]).repeat_interleave(4).view(16, 1, 1, 1))
    x = (torch.randn(2, 3, 4, 4),)
    r = cuttree.prune(net, x, cuttree.Config(ratio=0.5, latency_runs=0))
    [g] = r.plan.groups
    assert (g.unit, g.size, g.keep) == ("groups", 4, (1, 3))  # the groups of 4 channels scaled by 3 and 2
    assert (r.model[1].num_groups, r.model[1].num_channels, r.model[0].out_channels) == (2, 8, 8)
    torch.testing.assert_close(outputs(r.model, x), outputs(masked_original(net, r.plan), x), rtol=0, atol=1e-6)


def test_a_bit_resnet_prunes_once_folded() -> None:
    """timm's ResNetV2 in its BiT form (weight-standardized convs, group norms of 32 groups)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.models.resnetv2.ResNetV2(
        layers=[1, 1],
        channels=(256, 512),
        num_classes=5,
        conv_layer=timm.layers.StdConv2d,
        norm_layer=timm.layers.GroupNormAct,
        stem_type="fixed",
    ).eval()
    x = (torch.randn(2, 3, 32, 32),)
    with pytest.warns(UserWarning, match=r"^9 conv/linear layer\(s\) compute their weight in forward"):
        plain = cuttree.prune(net, x, cuttree.Config(ratio=0.3, latency_runs=0))
    # only the last stream, whose consumers (the final norm, the classifier) are plain: a standardized
    # conv may lose output channels (filters are standardized one by one), not input channels
    assert [g.name for g in plain.plan] == ["stages.1.blocks.0.downsample.conv"]
    r = cuttree.prune(net, x, cuttree.Config(ratio=0.3, latency_runs=0, fold_computed_weights=True))
    assert len(r.plan.folded) == sum(isinstance(m, timm.layers.StdConv2d) for m in net.modules()) == 9
    assert {g.unit for g in r.plan} == {"groups"} and r.after.macs < 0.6 * r.before.macs
    folded, _ = fold_computed_weights(net, x)
    torch.testing.assert_close(outputs(r.model, x), outputs(masked_original(folded, r.plan), x), rtol=0, atol=1e-5)


def test_sparsity_keeps_layers_that_compute_their_weight_dense() -> None:
    """Zeros in a standardized conv's parameter are not zeros in the weight it uses."""
    torch.manual_seed(0)
    net = nn.Sequential(StdConv(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = (torch.randn(2, 3, 4, 4),)
    with pytest.warns(UserWarning, match=r"^kept 1 layer\(s\) dense that compute their weight in forward \(0;"):
        r = cuttree.sparsify(net, cuttree.Config(method="unstructured", ratio=0.5))
    assert set(r.masks) == {"2"} and int((r.model[0].weight == 0).sum()) == 0
    folded, _ = fold_computed_weights(net, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = cuttree.sparsify(folded, cuttree.Config(method="unstructured", ratio=0.5))
        again = cuttree.sparsify(r.model, cuttree.Config(method="unstructured", ratio=0.5), sparsity_now=0.75)
    assert set(r.masks) == {"0", "2"} and again.sparsity == 0.75  # cuttree's own masks are not a computed weight


def test_a_conv_that_only_pads_its_input_is_not_a_computed_weight() -> None:
    """timm's Conv2dSame pads at every call and uses its weight as it is: no warning, and
    unstructured sparsity masks it."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = nn.Sequential(timm.layers.Conv2dSame(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = cuttree.prune(net, (torch.randn(1, 3, 9, 9),), cuttree.Config(ratio=0.5, latency_runs=0))
        s = cuttree.sparsify(net, cuttree.Config(method="unstructured", ratio=0.5))
    assert not r.plan.folded and r.model[0].out_channels == 4 and set(s.masks) == {"0"}


def test_a_standardized_conv_with_same_padding_folds_into_timms_conv2d_same() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = nn.Sequential(timm.layers.StdConv2dSame(3, 8, 4, stride=2, padding="same"), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = (torch.randn(2, 3, 9, 9),)  # odd size, stride 2, even kernel: the padding is asymmetric
    folded, names = fold_computed_weights(net.eval(), x)
    assert names == ("0",) and type(folded[0]) is timm.layers.Conv2dSame and torch.equal(folded(*x), net(*x))
    other = (torch.randn(1, 3, 12, 12),)  # the padding is still worked out per call
    torch.testing.assert_close(folded(*other), net(*other), rtol=1e-5, atol=1e-6)
