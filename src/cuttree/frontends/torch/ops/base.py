"""How each ATen op moves channel labels from its inputs to its outputs.

One table, :data:`OP_RULES`, keyed by ATen overload packet and filled by :func:`op_rule`. Ops
tagged ``pointwise`` by PyTorch share the broadcasting rule. An op with no rule pins every tracked
dimension it touches (:attr:`Pin.OP`): unknown ops make cuttree prune less, never wrongly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from cuttree.core.registry import Registry
from cuttree.frontends.torch.labels import Label, LabelState, Pin

aten = torch.ops.aten
OpRule = Callable[[LabelState, tuple[Any, ...], dict[str, Any], Any], None]
OP_RULES: Registry[Any, OpRule] = Registry("op rule")


def op_rule(*packets: Any) -> Callable[[OpRule], OpRule]:
    """Register the decorated function as the rule of the given ATen ops (warns on collision)."""
    return OP_RULES.decorator(*packets)


def rule_for(func: Any) -> OpRule:
    """The rule of an ATen overload: registered, pointwise, or the pinning fallback."""
    rule = OP_RULES.get(func.overloadpacket)
    if rule is not None:
        return rule
    if torch.Tag.pointwise in func.tags:
        return pointwise
    return fallback


def tensor_args(args: Sequence[Any]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, list | tuple):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


def out_tensors(out: Any) -> list[torch.Tensor]:
    return tensor_args([out]) if isinstance(out, torch.Tensor) else tensor_args(out)


def pos_dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


def uniform(t: torch.Tensor, d: int) -> bool:
    """Whether ``t`` holds one value along dim ``d`` (expanded from size 1, or a mask built per
    window and repeated per head): removing positions of that dim cannot change what it adds."""
    try:
        if t.shape[d] <= 1 or t.is_sparse:
            return False
        if t.stride(d) == 0:
            return True
        return t.numel() <= 1 << 22 and bool((t == t.narrow(d, 0, 1)).all())
    except RuntimeError:  # layouts without strides (mkldnn)
        return False


def fallback(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """No rule: pin everything the op touches; its outputs are untracked."""
    touched = False
    for t in tensor_args(list(args) + list(kwargs.values())):
        if any(lab is not None for lab in st.get(t)):
            touched = True
            st.pin_all(t, Pin.OP)
    if touched:
        st.unsupported[st.current_op] = st.unsupported.get(st.current_op, 0) + 1


def pointwise(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Broadcasting elementwise op: dimensions that line up from the right are coupled; an untracked
    operand of the same size fixes the count, unless it repeats one value along that dim."""
    ins = tensor_args(list(args) + list(kwargs.values()))
    outs = out_tensors(out)
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
                fixed = fixed or not uniform(t, -i)  # a constant repeated along the dim fits any count
            elif first is None:
                first = lab
            else:
                st.unify(first, lab)
        if first is not None and fixed:
            st.pin(first, Pin.FIXED)
            first = None  # pinned for good: later ops treat the dim as a fixed size (a mask's windows)
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
    for o in out_tensors(out):
        if o.shape == args[0].shape:
            st.set(o, lab)


@op_rule(aten.copy_)
def copy_(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """``dst.copy_(src)``: the two line up like a pointwise op."""
    pointwise(st, args[:2], {}, out)


@op_rule(aten.new_zeros, aten.new_ones, aten.new_empty, aten.new_full, aten.new_empty_strided)
def new_tensor(st: LabelState, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """``x.new_zeros(size)``: a fresh tensor of a fixed size; ``x`` itself is unaffected."""


__all__ = ["OP_RULES", "OpRule", "fallback", "op_rule", "pointwise", "rule_for", "uniform"]
