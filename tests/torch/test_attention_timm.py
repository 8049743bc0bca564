"""timm's Swin, EVA-02 and LeViT attention lose whole heads, found from the trace: the EVA twin
computes exactly what the stock module does, head counts and patched attributes agree with the
weights, and the pruned model equals the original with the removed heads zeroed (an oracle)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from timm.models.eva import Eva, EvaAttention
from timm.models.levit import Attention as LevitAttention
from timm.models.levit import AttentionDownsample, Levit
from timm.models.swin_transformer import SwinTransformer, WindowAttention
from torch import nn

import cuttree
from cuttree.frontends.torch.plugins.timm_eva import PrunableEvaAttention, swapped
from cuttree.frontends.torch.validate import zeroed


def tiny_swin() -> nn.Module:
    return SwinTransformer(
        img_size=32, patch_size=4, window_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4), num_classes=5
    )


def tiny_eva() -> nn.Module:  # EVA-02's recipe: rotary embeddings, SwiGLU MLP, no k bias
    return Eva(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, swiglu_mlp=True,
        use_rot_pos_emb=True, ref_feat_shape=(4, 4), num_classes=5,
    )  # fmt: skip


def tiny_levit() -> nn.Module:  # two stages: Attention blocks and an AttentionDownsample between
    return Levit(img_size=64, embed_dim=(32, 48), key_dim=8, num_heads=(2, 4), depth=(1, 1), num_classes=5)


MODELS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "swin": (tiny_swin, 32),
    "eva": (tiny_eva, 32),
    "levit": (tiny_levit, 64),
}
ATTENTION = (WindowAttention, EvaAttention, LevitAttention, AttentionDownsample)


def heads_and_width(m: nn.Module) -> tuple[int, int]:
    """The head count a module claims and the count its weights hold."""
    if isinstance(m, WindowAttention):
        return m.num_heads, m.relative_position_bias_table.shape[1]
    if isinstance(m, EvaAttention):
        assert m.qkv is not None
        return m.num_heads, m.qkv.weight.shape[0] // 3 // m.head_dim
    assert isinstance(m, LevitAttention | AttentionDownsample)
    proj = m.proj.ln.linear
    assert m.val_attn_dim == proj.in_features and m.key_attn_dim == m.key_dim * m.num_heads
    return m.num_heads, m.attention_biases.shape[0]


def test_eva_twin_computes_what_timm_does() -> None:
    torch.manual_seed(0)
    model = tiny_eva().eval()
    x = torch.randn(2, 3, 32, 32)
    want = model(x)
    for fused in (True, False):
        twin = copy.deepcopy(model)
        for m in twin.modules():
            if isinstance(m, EvaAttention):
                m.fused_attn = fused
                assert type(swapped(m)) is PrunableEvaAttention
        torch.testing.assert_close(twin(x), want, rtol=0, atol=1e-6 if fused else 1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_heads_removed_equal_the_original_with_them_zeroed(name: str) -> None:
    build, size = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = (torch.randn(2, 3, size, size),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing kept whole for a reason
        r = cuttree.prune(model, x, cuttree.Config(ratio=0.0, head_ratio=0.5, latency_runs=0))
    stock = [m for m in model.modules() if isinstance(m, ATTENTION)]
    heads = [g for g in r.plan.groups if g.unit == "heads"]
    assert len(heads) == len(stock) and all(len(g.keep) == g.size // 2 for g in heads)
    assert {g.unit for g in r.plan.groups if len(g.keep) < g.size} == {"heads"}
    with torch.no_grad():
        torch.testing.assert_close(r.model.eval()(*x), zeroed(model, r.plan).eval()(*x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_every_width_prunes_with_attributes_that_agree(name: str) -> None:
    build, size = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = (torch.randn(2, 3, size, size),)
    same = cuttree.prune(model, x, cuttree.Config(ratio=0.0, latency_runs=0))
    with torch.no_grad():
        assert torch.equal(same.model.eval()(*x), model(*x))
    r = cuttree.prune(model, x, cuttree.Config(ratio=0.5, latency_runs=0))
    before = [heads_and_width(m)[0] for m in model.modules() if isinstance(m, ATTENTION)]
    after = [heads_and_width(m) for m in r.model.modules() if isinstance(m, ATTENTION)]
    assert [claimed for claimed, held in after] == [held for claimed, held in after] == [h // 2 for h in before]
    assert r.after.params < r.before.params and r.plan.macs_after == r.after.macs
    with torch.no_grad():
        assert r.model.eval()(*x).shape == (2, 5)
    r.model.train()
    assert r.model(*x).shape == (2, 5)


def test_rope_attention_and_packed_swiglu_prune_exactly() -> None:
    """timm's ``AttentionRope`` (fused qkv, rotary embeddings) loses whole heads and its
    ``GluMlp`` (one fc1 whose halves are gate and up, split by ``chunk``) loses gate/up pairs:
    DeepSeek's ViT, whose RMSNorm keeps the residual stream whole, equals the zeroing oracle."""
    deepseek = pytest.importorskip("timm.models.deepseek_vit")
    torch.manual_seed(0)
    model = deepseek.DeepseekVitClassifier(img_size=56, embed_dim=64, depth=2, num_heads=4, num_classes=10).eval()
    x = (torch.randn(2, 3, 56, 56),)
    r = cuttree.prune(model, x, cuttree.Config(ratio=0.3, latency_runs=0))
    got = {(g.name, g.unit, g.size, len(g.keep)) for g in r.plan.groups}
    assert got == {
        (f"encoder.blocks.{i}.{name}", unit, size, keep)
        for i in (0, 1)
        for name, unit, size, keep in (("attn.qkv", "heads", 4, 3), ("mlp.fc1", "channels", 176, 128))
    }
    attn, mlp = r.model.encoder.blocks[0].attn, r.model.encoder.blocks[0].mlp
    assert (attn.num_heads, attn.attn_dim, attn.qkv.out_features, attn.proj.in_features) == (3, 48, 144, 48)
    assert (mlp.fc1.out_features, mlp.fc2.in_features) == (256, 128)
    with torch.no_grad():
        torch.testing.assert_close(r.model(*x), zeroed(model, r.plan)(*x), rtol=1e-5, atol=1e-6)
