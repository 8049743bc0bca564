"""Allocation: how a budget is split. Sensitivity allocation gives per-group ratios that meet a
budget with the least predicted loss; OWL (:func:`owl_sparsities`) gives a language model's
decoder layers their sparsities from their shares of outlier scores.

A sensitivity analysis measured, for each group, the metric after pruning that group alone at a
few ratios. The predicted loss of a group at ratio ``r`` is the measured drop interpolated
linearly between those points (0 at ratio 0, made non-decreasing, never extrapolated past the
largest ratio measured); the predicted loss of a plan is the sum over its groups. Starting from
nothing removed, the allocator repeatedly takes the step (one group, ``step`` more of its
channels) that buys the most cost reduction per point of predicted loss, until the cost (MACs or
parameters, estimated from the trace) is at most the goal. No framework here: the cost is a
callable on kept indices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cuttree.errors import PlanError

Curve = Sequence[tuple[float, float]]  #: (ratio, metric drop in points) pairs, as measured


def predicted_drop(curve: Curve, ratio: float) -> float:
    """The drop at ``ratio``, interpolated on ``curve`` (0 at ratio 0, non-decreasing).

    >>> predicted_drop([(0.5, 2.0), (0.25, -0.5)], 0.375)
    1.0
    >>> predicted_drop([(0.5, 2.0)], 0.75) == math.inf  # never extrapolated
    True
    """
    pts = sorted([(0.0, 0.0), *((float(r), float(d)) for r, d in curve)])
    rs = np.array([p[0] for p in pts])
    ds = np.maximum.accumulate(np.maximum(np.array([p[1] for p in pts]), 0.0))
    if ratio > rs[-1] + 1e-9:
        return math.inf
    return float(np.interp(ratio, rs, ds))


def allocate(
    names: Sequence[str],
    keeps_at: Callable[[Sequence[float]], list[np.ndarray]],
    curves: Mapping[str, Curve],
    cost: Callable[[list[np.ndarray]], float],
    goal: float,
    step: float = 0.05,
) -> tuple[list[float], float]:
    """Per-group ratios and the predicted total drop. ``keeps_at(ratios)`` is what each group
    keeps at those ratios (the planner's own selection, rounding included); a group without a
    curve is kept whole.

    >>> keeps_at = lambda rs: [np.arange(math.floor(r * 4), 4) for r in rs]
    >>> cost = lambda keeps: sum(len(k) for k in keeps)
    >>> curves = {"a": [(0.5, 4.0), (0.75, 9.0)], "b": [(0.5, 0.5), (0.75, 1.0)]}
    >>> allocate(["a", "b"], keeps_at, curves, cost, goal=4, step=0.25)
    ([0.25, 0.75], 3.0)
    """
    ratios = [0.0] * len(names)
    limit = [max((r for r, _ in curves.get(n, ())), default=0.0) for n in names]
    now = cost(keeps_at(ratios))
    while now > goal:
        best: tuple[float, int, float, float] | None = None
        for i, n in enumerate(names):
            # the next ratio, in steps of ``step``, that removes at least one more channel
            r, after = ratios[i], now
            while after >= now and r < limit[i] - 1e-12:
                r = min(r + step, limit[i])
                after = cost(keeps_at([*ratios[:i], r, *ratios[i + 1 :]]))
            if after >= now:
                continue
            loss = predicted_drop(curves[n], r) - predicted_drop(curves[n], ratios[i])
            value = (now - after) / max(loss, 1e-6)
            if best is None or value > best[0]:
                best = (value, i, r, after)
        if best is None:
            raise PlanError(
                f"the sensitivity allocation cannot reach the budget: pruning every group up to the largest ratio "
                f"measured still costs {now / max(goal, 1e-9):.2f}× the goal; measure larger ratios "
                "(sensitivity ratios up to 0.9) or relax the target"
            )
        _, i, ratios[i], now = best
    return ratios, sum(predicted_drop(curves[n], r) for n, r in zip(names, ratios, strict=True) if n in curves)


def outlier_ratio(scores: Sequence[np.ndarray], m: float) -> float:
    """OWL's layer-wise outlier share: the fraction of ``scores`` (all of one decoder layer's
    Wanda scores |w|·‖x‖, pooled) above ``m`` times their mean.

    >>> outlier_ratio([np.array([1.0, 1.0, 1.0]), np.array([9.0])], 2.0)
    0.25
    """
    flat = np.concatenate([np.ravel(s) for s in scores]).astype(np.float64)
    return float(np.mean(flat > m * flat.mean()))


def owl_sparsities(outliers: Sequence[float], ratio: float, spread: float) -> list[float]:
    """Per-layer sparsities from the layers' outlier shares (OWL, Yin et al. 2023): mapped
    linearly onto ``ratio + spread`` (fewest outliers) … ``ratio - spread`` (most), then shifted
    so that their mean is ``ratio``; all equal where the shares are.

    >>> [round(s, 4) for s in owl_sparsities([0.01, 0.03, 0.02], 0.5, 0.08)]
    [0.58, 0.42, 0.5]
    >>> owl_sparsities([0.02, 0.02], 0.5, 0.08)
    [0.5, 0.5]
    """
    d = np.asarray(outliers, dtype=np.float64)
    if d.size == 0 or d.max() == d.min():
        return [float(ratio)] * d.size
    kept_more = (d - d.min()) / (d.max() - d.min()) * 2.0 * spread
    return [float(s) for s in ratio - (kept_more - kept_more.mean())]
