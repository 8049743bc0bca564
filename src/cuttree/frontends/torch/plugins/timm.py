"""timm's attention blocks: the module rules that count and patch their heads.

Classes are recognised by module and name, so timm is never imported here; EVA's attention runs
as a twin (:mod:`cuttree.frontends.torch.plugins.timm_eva`, which imports timm) only when a model
holds one.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from cuttree.errors import SurgeryError
from cuttree.frontends.torch.attention import heads_of
from cuttree.frontends.torch.rules import ModuleRule, named_rule


def _timm(m: nn.Module) -> None:
    qkv = getattr(m, "qkv", None)
    if qkv is None or not hasattr(m, "head_dim"):
        raise SurgeryError(f"{type(m).__name__}: no fused qkv projection to count heads from")
    width = int(getattr(m, "head_dim"))  # noqa: B009 - a third-party module's attribute
    heads = heads_of(int(qkv.weight.shape[0]), 3 * width, type(m).__name__)
    setattr(m, "num_heads", heads)  # noqa: B010
    if hasattr(m, "attn_dim"):
        setattr(m, "attn_dim", heads * width)  # noqa: B010


def _is_timm_attention(t: type) -> bool:
    return t.__module__ == "timm.layers.attention" and t.__name__ == "Attention"


named_rule("timm.Attention", _is_timm_attention, ModuleRule(heads=True, update=_timm))


def _timm_rope(m: nn.Module) -> None:
    """timm's ``AttentionRope`` (EVA-style ViTs, DeepSeek's ViT): fused qkv, or separate q/k/v
    projections with fewer key/value heads."""
    width = int(getattr(m, "head_dim"))  # noqa: B009 - a third-party module's attribute
    what = type(m).__name__
    qkv = getattr(m, "qkv", None)
    if qkv is not None:
        heads = kv = heads_of(int(qkv.weight.shape[0]), 3 * width, what)
    else:
        heads = heads_of(int(getattr(m, "q_proj").weight.shape[0]), width, what)  # noqa: B009
        kv = heads_of(int(getattr(m, "k_proj").weight.shape[0]), width, what)  # noqa: B009
    for name, value in dict(
        num_heads=heads, num_kv_heads=kv, num_kv_groups=heads // kv, attn_dim=heads * width, kv_dim=kv * width
    ).items():
        setattr(m, name, value)


named_rule(
    "timm.AttentionRope",
    lambda t: t.__module__ == "timm.layers.attention" and t.__name__ == "AttentionRope",
    ModuleRule(heads=True, update=_timm_rope),
)


def _per_head(m: nn.Module, name: str, dim: int) -> int:
    t = getattr(m, name)
    assert isinstance(t, torch.Tensor)
    return int(t.shape[dim])


def _timm_window(m: nn.Module) -> None:
    """timm's Swin ``WindowAttention``: heads counted by its relative-position table (width from ``-1``)."""
    heads = _per_head(m, "relative_position_bias_table", 1)
    qkv = getattr(m, "qkv")  # noqa: B009 - a third-party module's attribute
    if qkv.weight.shape[0] % (3 * heads):
        raise SurgeryError(f"WindowAttention: {qkv.weight.shape[0]} qkv channels are not 3 × {heads} heads")
    setattr(m, "num_heads", heads)  # noqa: B010


named_rule(
    "timm.WindowAttention",
    lambda t: t.__module__ == "timm.models.swin_transformer" and t.__name__ == "WindowAttention",
    ModuleRule(heads=True, update=_timm_window),
)


def _timm_levit(m: nn.Module) -> None:
    """timm's LeViT ``Attention`` and ``AttentionDownsample``: heads counted by their attention biases."""
    heads = _per_head(m, "attention_biases", 0)
    key, val = int(getattr(m, "key_dim")), int(getattr(m, "val_dim"))  # noqa: B009 - head widths, never pruned
    setattr(m, "num_heads", heads)  # noqa: B010
    setattr(m, "key_attn_dim", key * heads)  # noqa: B010
    setattr(m, "val_attn_dim", val * heads)  # noqa: B010
    setattr(m, "attention_bias_cache", {})  # noqa: B010 - it holds the biases of the old head count


def _levit_traced(m: nn.Module) -> None:
    setattr(m, "attention_bias_cache", {})  # noqa: B010 - a bias cached before the trace is untracked


named_rule(
    "timm.levit.Attention",
    lambda t: t.__module__ == "timm.models.levit" and t.__name__ in ("Attention", "AttentionDownsample"),
    ModuleRule(heads=True, update=_timm_levit, trace_as=_levit_traced),
)


def _is_timm_eva(t: type) -> bool:
    return t.__module__ == "timm.models.eva" and t.__name__ == "EvaAttention"


def _eva() -> ModuleType:
    from cuttree.frontends.torch.plugins import timm_eva as attention_timm

    return attention_timm


named_rule(
    "timm.EvaAttention",
    _is_timm_eva,
    ModuleRule(heads=True, update=lambda m: _eva().update(m), trace_as=lambda m: _eva().swapped(m)),
)
