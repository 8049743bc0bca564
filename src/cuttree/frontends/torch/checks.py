"""The torch frontend's checks of a plan against the model's code, each keeping whole, with a
warning, the groups the code cannot lose: layers that run only in training, literal channel
counts (``view(-1, 64)``), and attention heads whose counts live where cuttree does not patch.

The checks run on shape-only copies (:mod:`cuttree.frontends.torch.validate`); the flow runs the
cheap ones before surgery and the full repair only where surgery fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import nn

from cuttree.config import Config
from cuttree.core.grouping import DependencyGraph
from cuttree.core.names import selects
from cuttree.core.plan import HEAD_UNITS, PruningPlan
from cuttree.core.planner import estimate
from cuttree.errors import warn
from cuttree.frontends.torch.rules import rule_for_module
from cuttree.frontends.torch.validate import heads_compute_the_same, keep_all, repair


def train_checked(
    model: nn.Module, plan: PruningPlan, example_inputs: Sequence[Any], graph: DependencyGraph
) -> PruningPlan:
    """``plan``, with the groups whose pruning breaks the training-mode forward kept whole.

    Layers the eval-mode trace never reached (auxiliary classifiers that run only in training)
    keep their shapes, so the channels feeding them must stay too: the plan is tried in training
    mode on a shape-only copy, and the groups that break it are kept whole, with a warning.
    """
    if not graph.unreached:
        return plan
    from cuttree.frontends.torch.validate import train_output_shapes

    unreached = f"{', '.join(graph.unreached[:4])}{' …' if len(graph.unreached) > 4 else ''}"
    shapes = train_output_shapes(model, example_inputs)
    if shapes is None:
        warn(
            f"the eval-mode forward never used {unreached} and the training-mode forward cannot be checked on a "
            "shape-only copy: they keep their shapes, so if they run in training mode, disable them or add the layers "
            "feeding them to 'ignore'"
        )
        return plan
    plan, broken = repair(model, plan, example_inputs, shapes, train=True)
    if broken:
        warn(
            f"kept {len(broken)} group(s) whole because layers that run only in training ({unreached}) take their "
            f"channels: {', '.join(broken[:5])}" + (" …" if len(broken) > 5 else "")
        )
    return plan


def validated(
    model: nn.Module, plan: PruningPlan, example_inputs: Sequence[Any], graph: DependencyGraph
) -> PruningPlan:
    plan, broken = repair(model, plan, example_inputs, graph.outputs)
    if broken:
        warn(
            f"kept {len(broken)} group(s) whole because the model's code fixes their size: {', '.join(broken[:5])}"
            + (" …" if len(broken) > 5 else "")
        )
    return heads_checked(model, plan, example_inputs, graph)


def heads_checked(
    model: nn.Module, plan: PruningPlan, example_inputs: Sequence[Any], graph: DependencyGraph
) -> PruningPlan:
    """``plan``, with its attention heads kept whole if removing them is not zeroing them."""
    if not heads_compute_the_same(model, plan, example_inputs):
        names = [g.name for g in plan.groups if g.unit in HEAD_UNITS and len(g.keep) < g.size]
        plan = dataclasses.replace(plan, groups=tuple(keep_all(g) if g.unit in HEAD_UNITS else g for g in plan.groups))
        warn(
            f"kept the attention heads whole ({', '.join(names[:3])}{' …' if len(names) > 3 else ''}): removing them "
            "does not compute what zeroing them does, so the model's code counts heads somewhere cuttree does not patch; "
            "register a module rule for its attention (cuttree.frontends.torch.rules.named_rule) or set head_ratio: 0"
        )
    return dataclasses.replace(plan, macs_after=estimate(graph, plan))


def warn_heads_not_found(model: nn.Module, plan: PruningPlan, config: Config, graph: DependencyGraph) -> None:
    """Warn about the attention modules whose heads ``config`` asks to prune but the trace found no
    heads in (a fused q/k/v projection split by a literal size, say) or whose head counts cuttree
    cannot patch (``ModuleRule.patchable``): they are kept whole."""
    targets = (config.threshold, config.macs_target, config.params_target, config.latency_target)
    wanted = config.head_ratio if config.head_ratio is not None else config.ratio or any(t is not None for t in targets)
    if not wanted:
        return
    head_tensors = [m.tensor for g in plan.groups if g.unit in HEAD_UNITS for m in g.members]
    found = []
    for name, module in model.named_modules():
        if not name or not rule_for_module(module).heads or any(selects(p, name) for p in config.ignore):
            continue
        reached = any(f"{name}.{p}" in graph.shapes for p, _ in module.named_parameters())
        if reached and not any(t.startswith(name + ".") for t in head_tensors):
            found.append(name)
    inner = [n for n in found if not any(o.startswith(n + ".") for o in found)]  # the attention itself, not its wrapper
    if inner:
        kinds = sorted({type(model.get_submodule(n)).__name__ for n in inner})
        warn(
            f"kept the attention heads of {len(inner)} module(s) whole ({', '.join(kinds)}: {', '.join(inner[:3])}"
            f"{' …' if len(inner) > 3 else ''}): the trace found no split into heads that it could follow in them (a "
            "fused q/k/v projection split by a fixed size, say), or their query projection has a name cuttree does "
            "not know; their other channels are pruned as usual; set head_ratio: 0 to silence this"
        )
