"""Op rules of the layers: convolutions, norms, matrix products, attention, embedding, PReLU."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from cuttree.frontends.torch.labels import Label, LabelState, MacTerm, Pin
from cuttree.frontends.torch.ops.base import aten, op_rule, out_tensors, pointwise, uniform


@op_rule(aten.convolution)
def convolution(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Conv and transposed conv: input channels meet the weight's, outputs come from it."""
    x, w, b = args[0], args[1], args[2]
    transposed, groups = bool(args[6]), int(args[8])
    lx, lw = st.get(x), st.get(w)
    for d in range(2, w.dim()):
        st.pin(lw[d], Pin.OP)
    w_in, w_out = (lw[0], lw[1]) if transposed else (lw[1], lw[0])
    out_lab: Label
    if groups == 1:
        st.unify(lx[1], w_in)
        out_lab = w_out
    elif groups == x.shape[1] and not transposed and w.shape[1] == 1:
        # Depthwise (with channel multiplier m): output o reads input channel o // m.
        mult = w.shape[0] // groups
        src = lx[1] if mult == 1 or lx[1] is None else np.repeat(lx[1], mult)
        st.unify(src, w_out)
        out_lab = w_out
    elif groups == x.shape[1] and transposed and w.shape[1] == 1:
        st.unify(lx[1], w_in)
        out_lab = w_in
    elif not transposed and not st.group_width:
        # Grouped conv: the unit is a whole group (its input channels and its output channels
        # together); the width inside a group stays, so every group keeps the same width.
        ids = st.fresh_unit(groups, "groups")
        st.unify(lx[1], np.repeat(ids, x.shape[1] // groups))
        st.unify(w_out, np.repeat(ids, w.shape[0] // groups))
        st.pin(w_in, Pin.OP)
        out_lab = w_out
    elif not transposed:
        # The other unit of a grouped conv: one position of the width inside a group, in every
        # group at once (input width: the weight's dim 1; output width: the same rows of every group).
        ids_in = st.fresh_unit(x.shape[1] // groups, "width")
        st.unify(lx[1], np.tile(ids_in, groups))
        st.unify(w_in, ids_in)
        ids_out = st.fresh_unit(w.shape[0] // groups, "width")
        st.unify(w_out, np.tile(ids_out, groups))
        out_lab = w_out
    else:
        for lab in (lx[1], w_in, w_out):  # grouped transposed conv: not pruned
            st.pin(lab, Pin.OP)
        out_lab = None
    if isinstance(b, torch.Tensor):
        st.unify(st.get(b)[0], out_lab)
    st.set(out, (lx[0], out_lab) + (None,) * (out.dim() - 2))
    spatial = x.shape[2:] if transposed else out.shape[2:]
    macs = out.shape[0] * math.prod(w.shape) * math.prod(spatial)
    st.mac_terms.append(MacTerm(macs, [lab for lab in lw[:2] if lab is not None]))


@op_rule(
    aten.native_batch_norm,
    aten._native_batch_norm_legit_no_training,
    aten._native_batch_norm_legit,
    aten.cudnn_batch_norm,
    aten.miopen_batch_norm,
)
def batch_norm(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Batch norm: weight, bias and running statistics follow the input's channels.

    With batch statistics (training mode, or a weight standardized by ``F.batch_norm(w.reshape(1,
    out, -1), training=True)``) every other dim is reduced over, so a channel dim there (a weight's
    input channels) is pinned, as in any reduction."""
    lx = st.get(args[0])
    if any(isinstance(a, bool) and a for a in args[3:6]):  # the ``training`` flag of every overload
        for lab in [*lx[:1], *lx[2:]]:
            st.pin(lab, Pin.OP)
    for p in args[1:5]:
        if isinstance(p, torch.Tensor) and p.dim() == 1:
            st.unify(lx[1], st.get(p)[0])
    st.set(out_tensors(out)[0], lx)


@op_rule(aten.native_layer_norm)
def layer_norm(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Layer norm over the last dims: its affine parameters follow them."""
    x, shape = args[0], args[1]
    lx = st.get(x)
    k = len(shape)
    if not isinstance(args[2], torch.Tensor):
        # No affine weight: the normalised shape is a fixed number in the model's code.
        for lab in lx[-k:]:
            st.pin(lab, Pin.FIXED)
    for p in args[2:4]:
        if isinstance(p, torch.Tensor):
            for a, b in zip(st.get(p), lx[-k:], strict=True):
                st.unify(a, b)
    st.set(out_tensors(out)[0], lx)


@op_rule(aten.native_group_norm)
def group_norm(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Group norm: with one group or one channel per group, prunable channel by channel; with
    groups of several channels and an affine weight, whole groups are the unit (removing a whole
    group leaves every other group's statistics as they were; removing part of one would not),
    and the module rule keeps the group size; without an affine weight, pinned."""
    x, groups = args[0], int(args[6])
    lx = st.get(x)
    params = [st.get(p)[0] for p in args[1:3] if isinstance(p, torch.Tensor)]
    if groups in (1, x.shape[1]) or (params and lx[1] is not None):
        if groups not in (1, x.shape[1]):
            st.unify(lx[1], np.repeat(st.fresh_unit(groups, "groups"), x.shape[1] // groups))
        for lab in params:
            st.unify(lx[1], lab)
        st.set(out_tensors(out)[0], lx)
        return
    for lab in [lx[1], *params]:
        st.pin(lab, Pin.OP)
    st.set(out_tensors(out)[0], (lx[0], None, *lx[2:]))


def _matmul(st: LabelState, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``a @ b`` over the last two dims, with any leading (batch) dims lined up.

    Inside an attention module, a batch dim of ``b`` holding one key/value head for every query
    head of ``a`` (multi-query attention written as a batched matmul over batch × heads) constrains
    nothing, and that head's width is fixed, as in :func:`attention`."""
    la, lb = st.get(a), st.get(b)
    for d in range(a.dim() - 2):
        lad = la[d]
        if st.in_attention and lb[d] is None and lad is not None and _one_per_block(lad, b, d):
            st.pin(lb[-1], Pin.FIXED)
            lb = (*lb[:-1], None)
        else:
            st.unify(la[d], lb[d])
    st.unify(la[-1], lb[-2])
    st.set(out, [*la[:-1], lb[-1]])
    labs = [x for x in (*la, lb[-1]) if x is not None]
    st.mac_terms.append(MacTerm(math.prod(a.shape) * b.shape[-1], labs))


def _one_per_block(lab: np.ndarray, b: torch.Tensor, d: int) -> bool:
    """Whether ``lab`` is ``n`` heads repeated in blocks (a merged batch × heads dim) and ``b``
    holds the same values for the ``n`` positions of every block along ``d``."""
    n = len(np.unique(lab))
    if n < 2 or len(lab) % n or not np.array_equal(lab, np.tile(lab[:n], len(lab) // n)):
        return False
    return uniform(b.reshape(*b.shape[:d], len(lab) // n, n, *b.shape[d + 1 :]), d + 1)


@op_rule(aten.mm, aten.bmm)
def mm(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Matrix product (from ``F.linear``, ``matmul``, attention written by hand)."""
    _matmul(st, args[0], args[1], out)


@op_rule(aten.addmm, aten.baddbmm)
def addmm(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """``bias + a @ b``: the bias broadcasts against the product."""
    _matmul(st, args[1], args[2], out)
    pointwise(st, (args[0], out), {}, out)


@op_rule(
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_attention_math,
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
    aten._scaled_dot_product_attention_math_for_mps,
)
def attention(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Scaled dot-product attention: q·k contract over E, the weights then mix v over S."""
    q, k, v = args[0], args[1], args[2]
    lq, lk, lv = st.get(q), st.get(k), st.get(v)
    shared = False  # one key/value head that every query head reads (multi-query attention)
    for d in range(q.dim() - 2):
        for x, lx in ((k, lk), (v, lv)):
            if lx[d] is None and lq[d] is not None and (x.shape[d] == 1 or uniform(x, d)):
                shared = True
            else:
                _unify_grouped(st, lq[d], lx[d])
    st.unify(lq[-1], lk[-1])
    st.unify(lk[-2], lv[-2])
    if shared:  # its width is the width of every head's output: a fixed size, as in any head
        st.pin(lv[-1], Pin.FIXED)
        lv = (*lv[:-1], None)
    logits = (*q.shape[:-1], k.shape[-2])
    for t in [*args[3:], *kwargs.values()]:
        if isinstance(t, torch.Tensor):
            _mask(st, t, logits, lq)
    st.set(out_tensors(out)[0], [*list(lq[:-1]), lv[-1]])
    lead = [x for x in lq[:-2] if x is not None]
    base = math.prod(q.shape[:-1]) * k.shape[-2]
    st.mac_terms.append(MacTerm(base * q.shape[-1], lead + [x for x in (lq[-2], lk[-2], lq[-1]) if x is not None]))
    st.mac_terms.append(MacTerm(base * v.shape[-1], lead + [x for x in (lq[-2], lk[-2], lv[-1]) if x is not None]))


def _mask(st: LabelState, m: torch.Tensor, logits: tuple[int, ...], lq: tuple[Label, ...]) -> None:
    """An additive mask broadcasts against the logits (…, heads, L, S): a per-head mask (a relative
    position bias) goes with its heads; a fixed one of the heads' size pins them, unless it
    repeats one value along them."""
    lm = st.get(m)
    for i in range(1, m.dim() + 1):
        if i <= 2 or i > len(logits) or m.shape[-i] != logits[-i] or m.shape[-i] == 1:
            st.pin(lm[-i], Pin.OP)
        elif lm[-i] is not None:
            st.unify(lq[-i], lm[-i])
        elif not uniform(m, -i):
            st.pin(lq[-i], Pin.FIXED)


def _unify_grouped(st: LabelState, q: Label, kv: Label) -> None:
    """Query heads against key/value heads: equal counts pair up; under grouped-query attention
    (``enable_gqa``: H query heads share H/G key/value heads) query head ``h`` reads kv head ``h // G``,
    so a kv head can only go with all the query heads that share it. The second walk
    (``group_width``) gives the other unit: the same positions among every kv head's G query heads,
    so that each kv head keeps as many query heads as the others (``h // G`` stays its kv head)."""
    if q is not None and kv is not None and len(q) != len(kv) and len(q) % len(kv) == 0:
        st.unify(q, st.query_heads(kv, len(q) // len(kv)))
    else:
        st.unify(q, kv)


@op_rule(aten.embedding)
def embedding(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    w, idx = args[0], args[1]
    lw = st.get(w)
    st.pin(lw[0], Pin.OP)
    st.pin_all(idx, Pin.OP)
    res: list[Label] = [None] * idx.dim()
    st.set(out, [*res, lw[1]])


@op_rule(aten._prelu_kernel, aten.prelu)
def prelu(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """PReLU: one weight per channel (dim 1), or one shared weight."""
    x, w = args[0], args[1]
    lx = st.get(x)
    if w.numel() > 1:
        lw = st.get(w)
        st.unify(lx[1], lw[1] if w.dim() == x.dim() else lw[0])
    st.set(out, lx)
