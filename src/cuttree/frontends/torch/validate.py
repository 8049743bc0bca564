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

from cuttree.core.plan import HEAD_UNITS, GroupPlan, PruningPlan
from cuttree.frontends.torch.attention import supported
from cuttree.frontends.torch.rules import counts_heads
from cuttree.frontends.torch.surgery import apply_plan
from cuttree.frontends.torch.util import eval_mode, removing


def _meta_copy(model: nn.Module) -> nn.Module:
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _to_meta(x: Any) -> Any:
    return torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x


class _Prober:
    def __init__(
        self, model: nn.Module, example_inputs: Sequence[Any], shapes: list[tuple[int, ...]], train: bool = False
    ) -> None:
        self.model = model
        self.inputs = tree_map(_to_meta, tuple(example_inputs))
        self.shapes = shapes
        self.train = train
        self.probes = 0

    def ok(self, plan: PruningPlan) -> bool:
        self.probes += 1
        m = _meta_copy(self.model)
        try:
            apply_plan(m, plan)
            out = _run(m, self.inputs, self.train)
        except Exception:  # any failure means "this subset breaks the model's code"
            return False
        return _shapes(out) == self.shapes


def _run(m: nn.Module, inputs: Sequence[Any], train: bool) -> Any:
    with eval_mode(m), torch.no_grad():
        if train:
            m.train()
            inputs = tree_map(_batch_of_two, tuple(inputs))  # batch norm trains on more than one sample
        return m(*inputs)


def _batch_of_two(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == 1:
        return torch.empty((2, *x.shape[1:]), dtype=x.dtype, device=x.device)
    return x


def _shapes(out: Any) -> list[Any]:
    return [t.shape for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def train_output_shapes(model: nn.Module, example_inputs: Sequence[Any]) -> list[Any] | None:
    """The unpruned model's output shapes in training mode, on a shape-only copy; ``None`` if its
    forward cannot run on meta tensors."""
    try:
        return _shapes(_run(_meta_copy(model), tree_map(_to_meta, tuple(example_inputs)), train=True))
    except Exception:
        return None


def _only(plan: PruningPlan, idx: Sequence[int]) -> PruningPlan:
    chosen = set(idx)
    groups = tuple(g if i in chosen else keep_all(g) for i, g in enumerate(plan.groups))
    return dataclasses.replace(plan, groups=groups)


def keep_all(g: GroupPlan) -> GroupPlan:
    """``g`` with every channel kept."""
    return dataclasses.replace(g, keep=tuple(range(g.size)))


def repair(
    model: nn.Module,
    plan: PruningPlan,
    example_inputs: Sequence[Any],
    output_shapes: list[tuple[int, ...]],
    train: bool = False,
) -> tuple[PruningPlan, list[str]]:
    """Return ``plan`` with the groups that break the model's forward kept whole, and their names.

    ``train`` checks the training-mode forward instead (layers that run only in training, such
    as auxiliary classifiers). Models whose forward cannot run on the meta device are returned
    unchanged (the real surgery still checks its result).
    """
    prober = _Prober(model, example_inputs, list(output_shapes), train)
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
    shapes then still fit and the heads are silently regrouped. So each attention module with
    heads to remove is checked on its own: the inputs it received in one forward pass of the
    model are fed to a copy with its heads removed and to a copy with the same heads zeroed
    (every position they occupy). Groups that reach outside one attention module are checked on
    copies of the whole model. Plans without head groups pass unchanged.
    """
    heads = [g for g in plan.groups if g.unit in HEAD_UNITS and len(g.keep) < g.size]
    if not heads:
        return True
    modules = dict(model.named_modules())
    attention = [n for n, m in modules.items() if n and (counts_heads(m) or supported(m))]
    local: dict[str, list[GroupPlan]] = {}
    rest: list[GroupPlan] = []
    for g in heads:
        owner = next(  # the innermost attention module holding every tensor of the group
            (
                n
                for n in sorted(attention, key=len, reverse=True)
                if all(m.tensor.startswith(n + ".") for m in g.members)
            ),
            None,
        )
        if owner is None:
            rest.append(g)
        else:
            local.setdefault(owner, []).append(g)
    try:
        inputs = _inputs_of(model, list(local), example_inputs)
        for name, groups in local.items():
            args, kwargs = inputs[name]
            if not _same(modules[name], _relative(plan, groups, name + "."), args, kwargs):
                return False
        return not rest or _same(model, dataclasses.replace(plan, groups=tuple(rest)), tuple(example_inputs), {})
    except Exception:  # a forward that fails is not the same computation
        return False


def _inputs_of(model: nn.Module, names: list[str], example_inputs: Sequence[Any]) -> dict[str, tuple[Any, Any]]:
    """The (args, kwargs) each named module received the first time it ran on ``example_inputs``."""
    seen: dict[str, tuple[Any, Any]] = {}
    modules = dict(model.named_modules())

    def grab(name: str) -> Any:
        def hook(m: nn.Module, args: Any, kwargs: Any) -> None:
            if name not in seen:  # a copy as it was then: a KV cache among the kwargs fills up as the model runs
                seen[name] = _copied((args, kwargs))

        return hook

    handles = [modules[n].register_forward_pre_hook(grab(n), with_kwargs=True) for n in names]
    with removing(handles), eval_mode(model), torch.no_grad():
        model(*example_inputs)
    return seen


def _copied(x: Any) -> Any:
    """A deep copy of a module's call arguments where they allow it (caches, masks), else ``x`` itself."""
    try:
        return copy.deepcopy(x)
    except Exception:  # an argument that cannot be copied is passed as it is
        return x


def _relative(plan: PruningPlan, groups: list[GroupPlan], prefix: str) -> PruningPlan:
    """``groups`` with their tensor names made relative to the module at ``prefix``."""
    moved = tuple(
        dataclasses.replace(g, members=tuple(dataclasses.replace(m, tensor=m.tensor[len(prefix) :]) for m in g.members))
        for g in groups
    )
    shapes = {k[len(prefix) :]: v for k, v in plan.shapes.items() if k.startswith(prefix)}
    return dataclasses.replace(plan, groups=moved, shapes=shapes)


def zeroed(module: nn.Module, plan: PruningPlan) -> nn.Module:
    """A copy of ``module`` with every position the plan removes set to zero: what removing whole
    heads must compute (their values are zero, so their outputs are), the oracle of the tests.

    >>> import numpy as np
    >>> from cuttree.core.plan import GroupPlan, Member
    >>> lin = torch.nn.Linear(2, 3)
    >>> rows = Member("weight", 0, np.arange(3), np.arange(3))
    >>> w = zeroed(lin, PruningPlan(groups=(GroupPlan("l", 3, (0, 2), (rows,)),))).weight
    >>> [float(r.abs().sum()) == 0.0 for r in w]
    [False, True, False]
    """
    masked = copy.deepcopy(module)
    state = {**dict(masked.named_buffers()), **dict(masked.state_dict(keep_vars=True))}  # non-persistent buffers too
    with torch.no_grad():
        for g in plan.groups:
            gone = torch.ones(g.size, dtype=torch.bool)
            gone[list(g.keep)] = False
            for m in g.members:
                pos = torch.as_tensor(m.positions)[gone[torch.as_tensor(m.channels)]]
                state[m.tensor].index_fill_(m.dim, pos.to(state[m.tensor].device), 0.0)
    return masked


def _same(module: nn.Module, plan: PruningPlan, args: Any, kwargs: Any) -> bool:
    """``module`` with ``plan``'s channels removed computes what it does with them zeroed."""
    pruned, masked = copy.deepcopy(module), zeroed(module, plan)
    apply_plan(pruned, plan)
    with eval_mode(pruned), eval_mode(masked), torch.no_grad():
        a, k = _copied((args, kwargs))
        got = [t for t in tree_flatten(pruned(*a, **k))[0] if isinstance(t, torch.Tensor)]
        a, k = _copied((args, kwargs))
        want = [t for t in tree_flatten(masked(*a, **k))[0] if isinstance(t, torch.Tensor)]
    # the first output is the attention's result; later ones (per-head weights) change shape by design
    return (
        bool(got and want)
        and got[0].shape == want[0].shape
        and torch.allclose(got[0].float(), want[0].float(), rtol=1e-3, atol=1e-4)
    )
