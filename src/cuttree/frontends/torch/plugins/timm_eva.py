"""timm's EVA attention written so that heads can go.

timm's ``EvaAttention`` (EVA-02, and the models built from it) merges its heads back with the
block's *input* width (``reshape(B, N, C)``), so a stock module could only lose heads together
with as many embedding channels. :class:`PrunableEvaAttention` is its twin: the same parameters
and computation (tested against the stock forward, rotary embeddings included) with the output
width ``heads × head width``. Heads are removed whole, so the rotary embedding, which rotates
positions inside a head, is untouched. cuttree traces the stock module as its twin
(:func:`cuttree.frontends.torch.attention.traceable`) and swaps a pruned module to it after surgery.

This module imports timm; :mod:`cuttree.frontends.torch.attention` loads it only for models that hold an
``EvaAttention``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from timm.models.eva import EvaAttention
from torch import nn


class PrunableEvaAttention(EvaAttention):
    """timm's ``EvaAttention`` whose heads × head width may differ from its input width."""

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        eva = sys.modules[EvaAttention.__module__]  # timm's own helpers, as its forward uses them
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        if self.qkv is not None:
            if self.q_bias is None:
                qkv = self.qkv(x)
            else:
                bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))  # type: ignore[arg-type]
                qkv = self.qkv(x) + bias if self.qkv_bias_separate else F.linear(x, self.qkv.weight, bias)
            q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (
                p(x).reshape(b, n, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj)
            )
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            npt, half = self.num_prefix_tokens, getattr(self, "rotate_half", False)
            q = torch.cat([q[:, :, :npt], eva.apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :npt], eva.apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        if self.fused_attn:
            dropout = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = eva.maybe_add_mask(attn, eva.resolve_self_attn_mask(n, attn, attn_mask, is_causal=is_causal))
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = self.norm(x.transpose(1, 2).reshape(b, n, -1))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))  # type: ignore[no-any-return]


def swapped(m: nn.Module) -> nn.Module:
    """``m`` turned into :class:`PrunableEvaAttention` in place (same tensors); twins unchanged."""
    if type(m) is EvaAttention:
        m.__class__ = PrunableEvaAttention
    return m


def update(m: nn.Module) -> None:
    """After surgery: the twin's class, and the head count from the query projection."""
    from cuttree.errors import SurgeryError

    assert isinstance(m, EvaAttention)
    width = int(m.head_dim)
    out = int(m.qkv.weight.shape[0]) // 3 if m.qkv is not None else int(m.q_proj.weight.shape[0])  # type: ignore[union-attr]
    if out % width:
        raise SurgeryError(f"EvaAttention: {out} projection channels are not whole heads of width {width}")
    m.num_heads = out // width
    swapped(m)


__all__ = ["PrunableEvaAttention", "swapped", "update"]
