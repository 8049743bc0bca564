"""Op rules that reshape one tensor: views and reshapes (with the split of channels into
attention heads), permutes, transposes, squeezes, expands and repeats."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cuttree.frontends.torch.labels import Label, LabelState, Pin
from cuttree.frontends.torch.ops.base import aten, op_rule, pos_dim, uniform


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
    """Reshape: a channel dim merged with untracked dims keeps its blocks, and splitting such a
    merge back restores it; a split into heads (inside an attention module) makes the heads the
    channels; any other split is pinned."""
    x = args[0]
    lx = st.get(x)
    res: list[Label] = [None] * out.dim()
    for gi, gj in _reshape_groups(tuple(x.shape), tuple(out.shape)):
        tracked = [d for d in gi if lx[d] is not None]
        if not tracked:
            continue
        if len(gi) == 1 and len(gj) == 1:
            res[gj[0]] = lx[gi[0]]
            continue
        if len(tracked) != 1:
            for d in tracked:
                st.pin(lx[d], Pin.OP)
            continue
        lab = lx[tracked[0]]
        assert lab is not None  # tracked
        sizes = [x.shape[k] for k in gi]
        shape = [1] * len(gi)
        shape[gi.index(tracked[0])] = x.shape[tracked[0]]
        merged = np.broadcast_to(lab.reshape(shape), sizes).reshape(-1)
        split = _unmerged(merged, [out.shape[k] for k in gj])
        if len(gj) == 1 and st.in_attention and _kv_copies(x, gi, tracked[0]):
            merged = st.query_heads(lab, int(x.shape[gi[1]]))
        if len(gj) == 1:
            res[gj[0]] = merged
        elif split is not None:
            res[gj[split[0]]] = split[1]
        elif st.in_attention:
            hd = _head_dim(out, gj)
            res[gj[hd]] = _heads(st, sizes, gi.index(tracked[0]), lab, out, gj, hd)
        else:
            for d in tracked:
                st.pin(lx[d], Pin.OP)
    st.set(out, res)


def _kv_copies(x: torch.Tensor, gi: list[int], tracked: int) -> bool:
    """Whether a merge is ``repeat_kv``'s: (batch, key/value heads, copies, tokens, width) with the
    copies expanded from one merged into query heads, so that query head ``h`` reads kv head
    ``h // copies`` (grouped-query attention). Not a merge of heads with their width (the last dim),
    which a bias initialized to zeros would make look like copies. Compared on the first token, so
    that long example inputs are no bigger to check than short ones."""
    return len(gi) == 2 and gi[0] == tracked and gi[1] <= x.dim() - 3 and uniform(x.narrow(-2, 0, 1), gi[1])


def _unmerged(merged: np.ndarray, sizes: list[int]) -> tuple[int, np.ndarray] | None:
    """Undo a merge: if the labels of a dim being split into ``sizes`` are one of those dims'
    labels repeated along the others (``(B·H, …) → (B, H, …)`` after ``(B, H) → B·H``), that dim
    and its labels."""
    grid = merged.reshape(sizes)
    for a, n in enumerate(sizes):
        line = grid[(0,) * a + (slice(None),) + (0,) * (len(sizes) - a - 1)]
        shape = [1] * len(sizes)
        shape[a] = n
        if n > 1 and len(np.unique(line)) == n and np.array_equal(np.broadcast_to(line.reshape(shape), sizes), grid):
            return a, line
    return None


def _head_dim(out: Any, gj: list[int]) -> int:
    """Where the heads are in a split (index into ``gj``): second-innermost, ``(…, heads, width)``,
    or third-innermost when a q/k/v dim of 3 sits between, ``(…, heads, 3, width)`` (Persimmon's
    fused projection)."""
    if len(gj) >= 3 and int(out.shape[gj[-2]]) == 3 != int(out.shape[gj[-3]]):
        return -3
    return -2


def _heads(st: LabelState, sizes: list[int], t: int, lab: Label, out: Any, gj: list[int], hd: int) -> np.ndarray:
    """A channel dim split into (…, heads, head width): each head becomes one channel.

    The split's heads dim ``gj[hd]`` carries fresh head labels, and every position of the input
    dim that lands in head ``h`` is unified with it; the head width, any dim between the two
    (q/k/v's "3") and any outer one are fixed. Only attention modules, whose rules patch their
    head counts after surgery, may do this: elsewhere a split's sizes are numbers written in the code.
    """
    assert lab is not None
    k = np.arange(int(np.prod(sizes)))
    pos = (k // int(np.prod(sizes[t + 1 :]))) % sizes[t]
    inner = int(np.prod([out.shape[j] for j in gj[hd + 1 :]]))
    head = (k // inner) % int(out.shape[gj[hd]])
    ids = st.fresh_unit(int(out.shape[gj[hd]]), "heads")
    st.unify(lab[pos], ids[head])
    return ids


@op_rule(aten.permute)
def permute(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    lx = st.get(args[0])
    st.set(out, [lx[pos_dim(d, len(lx))] for d in args[1]])


@op_rule(aten.transpose, aten.t)
def transpose(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    lx = list(st.get(args[0]))
    if len(lx) >= 2:
        d0, d1 = (pos_dim(args[1], len(lx)), pos_dim(args[2], len(lx))) if len(args) > 2 else (0, 1)
        lx[d0], lx[d1] = lx[d1], lx[d0]
    st.set(out, lx)


@op_rule(aten.unsqueeze)
def unsqueeze(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    lx = list(st.get(args[0]))
    lx.insert(pos_dim(args[1], len(lx) + 1), None)
    st.set(out, lx)


@op_rule(aten.squeeze)
def squeeze(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    lx = st.get(x)
    dims = args[1] if len(args) > 1 else range(x.dim())
    gone = {pos_dim(d, x.dim()) for d in ([dims] if isinstance(dims, int) else dims) if x.shape[d] == 1}
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


@op_rule(aten.repeat)
def repeat(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Tiling: position ``k·C + c`` of a repeated dim is channel ``c`` again, so removing a channel
    removes each of its copies and the tiled pruned tensor lines up (repeat counts are not widths)."""
    x, reps = args[0], list(args[1])
    lx = st.get(x)
    res: list[Label] = [None] * out.dim()
    for i in range(1, x.dim() + 1):
        lab = lx[-i]
        if lab is not None:
            res[-i] = np.tile(lab, reps[-i])
    st.set(out, res)
