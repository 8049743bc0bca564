"""Op rules that join, cut and reduce tensors: concat/stack, split/slice/select/index, padding,
im2col/unfold, pooling and other spatial ops, reductions, rolls."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cuttree.frontends.torch.labels import Label, LabelState, Pin
from cuttree.frontends.torch.ops.base import OpRule, aten, op_rule, out_tensors, pos_dim


@op_rule(aten.im2col)
def im2col(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """``F.unfold``: ``(N, C, H, W)`` → ``(N, C·kh·kw, L)``, channel ``c`` at ``c·kh·kw … c·kh·kw + kh·kw − 1``."""
    x, (kh, kw) = args[0], args[1]
    c = x.dim() - 3  # the channel dim: 0 unbatched, 1 batched
    lx = st.get(x)
    res: list[Label] = [None] * out.dim()
    if c == 1:
        res[0] = lx[0]
    lab = lx[c]
    if lab is not None:
        res[c] = np.repeat(lab, kh * kw)
    st.set(out, res)


@op_rule(aten.unfold)
def unfold(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """``Tensor.unfold(dim, size, step)``: windows of ``dim`` into a new last dim; the other dims
    keep their channels, a channel dim cut into windows is pinned (window sizes are in the code)."""
    x, dim = args[0], pos_dim(args[1], args[0].dim())
    lx = list(st.get(x))
    if lx[dim] is not None:
        st.pin(lx[dim], Pin.OP)
        lx[dim] = None
    st.set(out, [*lx, None])


@op_rule(aten.cat)
def cat(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Concatenation: the output's channels are the inputs' channels, one block after another."""
    ts = [t for t in args[0] if not (t.dim() == 1 and t.numel() == 0)]
    dim = pos_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), out.dim())
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
    dim = pos_dim(args[1] if len(args) > 1 else 0, out.dim())
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
    dim = pos_dim(args[1] if len(args) > 1 else 0, x.dim())
    lx = list(st.get(x))
    if out.shape[dim] != x.shape[dim]:
        st.pin(lx[dim], Pin.OP)
        lx[dim] = None
    st.set(out, lx)


@op_rule(aten.select)
def select(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    dim = pos_dim(args[1], x.dim())
    lx = list(st.get(x))
    st.pin(lx[dim], Pin.OP)
    del lx[dim]
    st.set(out, lx)


def _split(st: LabelState, x: torch.Tensor, dim: int, out: Any) -> None:
    """Splitting a channel dim into pieces of sizes written in the code is pinned.

    A split into equal pieces (``chunk``, which splits by the current width) keeps each piece's
    channels, provided every piece loses the same positions: the trace must couple them piece by
    piece (a fused gate/up projection whose halves are multiplied), or they are pinned when the
    walk ends (:meth:`~cuttree.core.labels.LabelState.align`). Inside an attention module (whose
    rule patches its sizes after surgery) a fused projection's split into query, key and value
    keeps each piece's channels, so that the pieces' reshapes into heads can make the heads the
    unit; a split the rule does not patch fails the checks after planning and is kept whole there.
    """
    dim = pos_dim(dim, x.dim())
    lx = list(st.get(x))
    outs = out_tensors(out)
    if len(outs) == 1 and outs[0].shape == x.shape:
        st.set(outs[0], lx)
        return
    lab = lx[dim]
    same_rank = all(o.dim() == x.dim() for o in outs)
    equal = same_rank and len({o.shape[dim] for o in outs}) == 1
    if lab is not None and (st.in_attention or equal) and same_rank:
        start, pieces = 0, []
        for o in outs:
            pieces.append(lab[start : start + o.shape[dim]])
            start += o.shape[dim]
            st.set(o, [*lx[:dim], pieces[-1], *lx[dim + 1 :]])
        if equal and not st.in_attention:
            st.align(tuple(pieces))
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
        for o in out_tensors(out):
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
    """Reducing over a channel dim pins it (the result would depend on how many are left), except
    an RMS norm's mean of squares over the last dim (surgery rescales the norm's weight instead)."""
    x = args[0]
    lx = list(st.get(x))
    dims: Any = args[1] if len(args) > 1 else kwargs.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    reduced = set(range(x.dim())) if not dims else {pos_dim(d, x.dim()) for d in dims}
    rms = st.in_rms_norm and st.current_op == "mean" and reduced == {x.dim() - 1}
    for d in reduced if not rms else ():
        st.pin(lx[d], Pin.OP)
    keep = [lab for d, lab in enumerate(lx) if d not in reduced]
    for o in out_tensors(out):
        if o.dim() == x.dim():
            st.set(o, [None if d in reduced else lab for d, lab in enumerate(lx)])
        elif o.dim() == len(keep):
            st.set(o, keep)


@op_rule(aten.roll, aten.flip)
def roll(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Rolling or flipping a dim reorders it: fine for spatial dims, pinned for channels."""
    x = args[0]
    dims = args[2] if len(args) > 2 else args[1]
    lx = list(st.get(x))
    for d in [dims] if isinstance(dims, int) else dims:
        st.pin(lx[pos_dim(d, x.dim())], Pin.OP)
        lx[pos_dim(d, x.dim())] = None
    st.set(out, lx)


@op_rule(aten.index)
def index(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """``x[idx]`` with index tensors on adjacent dims: those dims are gathered (pinned), the
    others keep their labels (a relative-position table ``table[idx]`` keeps its head dim)."""
    x, indices = args[0], list(args[1])
    used = [d for d, i in enumerate(indices) if i is not None]
    lx = list(st.get(x))
    for i in indices:
        if isinstance(i, torch.Tensor):
            st.pin_all(i, Pin.OP)
    for d in used:
        st.pin(lx[d], Pin.OP)
    gathered = out.dim() - (x.dim() - len(used))
    masks = any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
    if used and not masks and used == list(range(used[0], used[-1] + 1)) and gathered >= 0:
        st.set(out, lx[: used[0]] + [None] * gathered + lx[used[-1] + 1 :])  # adjacent: gathered dims stay in place


@op_rule(aten.linalg_vector_norm)
def vector_norm(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """``torch.linalg.vector_norm(x, ord, dim)`` (``F.normalize``): a reduction over ``dim``."""
    dim = args[2] if len(args) > 2 else kwargs.get("dim")
    reduction(st, (args[0], dim), {}, out)


@op_rule(aten.as_strided_)
def as_strided_(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """In-place restriding (a kernel giving its output a memory layout, as ``adaptive_avg_pool2d``
    does after its ``mean``): harmless when every dim of size > 1 keeps its stride, so each
    element stays where it was; anything else reinterprets the memory and is pinned."""
    x = args[0]
    same = len(st.strides_before) == x.dim() and all(
        n == 1 or a == b for n, a, b in zip(x.shape, st.strides_before, x.stride(), strict=True)
    )
    if not same:
        st.pin_all(x, Pin.OP)
        st.set(x, [None] * x.dim())
