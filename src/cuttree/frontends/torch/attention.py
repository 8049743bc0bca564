"""Attention heads: the module rules that let a trace prune whole heads, and patch head counts after.

The tracer makes heads prunable where a reshape splits a channel dim into (heads, head width)
*inside* a module whose rule says ``heads=True`` (:mod:`cuttree.frontends.torch.ops.shapes`); such a rule
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
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from cuttree.errors import SurgeryError
from cuttree.frontends.torch.rules import MODULE_RULES, ModuleRule, named_rule, rule_for_module


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
    MaxViT attention and timm's EVA attention run as their twins (:mod:`cuttree.frontends.torch.plugins.torchvision`,
    :mod:`cuttree.frontends.torch.plugins.timm`: theirs tie the head width to the input width); timm LeViT's
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


def _heads_of(out: int, width: int, what: str) -> int:
    if out % width:
        raise SurgeryError(f"{what}: {out} projection channels are not whole heads of width {width}")
    return out // width


def _mha(m: nn.Module) -> None:
    assert isinstance(m, nn.MultiheadAttention)
    heads = _heads_of(int(m.in_proj_weight.shape[0]) // 3, m.head_dim, "MultiheadAttention")
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


def _timm(m: nn.Module) -> None:
    qkv = getattr(m, "qkv", None)
    if qkv is None or not hasattr(m, "head_dim"):
        raise SurgeryError(f"{type(m).__name__}: no fused qkv projection to count heads from")
    width = int(getattr(m, "head_dim"))  # noqa: B009 - a third-party module's attribute
    heads = _heads_of(int(qkv.weight.shape[0]), 3 * width, type(m).__name__)
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
        heads = kv = _heads_of(int(qkv.weight.shape[0]), 3 * width, what)
    else:
        heads = _heads_of(int(getattr(m, "q_proj").weight.shape[0]), width, what)  # noqa: B009
        kv = _heads_of(int(getattr(m, "k_proj").weight.shape[0]), width, what)  # noqa: B009
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


def linear_child(m: nn.Module, names: tuple[str, ...]) -> nn.Linear | None:
    """The first of ``m``'s children called one of ``names`` that is a ``nn.Linear``."""
    return next((c for n in names if isinstance(c := getattr(m, n, None), nn.Linear)), None)


def hf_projections(m: nn.Module) -> tuple[int | None, nn.Linear | None, nn.Linear | None]:
    """A Hugging Face attention module's head width and its query and key projections (each may be missing)."""
    width = next(
        (w for a in ("head_dim", "attention_head_size", "key_value_proj_dim") if (w := getattr(m, a, None))), None
    )
    q = linear_child(m, ("q_proj", "query", "q", "q_lin", "query_proj"))
    k = linear_child(m, ("k_proj", "key", "k", "k_lin", "key_proj"))
    return (int(width) if width else None), q, k


def _hf_patchable(m: nn.Module) -> bool:
    """A wrapper (``BertAttention``: no head width, no query projection; the self-attention inside
    it has the head counts), or a module with a head width and a query projection named as
    :func:`hf_projections` knows them. Others (DeepSeek-V4's low-rank ``q_a_proj``/``q_b_proj``)
    keep their heads whole."""
    width, q, _ = hf_projections(m)
    fused = linear_child(m, ("query_key_value",))
    return (width is None and q is None) or (width is not None and (q is not None or fused is not None))


def _hf(m: nn.Module) -> None:
    width, q, k = hf_projections(m)
    fused = linear_child(m, ("query_key_value",))  # q/k/v of every head in one projection (Persimmon)
    if width is None and q is None:
        return  # a wrapper (BertAttention): the self-attention inside it has the head counts
    proj, share = (q, 1) if q is not None else (fused, 3)  # the query heads' part of the projection
    if width is None or proj is None:  # _hf_patchable keeps such modules' heads whole
        raise SurgeryError(f"{type(m).__name__}: no query projection and head width to count heads from")
    heads = _heads_of(proj.out_features // share, width, type(m).__name__)
    for attr in ("num_attention_heads", "num_heads", "n_heads", "n_head"):
        if hasattr(m, attr):
            setattr(m, attr, heads)
    for attr in ("all_head_size", "inner_dim", "embed_dim"):  # the heads' concatenated width (XGLM reshapes to it)
        if hasattr(m, attr):
            setattr(m, attr, heads * width)
    if k is not None:
        kv = _heads_of(k.out_features, width, type(m).__name__)
        if hasattr(m, "num_key_value_heads"):
            setattr(m, "num_key_value_heads", kv)  # noqa: B010
        if hasattr(m, "num_key_value_groups"):  # each kv head keeps as many query heads as the others
            if heads % kv:
                raise SurgeryError(
                    f"{type(m).__name__}: {heads} query heads for {kv} key/value heads breaks its grouping"
                )
            setattr(m, "num_key_value_groups", heads // kv)  # noqa: B010


def _gpt2(m: nn.Module) -> None:
    """GPT-2's attention: one fused ``Conv1D`` (``[in, 3 · heads · width]``) split by ``split_size``."""
    c_attn, width = getattr(m, "c_attn"), int(getattr(m, "head_dim"))  # noqa: B009
    heads = _heads_of(int(c_attn.weight.shape[1]) // 3, width, type(m).__name__)
    setattr(m, "num_heads", heads)  # noqa: B010
    setattr(m, "split_size", heads * width)  # noqa: B010


def _is_gpt2_attention(t: type) -> bool:
    return t.__module__ == "transformers.models.gpt2.modeling_gpt2" and t.__name__ == "GPT2Attention"


def _gpt_bigcode(m: nn.Module) -> None:
    """StarCoder's (GPTBigCode) self-attention: one fused ``c_attn`` holding ``heads · width`` query
    channels and, under multi-query attention, one key/value head (else q/k/v of every head),
    split by ``embed_dim`` and ``kv_dim``."""
    c_attn, width = getattr(m, "c_attn"), int(getattr(m, "head_dim"))  # noqa: B009
    if getattr(m, "multi_query"):  # noqa: B009
        heads, kv = _heads_of(c_attn.out_features - 2 * width, width, type(m).__name__), 1
    else:
        heads = kv = _heads_of(c_attn.out_features // 3, width, type(m).__name__)
    sizes = {"num_heads": heads, "embed_dim": heads * width, "kv_heads": kv, "kv_dim": kv * width}
    sizes["num_key_value_groups"] = heads // kv
    for attr, value in sizes.items():
        setattr(m, attr, value)


def _is_gpt_bigcode_attention(t: type) -> bool:
    return t.__module__.endswith(".modeling_gpt_bigcode") and t.__name__ == "GPTBigCodeAttention"


# before the generic Hugging Face rule below: the first named rule that matches wins
named_rule("transformers.GPT2Attention", _is_gpt2_attention, ModuleRule(heads=True, update=_gpt2))
named_rule("transformers.GPTBigCodeAttention", _is_gpt_bigcode_attention, ModuleRule(heads=True, update=_gpt_bigcode))


def _is_hf_attention(t: type) -> bool:
    return t.__module__.startswith("transformers.models.") and t.__name__.endswith("Attention")


named_rule("transformers.*Attention", _is_hf_attention, ModuleRule(heads=True, update=_hf, patchable=_hf_patchable))


def _torchvision_vit(m: nn.Module) -> None:
    """torchvision's VisionTransformer reshapes its patch embedding with ``self.hidden_dim``."""
    setattr(m, "hidden_dim", int(getattr(m, "conv_proj").weight.shape[0]))  # noqa: B009, B010


named_rule(
    "torchvision.VisionTransformer",
    lambda t: t.__module__ == "torchvision.models.vision_transformer" and t.__name__ == "VisionTransformer",
    ModuleRule(update=_torchvision_vit),
)

_TORCHVISION_WINDOWS = {
    ("torchvision.models.swin_transformer", "ShiftedWindowAttention"),
    ("torchvision.models.swin_transformer", "ShiftedWindowAttentionV2"),
    ("torchvision.models.maxvit", "RelativePositionalMultiHeadAttention"),
}


def _is_torchvision_window(t: type) -> bool:
    return (t.__module__, t.__name__) in _TORCHVISION_WINDOWS


def _torchvision_window(m: nn.Module) -> None:
    _vision().update(m)


def _vision() -> ModuleType:
    from cuttree.frontends.torch.plugins import torchvision as attention_vision

    return attention_vision


named_rule(
    "torchvision.ShiftedWindowAttention",
    _is_torchvision_window,
    ModuleRule(heads=True, update=_torchvision_window, trace_as=lambda m: _vision().swapped(m)),
)


def _is_timm_eva(t: type) -> bool:
    return t.__module__ == "timm.models.eva" and t.__name__ == "EvaAttention"


def _eva() -> ModuleType:
    from cuttree.frontends.torch.plugins import timm as attention_timm

    return attention_timm


named_rule(
    "timm.EvaAttention",
    _is_timm_eva,
    ModuleRule(heads=True, update=lambda m: _eva().update(m), trace_as=lambda m: _eva().swapped(m)),
)

__all__ = ["PrunableMultiheadAttention", "supported", "swapped", "traceable"]
