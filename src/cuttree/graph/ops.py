"""How each ATen op moves channel labels from its inputs to its outputs.

One table, :data:`OP_RULES`, keyed by ATen overload packet and filled by :func:`op_rule`. Ops
tagged ``pointwise`` by PyTorch share the broadcasting rule. An op with no rule pins every tracked
dimension it touches (:attr:`Pin.OP`): unknown ops make cuttree prune less, never wrongly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cuttree.graph.labels import Label, LabelState, MacTerm, Pin

aten = torch.ops.aten
OpRule = Callable[[LabelState, tuple[Any, ...], dict[str, Any], Any], None]
OP_RULES: dict[Any, OpRule] = {}


def op_rule(*packets: Any) -> Callable[[OpRule], OpRule]:
    """Register the decorated function as the rule of the given ATen ops (warns on collision)."""

    def deco(fn: OpRule) -> OpRule:
        for p in packets:
            if p in OP_RULES and OP_RULES[p] is not fn:
                warnings.warn(f"op rule for {p} replaced by {fn.__qualname__}", stacklevel=2)
            OP_RULES[p] = fn
        return fn

    return deco


def rule_for(func: Any) -> OpRule:
    """The rule of an ATen overload: registered, pointwise, or the pinning fallback."""
    rule = OP_RULES.get(func.overloadpacket)
    if rule is not None:
        return rule
    if torch.Tag.pointwise in func.tags:
        return pointwise
    return fallback


def _tensors(args: Sequence[Any]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, list | tuple):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


def _outs(out: Any) -> list[torch.Tensor]:
    return _tensors([out]) if isinstance(out, torch.Tensor) else _tensors(out)


def _dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


def fallback(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """No rule: pin everything the op touches; its outputs are untracked."""
    touched = False
    for t in _tensors(list(args) + list(kwargs.values())):
        if any(lab is not None for lab in st.get(t)):
            touched = True
            st.pin_all(t, Pin.OP)
    if touched:
        st.unsupported[st.current_op] = st.unsupported.get(st.current_op, 0) + 1


def pointwise(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Broadcasting elementwise op: dimensions that line up from the right are coupled."""
    ins = _tensors(list(args) + list(kwargs.values()))
    outs = _outs(out)
    if not outs:
        return
    shape = outs[0].shape
    res: list[Label] = [None] * len(shape)
    for i in range(1, len(shape) + 1):
        size = shape[-i]
        if size == 1:
            continue
        first: Label = None
        fixed = False
        for t in ins:
            if t.dim() < i or t.shape[-i] != size:
                continue
            lab = st.get(t)[-i]
            if lab is None:
                fixed = True
            elif first is None:
                first = lab
            else:
                st.unify(first, lab)
        if first is not None and fixed:
            st.pin(first, Pin.FIXED)
        res[len(shape) - i] = first
    for o in outs:
        if o.shape == shape:
            st.set(o, res)


@op_rule(
    aten.detach,
    aten.alias,
    aten.lift_fresh,
    aten._to_copy,
    aten.hardswish,
    aten.hardswish_,
    aten.hardsigmoid,
    aten.hardsigmoid_,
    aten._softmax,
    aten._log_softmax,
    aten.softmax,
    aten.log_softmax,
    aten.native_dropout,
    aten.zeros_like,
    aten.ones_like,
    aten.empty_like,
    aten.full_like,
    aten.rand_like,
    aten.randn_like,
    aten.silu,
    aten.silu_,
    aten.mish,
    aten.leaky_relu,
    aten.leaky_relu_,
    aten.elu,
    aten.elu_,
    aten.gelu,
    aten.relu6,
)
def same_shape(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Unary op whose outputs have the input's shape and channel order."""
    lab = st.get(args[0])
    for o in _outs(out):
        if o.shape == args[0].shape:
            st.set(o, lab)


@op_rule(aten.copy_)
def copy_(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """``dst.copy_(src)``: the two line up like a pointwise op."""
    pointwise(st, args[:2], {}, out)


@op_rule(aten.new_zeros, aten.new_ones, aten.new_empty, aten.new_full, aten.new_empty_strided)
def new_tensor(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """``x.new_zeros(size)``: a fresh tensor of a fixed size; ``x`` itself is unaffected."""


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
    else:
        # Grouped conv: every group must keep the same width; not pruned (yet).
        for lab in (lx[1], w_in, w_out):
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
    """Batch norm: weight, bias and running statistics follow the input's channels."""
    lx = st.get(args[0])
    for p in args[1:5]:
        if isinstance(p, torch.Tensor) and p.dim() == 1:
            st.unify(lx[1], st.get(p)[0])
    st.set(_outs(out)[0], lx)


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
    st.set(_outs(out)[0], lx)


@op_rule(aten.native_group_norm)
def group_norm(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Group norm: prunable with one group or one channel per group, else pinned."""
    x, groups = args[0], int(args[6])
    lx = st.get(x)
    params = [st.get(p)[0] for p in args[1:3] if isinstance(p, torch.Tensor)]
    if groups in (1, x.shape[1]):
        for lab in params:
            st.unify(lx[1], lab)
        st.set(_outs(out)[0], lx)
        return
    for lab in [lx[1], *params]:
        st.pin(lab, Pin.OP)
    st.set(_outs(out)[0], (lx[0], None, *lx[2:]))


def _matmul(st: LabelState, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``a @ b`` over the last two dims, with any leading (batch) dims lined up."""
    la, lb = st.get(a), st.get(b)
    for d in range(a.dim() - 2):
        st.unify(la[d], lb[d])
    st.unify(la[-1], lb[-2])
    st.set(out, [*la[:-1], lb[-1]])
    labs = [x for x in (*la, lb[-1]) if x is not None]
    st.mac_terms.append(MacTerm(math.prod(a.shape) * b.shape[-1], labs))


@op_rule(aten.mm, aten.bmm)
def mm(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Matrix product (from ``F.linear``, ``matmul``, attention written by hand)."""
    _matmul(st, args[0], args[1], out)


@op_rule(aten.addmm, aten.baddbmm)
def addmm(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """``bias + a @ b``: the bias broadcasts against the product."""
    _matmul(st, args[1], args[2], out)
    pointwise(st, (args[0], out), {}, out)


def _reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair up runs of dims of two shapes with equal products (dims of size 1 left out)."""
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [j for j, s in enumerate(b) if s != 1]
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(ia) and j < len(ib):
        gi, gj = [ia[i]], [ib[j]]
        pa, pb = a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(ia):
                gi.append(ia[i])
                pa *= a[ia[i]]
                i += 1
            elif j < len(ib):
                gj.append(ib[j])
                pb *= b[ib[j]]
                j += 1
            else:
                break
        groups.append((gi, gj))
    return groups


@op_rule(aten.view, aten._unsafe_view, aten.reshape, aten.view_copy, aten._reshape_alias)
def view(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Reshape: a channel dim merged with untracked dims keeps its blocks; splits are pinned."""
    x = args[0]
    lx = st.get(x)
    res: list[Label] = [None] * out.dim()
    for gi, gj in _reshape_groups(tuple(x.shape), tuple(out.shape)):
        tracked = [d for d in gi if lx[d] is not None]
        if not tracked:
            continue
        if len(gi) == 1 and len(gj) == 1:
            res[gj[0]] = lx[gi[0]]
        elif len(gj) == 1 and len(tracked) == 1:
            d = tracked[0]
            sizes = [x.shape[k] for k in gi]
            shape = [1] * len(gi)
            shape[gi.index(d)] = x.shape[d]
            res[gj[0]] = np.broadcast_to(lx[d].reshape(shape), sizes).reshape(-1)
        else:
            for d in tracked:
                st.pin(lx[d], Pin.OP)
    st.set(out, res)


@op_rule(aten.permute)
def permute(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    lx = st.get(args[0])
    st.set(out, [lx[_dim(d, len(lx))] for d in args[1]])


@op_rule(aten.transpose, aten.t)
def transpose(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    lx = list(st.get(args[0]))
    if len(lx) >= 2:
        d0, d1 = (_dim(args[1], len(lx)), _dim(args[2], len(lx))) if len(args) > 2 else (0, 1)
        lx[d0], lx[d1] = lx[d1], lx[d0]
    st.set(out, lx)


@op_rule(aten.unsqueeze)
def unsqueeze(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    lx = list(st.get(args[0]))
    lx.insert(_dim(args[1], len(lx) + 1), None)
    st.set(out, lx)


@op_rule(aten.squeeze)
def squeeze(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    lx = st.get(x)
    dims = args[1] if len(args) > 1 else range(x.dim())
    gone = {_dim(d, x.dim()) for d in ([dims] if isinstance(dims, int) else dims) if x.shape[d] == 1}
    st.set(out, [lab for d, lab in enumerate(lx) if d not in gone])


@op_rule(aten.expand)
def expand(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    lx = st.get(x)
    res: list[Label] = [None] * out.dim()
    for i in range(1, x.dim() + 1):
        if x.shape[-i] == out.shape[-i]:
            res[-i] = lx[-i]
    st.set(out, res)


@op_rule(aten.cat)
def cat(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Concatenation: the output's channels are the inputs' channels, one block after another."""
    ts = [t for t in args[0] if not (t.dim() == 1 and t.numel() == 0)]
    dim = _dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), out.dim())
    labs = [st.get(t) for t in ts]
    res: list[Label] = [None] * out.dim()
    for d in range(out.dim()):
        if d == dim:
            if any(lab[d] is not None for lab in labs):
                res[d] = np.concatenate(
                    [lab[d] if lab[d] is not None else st.filler(t.shape[d]) for t, lab in zip(ts, labs, strict=True)]
                )
            continue
        if out.shape[d] == 1:
            continue
        first = next((lab[d] for lab in labs if lab[d] is not None), None)
        if first is not None:
            for lab in labs:
                st.unify(first, lab[d])
        res[d] = first
    st.set(out, res)


@op_rule(aten.stack)
def stack(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    ts = args[0]
    dim = _dim(args[1] if len(args) > 1 else 0, out.dim())
    labs = [st.get(t) for t in ts]
    res: list[Label] = []
    for d in range(ts[0].dim()):
        first = next((lab[d] for lab in labs if lab[d] is not None), None)
        if first is not None:
            for lab in labs:
                st.unify(first, lab[d])
        res.append(first)
    res.insert(dim, None)
    st.set(out, res)


@op_rule(aten.slice)
def slice_(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Slicing a channel range is pinned: the bounds are numbers written in the model's code."""
    x = args[0]
    dim = _dim(args[1] if len(args) > 1 else 0, x.dim())
    lx = list(st.get(x))
    if out.shape[dim] != x.shape[dim]:
        st.pin(lx[dim], Pin.OP)
        lx[dim] = None
    st.set(out, lx)


@op_rule(aten.select)
def select(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    dim = _dim(args[1], x.dim())
    lx = list(st.get(x))
    st.pin(lx[dim], Pin.OP)
    del lx[dim]
    st.set(out, lx)


def _split(st: LabelState, x: torch.Tensor, dim: int, out: Any) -> None:
    """Splitting a channel dim into pieces is pinned: the piece sizes are written in the code."""
    dim = _dim(dim, x.dim())
    lx = list(st.get(x))
    outs = _outs(out)
    if len(outs) == 1 and outs[0].shape == x.shape:
        st.set(outs[0], lx)
        return
    st.pin(lx[dim], Pin.OP)
    for o in outs:
        lo = list(lx)
        if o.dim() == x.dim():
            lo[dim] = None
        else:
            del lo[dim]
        st.set(o, lo)


@op_rule(aten.split, aten.split_with_sizes, aten.unsafe_split, aten.split_with_sizes_copy)
def split(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    _split(st, args[0], args[2] if len(args) > 2 else kwargs.get("dim", 0), out)


@op_rule(aten.unbind)
def unbind(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    _split(st, args[0], args[1] if len(args) > 1 else kwargs.get("dim", 0), out)


@op_rule(aten.constant_pad_nd)
def pad(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Constant padding: padded positions are fixed, the original ones keep their labels."""
    x, pads = args[0], list(args[1])
    lx = list(st.get(x))
    for k in range(len(pads) // 2):
        d = x.dim() - 1 - k
        lo, hi = pads[2 * k], pads[2 * k + 1]
        if (lo, hi) == (0, 0) or lx[d] is None:
            continue
        if lo < 0 or hi < 0:
            st.pin(lx[d], Pin.OP)
            lx[d] = None
        else:
            lx[d] = np.concatenate([st.filler(lo), lx[d], st.filler(hi)])
    st.set(out, lx)


def _spatial(n: int) -> OpRule:
    def rule(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        x = args[0]
        lx = list(st.get(x))
        k = min(n, x.dim() - 1)
        for d in range(x.dim() - k, x.dim()):
            st.pin(lx[d], Pin.OP)
            lx[d] = None
        for o in _outs(out):
            if o.dim() == x.dim():
                st.set(o, lx)

    rule.__doc__ = f"Pooling, upsampling, padding over the last {n} dims: the others keep their labels."
    return rule


for _n, _names in {
    1: "avg_pool1d max_pool1d max_pool1d_with_indices adaptive_avg_pool1d adaptive_max_pool1d "
    "_adaptive_avg_pool1d upsample_nearest1d upsample_linear1d reflection_pad1d replication_pad1d",
    2: "avg_pool2d max_pool2d max_pool2d_with_indices adaptive_avg_pool2d _adaptive_avg_pool2d "
    "adaptive_max_pool2d upsample_nearest2d upsample_bilinear2d upsample_bicubic2d "
    "_upsample_nearest_exact2d _upsample_bilinear2d_aa reflection_pad2d replication_pad2d "
    "mkldnn_max_pool2d fractional_max_pool2d",
    3: "avg_pool3d max_pool3d max_pool3d_with_indices adaptive_avg_pool3d _adaptive_avg_pool3d "
    "adaptive_max_pool3d upsample_nearest3d upsample_trilinear3d reflection_pad3d replication_pad3d",
}.items():
    op_rule(*[getattr(aten, name) for name in _names.split() if hasattr(aten, name)])(_spatial(_n))


@op_rule(aten.max_unpool2d, aten.max_unpool3d)
def max_unpool(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Unpooling with the indices of an earlier pool ties the two channel sets together."""
    x, idx = args[0], args[1]
    lx, li = st.get(x), st.get(idx)
    k = x.dim() - 2
    for d in range(x.dim() - k):
        st.unify(lx[d], li[d])
    for d in range(x.dim() - k, x.dim()):
        st.pin(lx[d], Pin.OP)
        st.pin(li[d], Pin.OP)
    st.set(out, list(lx[: x.dim() - k]) + [None] * k)


@op_rule(
    aten.mean,
    aten.sum,
    aten.amax,
    aten.amin,
    aten.max,
    aten.min,
    aten.var,
    aten.std,
    aten.prod,
    aten.argmax,
    aten.argmin,
    aten.logsumexp,
    aten.any,
    aten.all,
    aten.var_mean,
    aten.std_mean,
)
def reduction(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Reducing over a channel dim pins it (the result would depend on how many are left)."""
    x = args[0]
    lx = list(st.get(x))
    dims: Any = args[1] if len(args) > 1 else kwargs.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    reduced = set(range(x.dim())) if not dims else {_dim(d, x.dim()) for d in dims}
    for d in reduced:
        st.pin(lx[d], Pin.OP)
    keep = [lab for d, lab in enumerate(lx) if d not in reduced]
    for o in _outs(out):
        if o.dim() == x.dim():
            st.set(o, [None if d in reduced else lab for d, lab in enumerate(lx)])
        elif o.dim() == len(keep):
            st.set(o, keep)


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
    for d in range(q.dim() - 2):
        st.unify(lq[d], lk[d])
        st.unify(lq[d], lv[d])
    st.unify(lq[-1], lk[-1])
    st.unify(lk[-2], lv[-2])
    for t in args[3:]:
        if isinstance(t, torch.Tensor):
            st.pin_all(t, Pin.OP)
    st.set(_outs(out)[0], [*list(lq[:-1]), lv[-1]])
    lead = [x for x in lq[:-2] if x is not None]
    base = math.prod(q.shape[:-1]) * k.shape[-2]
    st.mac_terms.append(MacTerm(base * q.shape[-1], lead + [x for x in (lq[-2], lk[-2], lq[-1]) if x is not None]))
    st.mac_terms.append(MacTerm(base * v.shape[-1], lead + [x for x in (lq[-2], lk[-2], lv[-1]) if x is not None]))


@op_rule(aten.embedding)
def embedding(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    w, idx = args[0], args[1]
    lw = st.get(w)
    st.pin(lw[0], Pin.OP)
    st.pin_all(idx, Pin.OP)
    st.set(out, [None] * idx.dim() + [lw[1]])


@op_rule(aten._prelu_kernel, aten.prelu)
def prelu(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """PReLU: one weight per channel (dim 1), or one shared weight."""
    x, w = args[0], args[1]
    lx = st.get(x)
    if w.numel() > 1:
        lw = st.get(w)
        st.unify(lx[1], lw[1] if w.dim() == x.dim() else lw[0])
    st.set(out, lx)


@op_rule(aten.roll, aten.flip)
def roll(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Rolling or flipping a dim reorders it: fine for spatial dims, pinned for channels."""
    x = args[0]
    dims = args[2] if len(args) > 2 else args[1]
    lx = list(st.get(x))
    for d in [dims] if isinstance(dims, int) else dims:
        st.pin(lx[_dim(d, x.dim())], Pin.OP)
        lx[_dim(d, x.dim())] = None
    st.set(out, lx)
