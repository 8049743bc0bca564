"""The torch frontend's dependency graph: trace a module, then group with the core.

:func:`build_graph` runs the ATen tracer and tells :func:`cuttree.core.grouping.group_channels`
which module owns each tensor (from the module-rules table); the groups themselves are computed
by the framework-neutral core (``Member``, ``Group`` and ``DependencyGraph`` are re-exported
from there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cuttree.core.grouping import DependencyGraph, Group, Role, group_channels, with_depth_group, with_width_groups
from cuttree.core.plan import Member
from cuttree.errors import warn
from cuttree.frontends.torch.attention import traceable
from cuttree.frontends.torch.depth import block_params
from cuttree.frontends.torch.layerwise import decoder_stack
from cuttree.frontends.torch.rules import rule_for_module
from cuttree.frontends.torch.trace import TraceResult, named_tensors, trace

__all__ = ["DependencyGraph", "Group", "Member", "build_graph"]


def _module_of(name: str) -> tuple[str, str]:
    mod, _, attr = name.rpartition(".")
    return mod, attr


def build_graph(
    model: nn.Module,
    example_inputs: Sequence[Any],
    ignore: Sequence[str] = (),
    group_width: bool = True,
    depth: bool = False,
) -> DependencyGraph:
    """Trace ``model`` and group its coupled channels.

    ``ignore`` holds module names (already resolved from globs) whose own output channels stay.
    A grouped conv gives two units: whole groups, and (with ``group_width``, from a second walk)
    the same position of the width inside every group; grouped-query attention likewise gives
    key/value heads with all their query heads, and the same query heads of every kv head.
    ``nn.MultiheadAttention`` modules are traced as :class:`~cuttree.frontends.torch.attention.PrunableMultiheadAttention`
    (their own forward hides the heads in one fused op); the model is unchanged afterwards.
    With ``depth``, the decoder stack's blocks are one more group, of unit ``layers``
    (:mod:`cuttree.frontends.torch.depth`).
    """
    stack = decoder_stack(model) if depth else None
    if depth and stack is None:
        warn(
            "units: layers removes whole decoder layers, and this model has no stack of them (a ModuleList of one "
            "block class holding Linear layers); only the other units are pruned"
        )
    with traceable(model):
        graph, spans = _build(model, example_inputs, ignore, group_width, list(stack[1]) if stack else [])
    if stack is None:
        return graph
    return with_depth_group(graph, stack[0], spans, block_params(stack[1]))


def _build(
    model: nn.Module,
    example_inputs: Sequence[Any],
    ignore: Sequence[str],
    group_width: bool,
    blocks: Sequence[nn.Module],
) -> tuple[DependencyGraph, list[tuple[int, int]]]:
    modules = dict(model.named_modules())
    tensors = named_tensors(model)
    pinned_out: dict[str, list[int]] = {}
    for name, t in tensors.items():
        mod_name, attr = _module_of(name)
        owner = modules[mod_name]
        rule = rule_for_module(owner)
        if any(rule_for_module(modules[p]).frozen for p in _ancestors(mod_name)):
            pinned_out[name] = list(range(t.dim()))
        elif mod_name in ignore and attr in rule.out_dims:
            pinned_out[name] = [rule.out_dims[attr]]
        elif mod_name in ignore and not rule.out_dims:
            pinned_out[name] = list(range(t.dim()))
    res = trace(model, example_inputs, pinned_out, blocks=blocks)
    graph = _group(model, res, modules, tensors)
    if not group_width or not (res.state.grouped_heads or any(kind == "groups" for _, kind in res.state.units)):
        return graph, res.spans
    wide = trace(model, example_inputs, pinned_out, group_width=True)
    return with_width_groups(graph, _group(model, wide, modules, tensors)), res.spans


def _ancestors(mod_name: str) -> list[str]:
    parts = mod_name.split(".") if mod_name else []
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def _group(
    model: nn.Module, res: TraceResult, modules: dict[str, nn.Module], tensors: dict[str, torch.Tensor]
) -> DependencyGraph:
    roles = {}
    for name in res.tensors:
        mod_name, attr = _module_of(name)
        rule = rule_for_module(modules[mod_name])
        roles[name] = Role(mod_name, rule.out_dims.get(attr), rule.producer)
    return group_channels(
        res.state,
        res.tensors,
        roles,
        shapes={n: tuple(t.shape) for n, t in tensors.items()},
        outputs=[tuple(o.shape) for o in res.outputs],
        trace_seconds=res.seconds,
        unreached=sorted({_module_of(n)[0] for n in res.unreached if isinstance(tensors[n], nn.Parameter)}),
    )
