"""Attention heads: the module rules that let a trace prune whole heads, and patch head counts after.

The tracer makes heads prunable where a reshape splits a channel dim into (heads, head width)
*inside* a module whose rule says ``heads=True`` (:mod:`cuttree.frontends.torch.ops.views`); such a rule
must bring the module's head-count attributes in line after surgery, or raise so that the
groups involved are kept whole. Covered here: ``nn.MultiheadAttention`` (traced and run as
:class:`PrunableMultiheadAttention`, the same computation written so that its head count can
change), timm's ``Attention`` and Hugging Face attention modules (``BertSelfAttention``,
``ViTAttention``, ``LlamaAttention``, …, which infer the head count from the tensor).

Only whole heads are removed: the head width (and so the softmax scale) stays as it was.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from cuttree.errors import SurgeryError
from cuttree.frontends.torch.rules import MODULE_RULES, ModuleRule, rule_for_module


class PrunableMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose head count may differ from ``embed_dim / head_dim``.

    Same parameters, same state-dict keys, same results (packed q/k/v projection, no
    ``bias_k``/``add_zero_attn``); the projections are computed per head, so a pruned module
    with fewer heads (``num_heads · head_dim < embed_dim``) still runs. cuttree swaps a pruned
    module to this class; tracing swaps it in for the duration of the trace.

    >>> m = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    >>> x = torch.randn(1, 5, 8)
    >>> p = supported(m) and swapped(m)
    >>> bool(torch.allclose(p(x, x, x)[0], nn.MultiheadAttention.forward(m, x, x, x)[0], atol=1e-6))
    True
    """

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError("MultiheadAttention: is_causal is a hint that needs attn_mask; pass the causal mask")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        h, d = self.num_heads, self.head_dim
        w = self.in_proj_weight.view(3, h, d, -1)  # (q/k/v, heads, head width, embed)
        b = None if self.in_proj_bias is None else self.in_proj_bias.view(3, h, d)

        def project(x: torch.Tensor, i: int) -> torch.Tensor:
            y = F.linear(x, w[i].reshape(h * d, -1), None if b is None else b[i].reshape(h * d))
            return y.view(x.shape[0], x.shape[1], h, d).transpose(1, 2)  # (batch, heads, length, width)

        q, k, v = project(query, 0), project(key, 1), project(value, 2)
        mask = _float_mask(attn_mask, key_padding_mask, q)
        p = self.dropout if self.training else 0.0
        if need_weights:
            attn = (q * (1.0 / math.sqrt(d))) @ k.transpose(-2, -1)
            attn = (attn if mask is None else attn + mask).softmax(dim=-1)
            weights = attn.mean(dim=1) if average_attn_weights else attn
            y = F.dropout(attn, p) @ v
        else:
            weights = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = self.out_proj(y.transpose(1, 2).reshape(q.shape[0], q.shape[2], h * d))
        if unbatched:
            return y.squeeze(0), None if weights is None else weights.squeeze(0)
        return (y if self.batch_first else y.transpose(0, 1)), weights


def _float_mask(attn_mask: torch.Tensor | None, padding: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    """MultiheadAttention's masks (bool: True = not allowed; float: added) as one additive mask."""

    def additive(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill(m, float("-inf"))
        return m.to(q.dtype)

    out = None
    if attn_mask is not None:
        m = additive(attn_mask)
        out = m.view(q.shape[0], -1, *m.shape[-2:]) if m.dim() == 3 else m
    if padding is not None:
        kp = additive(padding).view(q.shape[0], 1, 1, -1)
        out = kp if out is None else out + kp
    return out


def supported(m: nn.Module) -> bool:
    """Whether ``m`` is a ``nn.MultiheadAttention`` that :class:`PrunableMultiheadAttention` computes exactly."""
    return (
        isinstance(m, nn.MultiheadAttention)
        and m._qkv_same_embed_dim
        and m.bias_k is None
        and not m.add_zero_attn
        and m.in_proj_weight is not None
    )


def swapped(m: nn.Module) -> nn.Module:
    """``m`` turned into a :class:`PrunableMultiheadAttention` in place (same tensors)."""
    m.__class__ = PrunableMultiheadAttention
    return m


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """While inside: every module whose rule has ``trace_as`` is in the form the tracer must see.

    A supported ``nn.MultiheadAttention`` runs as :class:`PrunableMultiheadAttention` (its own
    forward takes fused fast paths, one opaque op, that hide the heads); torchvision's Swin and
    MaxViT attention and timm's EVA attention run as their twins (:mod:`cuttree.frontends.torch.plugins.torchvision_swin`,
    :mod:`cuttree.frontends.torch.plugins.timm_eva`: theirs tie the head width to the input width); timm LeViT's
    bias cache is cleared (a cached bias would hide its heads). Classes are restored afterwards.
    """
    changed: list[tuple[nn.Module, type[nn.Module]]] = []
    for m in model.modules():
        prepare = rule_for_module(m).trace_as
        if prepare is not None:
            changed.append((m, type(m)))
            prepare(m)
    try:
        yield
    finally:
        for m, cls in changed:
            m.__class__ = cls


def heads_of(out: int, width: int, what: str) -> int:
    if out % width:
        raise SurgeryError(f"{what}: {out} projection channels are not whole heads of width {width}")
    return out // width


def _mha(m: nn.Module) -> None:
    assert isinstance(m, nn.MultiheadAttention)
    heads = heads_of(int(m.in_proj_weight.shape[0]) // 3, m.head_dim, "MultiheadAttention")
    m.num_heads = heads
    m.embed_dim = m.kdim = m.vdim = int(m.in_proj_weight.shape[1])
    if type(m) is nn.MultiheadAttention:
        swapped(m)  # the stock forward insists on num_heads · head_dim == embed_dim


def _mha_traced(m: nn.Module) -> None:
    if type(m) is nn.MultiheadAttention and supported(m):  # not a user's subclass: its forward is its own
        swapped(m)


MODULE_RULES.register(
    nn.MultiheadAttention, ModuleRule(frozen=True, update=_mha, trace_as=_mha_traced)
)  # traced when swapped
MODULE_RULES.register(PrunableMultiheadAttention, ModuleRule(heads=True, update=_mha))


__all__ = ["PrunableMultiheadAttention", "heads_of", "supported", "swapped", "traceable"]
