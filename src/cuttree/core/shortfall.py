"""When a plan removes less than its config asks: why, and what to change.

A ratio or a threshold can select nothing (a threshold below every channel's score, a ratio under
one channel of every group), ``min_channels`` and ``round_to`` can give back what a ratio takes,
and a frontend's checks on the model's code can keep whole what the plan would shrink. The
planner records the reason in the plan (``plan.budget["shortfall"]``); the frontends warn with it,
the result's table says "nothing pruned", and the command line refuses to write a model that
nothing was removed from (:func:`refuse_noop`). A budget of MACs or parameters is met by a search
that fails when it cannot be, so it never falls short this way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cuttree.config import Config
from cuttree.core.budget import GroupBudget, _n_threshold, removed_by_ratio
from cuttree.core.grouping import DependencyGraph
from cuttree.core.plan import PruningPlan
from cuttree.errors import PlanError


def shortfall(
    graph: DependencyGraph,
    config: Config,
    budgets: Sequence[GroupBudget],
    scores: Sequence[np.ndarray],
    keeps: Sequence[np.ndarray],
) -> str | None:
    """Why a ratio or threshold removed nothing, or less than half the channels it asks for, with
    the fix; ``None`` when it removed what it asked (or asked nothing: ``ratio: 0``).

    A budget of MACs or parameters is met by a search that fails when it cannot be, so only
    ``ratio``, ``head_ratio`` and ``threshold`` fall short this way: a threshold below every
    channel's score, a ratio under one channel of every group, or ``min_channels`` and
    ``round_to`` giving back what the ratio takes.

    >>> from cuttree.core.grouping import Group
    >>> g = DependencyGraph([Group("conv", 4, (), ())], {}, [], np.zeros(0, dtype=np.int64), {}, [], {}, 0.0, [])
    >>> b = GroupBudget(None, 0.5, 1, 1, False)
    >>> print(shortfall(g, Config(threshold=0.5), [b], [np.array([4.0, 5.0, 4.5, 5.0])], [np.arange(4)]))
    nothing pruned: threshold=0.5 selects no channel, the weakest channel of any group scoring 0.80 of its group's best ('conv'); lower threshold below 0.80 or add a budget such as ratio: 0.3
    """
    if config.method != "structured" or not graph.groups:
        return None
    sizes = [g.size for g in graph.groups]
    removed = sum(n - len(k) for n, k in zip(sizes, keeps, strict=True))
    by_ratio = removed_by_ratio(sizes, budgets)
    asked = sum(max(r, _n_threshold(s, b.threshold)) for r, b, s in zip(by_ratio, budgets, scores, strict=True))
    if removed == 0 and asked == 0:
        if not any(b.ratio for b in budgets) and all(b.threshold is None for b in budgets):
            return None  # asked for nothing (ratio: 0)
        causes, fixes = [], []
        with_threshold = [(s, g.name) for g, b, s in zip(graph.groups, budgets, scores, strict=True) if b.threshold]
        if with_threshold:
            weakest, name = min((float(s.min() / s.max()) if s.max() > 0 else 1.0, n) for s, n in with_threshold)
            t = config.threshold if config.threshold is not None else "per layer"
            causes.append(
                f"threshold={t} selects no channel, the weakest channel of any group scoring {weakest:.2f} "
                f"of its group's best ('{name}')"
            )
            fixes.append(f"lower threshold below {weakest:.2f}")
        if any(b.ratio for b in budgets):
            n, name = max((n, g.name) for g, n, b in zip(graph.groups, sizes, budgets, strict=True) if b.ratio)
            causes.append(f"ratio={config.ratio} is under one channel of every group (the largest, '{name}', has {n})")
            fixes.append(f"raise ratio to at least {math.ceil(1000 / n) / 1000}")
        elif with_threshold:
            fixes.append("add a budget such as ratio: 0.3")
        return f"nothing pruned: {' and '.join(causes)}; {' or '.join(fixes)}"
    if removed >= asked / 2:
        return None
    held = [f"min_channels={config.min_channels}"] if config.min_channels > 1 else []
    if any(b.round_to > 1 for b in budgets):
        held.append(
            f"round_to={config.round_to} (rounding kept counts up to a multiple of {max(b.round_to for b in budgets)})"
        )
    what = " and ".join(held) or "the groups' sizes"
    fix = "lower min_channels or set round_to: 1" if held else "raise the ratio"
    head = "nothing pruned" if removed == 0 else f"pruned only {removed} of the {asked} channels the budget asks for"
    return f"{head}: {what} keep them; {fix}"


def refuse_noop(plan: PruningPlan, fix: str) -> None:
    """Raise :class:`PlanError` if a structured plan removes nothing, with its reason and ``fix``
    (what the caller offers to accept it anyway: the CLI's ``--allow-noop``)."""
    if plan.config.get("method", "structured") != "structured" or not plan.removes_nothing:
        return
    why = shortfall_warning(plan) or "nothing pruned: no channel of this model can be pruned (see the warning above)"
    raise PlanError(f"{why}; no file written ({fix})")


def shortfall_warning(plan: PruningPlan) -> str | None:
    """The warning a frontend gives for a final plan (after its checks) that removes nothing or
    less than asked: the planner's reason (``plan.budget["shortfall"]``), or, when the planner's
    plan did remove channels, that the checks kept them; ``None`` when the plan did what it was
    asked or was asked nothing."""
    if (short := plan.budget.get("shortfall")) is not None:
        return str(short)
    cfg = plan.config
    asked = (
        cfg.get("ratio")
        or cfg.get("head_ratio")
        or any(cfg.get(k) is not None for k in ("threshold", "macs_target", "params_target", "latency_target"))
    )
    if plan.groups and asked and cfg.get("method", "structured") == "structured" and plan.removes_nothing:
        return (
            "nothing pruned: every group that the budget would shrink was kept whole by the checks warned about "
            "above; follow their advice, or name the layers involved in 'ignore' and prune the rest"
        )
    return None
