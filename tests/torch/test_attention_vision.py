"""torchvision's Swin, Swin V2 and MaxViT attention lose whole heads: twins that compute exactly
what the stock modules do, exact head counts, and a masked-original oracle."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torchvision.models import maxvit, swin_transformer

import cuttree
from cuttree.frontends.torch.plugins.torchvision_swin import (
    PrunableRelativePositionalMultiHeadAttention,
    PrunableShiftedWindowAttention,
    PrunableShiftedWindowAttentionV2,
    swapped,
)


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("size", [(4, 4), (5, 7), (2, 2)])  # shifted, padded, one window (no shift)
def test_swin_twin_computes_what_torchvision_does(v2: bool, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    cls = swin_transformer.ShiftedWindowAttentionV2 if v2 else swin_transformer.ShiftedWindowAttention
    m = cls(16, [2, 2], [1, 1], num_heads=4).eval()
    x = torch.randn(2, *size, 16)
    want = m(x)
    twin = swapped(copy.deepcopy(m))
    assert type(twin) is (PrunableShiftedWindowAttentionV2 if v2 else PrunableShiftedWindowAttention)
    assert twin.head_dim == 4
    assert torch.equal(twin(x), want)


def test_maxvit_twin_computes_what_torchvision_does() -> None:
    torch.manual_seed(0)
    m = maxvit.RelativePositionalMultiHeadAttention(16, 4, 16).eval()
    x = torch.randn(2, 3, 16, 16)
    want = m(x)
    twin = swapped(copy.deepcopy(m))
    assert type(twin) is PrunableRelativePositionalMultiHeadAttention
    assert torch.equal(twin(x), want)


def tiny_swin(v2: bool) -> nn.Module:
    extra = {"block": swin_transformer.SwinTransformerBlockV2, "downsample_layer": swin_transformer.PatchMergingV2}
    return swin_transformer.SwinTransformer(
        [2, 2], 16, [2, 2], [2, 4], [2, 2], stochastic_depth_prob=0.0, num_classes=5, **(extra if v2 else {})
    )


def tiny_maxvit() -> nn.Module:
    return maxvit.MaxVit((16, 16), 8, 2, [16, 32], [1, 1], 4, 0.0, num_classes=5)


def v_rows(m: nn.Module) -> tuple[nn.Linear, int, int]:
    """The attention module's qkv projection, its head count and head width (v is the last third)."""
    if isinstance(m, swin_transformer.ShiftedWindowAttention):
        return m.qkv, m.num_heads, m.qkv.out_features // 3 // m.num_heads
    assert isinstance(m, maxvit.RelativePositionalMultiHeadAttention)
    return m.to_qkv, m.n_heads, m.head_dim


@pytest.mark.parametrize(
    "build", [lambda: tiny_swin(False), lambda: tiny_swin(True), tiny_maxvit], ids=["swin", "swin_v2", "maxvit"]
)
def test_heads_removed_equal_the_original_with_their_values_zeroed(build) -> None:  # type: ignore[no-untyped-def]
    """Only heads go (``ratio: 0``, ``head_ratio: 0.5``): the pruned model equals the original whose
    removed heads have v = 0 (their output is then zero whatever q and k are)."""
    torch.manual_seed(0)
    model = build().eval()
    x = (torch.randn(2, 3, 16, 16),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing kept whole for a reason
        r = cuttree.prune(model, x, cuttree.Config(ratio=0.0, head_ratio=0.5, latency_runs=0))
    heads = [g for g in r.plan.groups if g.unit == "heads"]
    stock = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (swin_transformer.ShiftedWindowAttention, maxvit.RelativePositionalMultiHeadAttention))
    ]
    assert len(heads) == len(stock) and all(len(g.keep) == g.size // 2 for g in heads)
    masked = copy.deepcopy(model)
    pruned = dict(r.model.named_modules())
    for name in stock:
        m = dict(masked.named_modules())[name]
        qkv, h, d = v_rows(m)
        kept_heads = v_rows(pruned[name])[1]
        assert kept_heads == h // 2 and type(pruned[name]).__name__.startswith("Prunable")
        g = next(g for g in heads if g.name.startswith(name + "."))
        with torch.no_grad():
            for head in sorted(set(range(h)) - set(g.keep)):
                rows = slice(2 * h * d + head * d, 2 * h * d + (head + 1) * d)
                qkv.weight[rows] = 0.0
                if qkv.bias is not None:
                    qkv.bias[rows] = 0.0
    with torch.no_grad():
        got, want = r.model.eval()(*x), masked.eval()(*x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "build", [lambda: tiny_swin(False), lambda: tiny_swin(True), tiny_maxvit], ids=["swin", "swin_v2", "maxvit"]
)
def test_every_width_prunes_and_trains(build) -> None:  # type: ignore[no-untyped-def]
    """Heads, embedding and MLP widths together: exact head counts, runs in eval and train mode,
    prune-nothing is bit-identical and keeps the stock classes."""
    torch.manual_seed(0)
    model = build().eval()
    x = (torch.randn(2, 3, 16, 16),)
    same = cuttree.prune(model, x, cuttree.Config(ratio=0.0, latency_runs=0))
    with torch.no_grad():
        assert torch.equal(same.model.eval()(*x), model(*x))
    assert not any(type(m).__name__.startswith("Prunable") for m in same.model.modules())
    r = cuttree.prune(model, x, cuttree.Config(ratio=0.5, latency_runs=0))
    counts = sorted(v_rows(m)[1] for m in r.model.modules() if type(m).__name__.startswith("Prunable"))
    assert counts == ([1, 1, 2, 2] if isinstance(model, swin_transformer.SwinTransformer) else [2, 2, 4, 4])
    assert r.after.params < r.before.params and r.plan.macs_after == r.after.macs
    r.model.train()
    assert r.model(*x).shape == (2, 5)


def test_a_pruned_swin_reloads_bit_exact_as_its_twin(tmp_path) -> None:  # type: ignore[no-untyped-def]
    kwargs = {"patch_size": [2, 2], "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": [2, 2]}
    torch.manual_seed(0)
    model = swin_transformer.SwinTransformer(**kwargs, stochastic_depth_prob=0.0, num_classes=5).eval()  # type: ignore[arg-type]
    x = (torch.randn(2, 3, 16, 16),)
    r = cuttree.prune(model, x, cuttree.Config(ratio=0.5, latency_runs=0))
    arch = "torchvision.models.swin_transformer:SwinTransformer"
    path = cuttree.save(
        r, tmp_path / "s.cuttree", arch=arch, arch_kwargs={**kwargs, "stochastic_depth_prob": 0.0, "num_classes": 5}
    )
    back = cuttree.load(path)
    assert {type(m) for m in back.modules() if isinstance(m, swin_transformer.ShiftedWindowAttention)} == {
        PrunableShiftedWindowAttention
    }
    with torch.no_grad():
        assert torch.equal(back.eval()(*x), r.model.eval()(*x))
