"""Apply a plan: the only code that changes tensor shapes.

Each affected parameter or buffer is replaced by the slice that keeps its surviving positions
(every module that shares it sees the new one), then the rules table brings module attributes
in line, then, given example inputs, one forward pass checks the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from cuttree.core.plan import DEPTH_UNIT, PruningPlan
from cuttree.errors import SurgeryError, first_line
from cuttree.frontends.torch.depth import remove_blocks, stack_shapes
from cuttree.frontends.torch.rules import counts_heads, is_rms_norm, rule_for_module
from cuttree.frontends.torch.util import as_inputs, eval_mode


def _owners(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """State-dict name of each tensor → every (module, attribute) that holds that tensor."""
    by_id: dict[int, list[tuple[nn.Module, str]]] = {}
    first: dict[int, str] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for attr, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
            if t is None:
                continue
            full = f"{mod_name}.{attr}" if mod_name else attr
            first.setdefault(id(t), full)
            if (mod, attr) not in by_id.setdefault(id(t), []):
                by_id[id(t)].append((mod, attr))
    return {name: by_id[i] for i, name in first.items()}


def check_shapes(model: nn.Module, plan: PruningPlan) -> None:
    """Raise if ``model``'s tensors are not the shapes the plan was made for."""
    if plan.framework != "torch":
        raise SurgeryError(
            f"the plan was made for a {plan.framework} model (layout '{plan.layout}'); apply it with "
            f"cuttree.{plan.framework}.apply_plan to the model it was made for"
        )
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state.update({k: tuple(v.shape) for k, v in model.named_buffers() if k not in state})  # non-persistent ones too
    state.update(stack_shapes(model, plan))  # a stack of decoder layers: (blocks,)
    for name, shape in plan.shapes.items():
        if name not in state:
            raise SurgeryError(
                f"the plan prunes tensor '{name}', which this model does not have; build the architecture the plan was made for"
            )
        if state[name] != shape:
            raise SurgeryError(
                f"tensor '{name}' has shape {state[name]}, the plan expects {shape}; build the architecture "
                "(and arch_kwargs) the plan was made for"
            )


def _fold_first(model: nn.Module, plan: PruningPlan, example_inputs: Sequence[Any] | None) -> None:
    """Fold, in place, the layers ``plan`` was made with folded; refuse if that cannot be done exactly."""
    from cuttree.frontends.torch.fold import computes_its_weight, fold_computed_weights

    names = dict(model.named_modules())
    missing = [n for n in plan.folded if n not in names]
    if missing:
        raise SurgeryError(
            f"the plan was made with layer '{missing[0]}' folded, and this model has no such layer; apply the plan "
            "to the model it was made for"
        )
    todo = [n for n in plan.folded if computes_its_weight(names[n])]
    if not todo:
        return
    if example_inputs is None:
        raise ValueError(
            f"the plan was made with {len(todo)} layer(s) folded into plain ones ({todo[0]} …) and this model still "
            "computes their weight: pass example_inputs to apply_plan so they can be folded first"
        )
    _, done = fold_computed_weights(model, example_inputs, inplace=True, only=todo)
    if len(done) != len(todo):
        left = sorted(set(todo) - set(done))
        raise SurgeryError(f"layer '{left[0]}' of the plan's folded layers cannot be folded exactly in this model")


def apply_plan(
    model: nn.Module,
    plan: PruningPlan,
    example_inputs: Sequence[Any] | None = None,
    output_shapes: Sequence[tuple[int, ...]] | None = None,
) -> nn.Module:
    """Remove the plan's channels from ``model`` in place and return it.

    With ``example_inputs``, runs one forward pass afterwards and checks that it works and,
    with ``output_shapes``, that every output keeps its shape. All or nothing: if the check
    fails, the model is restored as it was and :class:`SurgeryError` is raised.

    A plan made with ``fold_computed_weights`` (``plan.folded``) first folds those layers of
    ``model`` (:mod:`cuttree.frontends.torch.fold`), which needs ``example_inputs``.
    """
    if example_inputs is not None:
        example_inputs = as_inputs(example_inputs)
    if plan.folded:
        _fold_first(model, plan, example_inputs)
    check_shapes(model, plan)
    owners = _owners(model)
    removed = plan.removed_positions()
    stacks = {m.tensor for g in plan.groups if g.unit == DEPTH_UNIT for m in g.members}
    blocks = {t: removed.pop(t)[0] for t in stacks if t in removed}  # a stack that keeps every layer is absent
    groups_left = _groups_left(model, removed)
    undo: list[tuple[nn.Module, str, torch.Tensor]] = []
    touched: dict[int, nn.Module] = {}
    rms_shrunk: dict[int, float] = {}  # RMS norms: d / d_kept of their scale
    for name, dims in removed.items():
        holders = owners[name]
        mod, attr = holders[0]
        old = getattr(mod, attr)
        new = old.detach()
        for d, pos in sorted(dims.items()):
            keep = torch.ones(new.shape[d], dtype=torch.bool)
            keep[torch.from_numpy(pos)] = False
            new = new.index_select(d, keep.nonzero().squeeze(1).to(new.device))
        new = new.contiguous()
        value = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
        for m, a in holders:
            undo.append((m, a, getattr(m, a)))
            setattr(m, a, value)
            touched[id(m)] = m
            if is_rms_norm(m) and a == rule_for_module(m).scale:
                rms_shrunk[id(m)] = old.shape[0] / new.shape[0]
        del old
    # Attention modules count heads from their children's new sizes (timm's Attention owns qkv and
    # proj), so their rules run after every other, also when they hold a tensor of their own
    # (per-head attention sinks).
    for m in model.modules():
        if id(m) not in touched and counts_heads(m) and any(id(c) in touched for c in m.modules()):
            touched[id(m)] = m
    attrs = {i: {k: v for k, v in vars(m).items() if not k.startswith("_")} for i, m in touched.items()}
    classes = {i: type(m) for i, m in touched.items()}
    restore_blocks: list[Callable[[], None]] = []
    try:
        for m in sorted(touched.values(), key=counts_heads):
            rule_for_module(m).update(m)
            if id(m) in groups_left:  # a grouped conv that lost width inside its groups, not only groups
                assert isinstance(m, nn.modules.conv._ConvNd)
                m.groups = groups_left[id(m)]
                m.in_channels = m.weight.shape[1] * m.groups
            if id(m) in rms_shrunk:
                rms = rule_for_module(m).rms
                assert rms is not None
                rms(m, math.sqrt(rms_shrunk[id(m)]))
        for stack, gone in blocks.items():  # whole layers last: the channel surgery above named them as they were
            restore_blocks.append(remove_blocks(model, stack, gone.tolist()))
        if example_inputs is not None:
            _check_forward(model, example_inputs, output_shapes)
    except Exception:
        # All or nothing: put every tensor and attribute back, so a failed surgery leaves the model as it was.
        for restore in reversed(restore_blocks):
            restore()
        for m, a, t in reversed(undo):
            setattr(m, a, t)
        for i, m in touched.items():
            vars(m).update(attrs[i])
            m.__class__ = classes[i]
        raise
    return model


def _groups_left(model: nn.Module, removed: dict[str, dict[int, Any]]) -> dict[int, int]:
    """How many groups each grouped (not depthwise) conv keeps: those with an output row left.

    The conv rule counts groups from the output width per group, which the ``width`` unit changes too.
    """
    out: dict[int, int] = {}
    for mod_name, m in model.named_modules():
        if not isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) or m.groups == 1 or m.weight.shape[1] == 1:
            continue
        gone = removed.get(f"{mod_name}.weight" if mod_name else "weight", {}).get(0)
        if gone is None:
            continue
        kept = torch.ones(m.out_channels, dtype=torch.bool)
        kept[torch.from_numpy(gone)] = False
        out[id(m)] = int(kept.view(m.groups, -1).any(dim=1).sum())
    return out


def _check_forward(
    model: nn.Module, example_inputs: Sequence[Any], output_shapes: Sequence[tuple[int, ...]] | None
) -> None:
    try:
        with eval_mode(model), torch.no_grad():
            out = model(*example_inputs)
    except Exception as e:  # the user's forward failed on the pruned shapes: say so, keep the cause
        first = first_line(e)
        raise SurgeryError(
            f"the pruned model fails its forward pass ({type(e).__name__}: {first}); the model's code probably "
            "hard-codes a channel count: add the layer involved to 'ignore'"
        ) from e
    leaves = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    if output_shapes is not None:
        got = [t.shape for t in leaves]
        if got != list(output_shapes):
            raise SurgeryError(
                f"the pruned model's outputs have shapes {[tuple(s) for s in got]}, the original's "
                f"{[tuple(s) for s in output_shapes]}; the model's code probably hard-codes a channel count: "
                "add the layer involved to 'ignore'"
            )
