"""Check a plan against the model's own code before any real surgery.

The trace sees the ops that ran, not the numbers written in the model's Python code: a
``view(B, 64, -1)`` with a literal channel count looks like any reshape. So a plan is tried
first on a shape-only copy of the model (the ``meta`` device: no memory, no arithmetic), and the
groups whose pruning breaks the forward pass are found by bisection and kept whole.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from cuttree._util import eval_mode
from cuttree.plan import GroupPlan, PruningPlan
from cuttree.surgery import apply_plan


def _meta_copy(model: nn.Module) -> nn.Module:
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _to_meta(x: Any) -> Any:
    return torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x


class _Prober:
    def __init__(self, model: nn.Module, example_inputs: Sequence[Any], shapes: list[tuple[int, ...]]) -> None:
        self.model = model
        self.inputs = tree_map(_to_meta, tuple(example_inputs))
        self.shapes = shapes
        self.probes = 0

    def ok(self, plan: PruningPlan) -> bool:
        self.probes += 1
        m = _meta_copy(self.model)
        try:
            apply_plan(m, plan)
            with eval_mode(m), torch.no_grad():
                out = m(*self.inputs)
        except Exception:  # any failure means "this subset breaks the model's code"
            return False
        return [t.shape for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)] == self.shapes


def _only(plan: PruningPlan, idx: Sequence[int]) -> PruningPlan:
    chosen = set(idx)
    groups = tuple(g if i in chosen else keep_all(g) for i, g in enumerate(plan.groups))
    return dataclasses.replace(plan, groups=groups)


def keep_all(g: GroupPlan) -> GroupPlan:
    """``g`` with every channel kept."""
    return dataclasses.replace(g, keep=tuple(range(g.size)))


def repair(
    model: nn.Module, plan: PruningPlan, example_inputs: Sequence[Any], output_shapes: list[tuple[int, ...]]
) -> tuple[PruningPlan, list[str]]:
    """Return ``plan`` with the groups that break the model's forward kept whole, and their names.

    Models whose forward cannot run on the meta device are returned unchanged (the real
    surgery still checks its result).
    """
    prober = _Prober(model, example_inputs, list(output_shapes))
    active = [i for i, g in enumerate(plan.groups) if len(g.keep) < g.size]
    if not active or prober.ok(plan):
        return plan, []
    if not prober.ok(_only(plan, [])):
        return plan, []  # the model does not run on meta tensors: nothing to learn here
    bad: list[int] = []

    def search(idx: list[int]) -> None:
        if not idx:
            return
        if prober.ok(_only(plan, [i for i in active if i not in bad and (i in idx or i < idx[0])])):
            return
        if len(idx) == 1:
            bad.append(idx[0])
            return
        mid = len(idx) // 2
        search(idx[:mid])
        search(idx[mid:])

    for _ in range(3):  # culprits that only fail together are caught on a later round
        search(active)
        remaining = [i for i in active if i not in bad]
        if prober.ok(_only(plan, remaining)):
            break
    else:
        bad = active
    fixed = tuple(keep_all(g) if i in set(bad) else g for i, g in enumerate(plan.groups))
    return dataclasses.replace(plan, groups=fixed), [plan.groups[i].name for i in bad]


def heads_compute_the_same(model: nn.Module, plan: PruningPlan, example_inputs: Sequence[Any]) -> bool:
    """Whether removing the plan's attention heads equals zeroing them in the original (the oracle).

    A module rule patches head counts, but an attention module may also read a head count from
    somewhere the rule does not know (``self.config.num_attention_heads`` with a ``-1`` width):
    shapes then still fit and the heads are silently regrouped. So the plan's head groups alone
    are applied to one copy, the same heads are zeroed in another (every tensor position they
    occupy), and both run on the example inputs. Plans without head groups pass unchanged.
    """
    heads = [i for i, g in enumerate(plan.groups) if g.unit == "heads" and len(g.keep) < g.size]
    if not heads:
        return True
    pruned, masked = copy.deepcopy(model), copy.deepcopy(model)
    state = dict(masked.state_dict(keep_vars=True))
    with torch.no_grad():
        for i in heads:
            g = plan.groups[i]
            gone = torch.ones(g.size, dtype=torch.bool)
            gone[list(g.keep)] = False
            for m in g.members:
                pos = torch.as_tensor(m.positions)[gone[torch.as_tensor(m.channels)]]
                state[m.tensor].index_fill_(m.dim, pos.to(state[m.tensor].device), 0.0)
    try:
        apply_plan(pruned, _only(plan, heads))
        with eval_mode(pruned), eval_mode(masked), torch.no_grad():
            got = [t for t in tree_flatten(pruned(*example_inputs))[0] if isinstance(t, torch.Tensor)]
            want = [t for t in tree_flatten(masked(*example_inputs))[0] if isinstance(t, torch.Tensor)]
    except Exception:  # a forward that fails is not the same computation
        return False
    return len(got) == len(want) and all(
        a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4)
        for a, b in zip(got, want, strict=True)
    )
