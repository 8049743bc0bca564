"""Decide what to remove: budgets per group, scores, selection, and the plan (no framework here).

Both frontends call :func:`decide` with their dependency graph and the criterion's inputs as
numpy arrays; what comes back is the same :class:`~cuttree.core.plan.PruningPlan`, tagged with
the frontend and its weight layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cuttree.config import Config, LayerOverride
from cuttree.core.allocate import Curve, allocate
from cuttree.core.budget import (
    GroupBudget,
    _with_ratio,
    estimate_macs,
    estimate_params,
    search,
    select,
    uniform_keeps,
)
from cuttree.core.grouping import DependencyGraph, Group
from cuttree.core.importance import scorer, used_criterion
from cuttree.core.plan import DEPTH_UNIT, HEAD_UNITS, GroupPlan, PruningPlan
from cuttree.core.shortfall import shortfall
from cuttree.errors import PlanError, did_you_mean

if TYPE_CHECKING:
    from cuttree.core.sensitivity import Sensitivity


def decide(
    graph: DependencyGraph,
    config: Config,
    overrides: dict[str, list[str]],
    weights: Mapping[str, np.ndarray],
    extra: Mapping[str, np.ndarray],
    framework: str,
    layout: str,
    params_total: int | None = None,
    curves: Mapping[str, Curve] | None = None,
) -> PruningPlan:
    """Score every group with ``config.criterion``, choose what each keeps, and return the plan.

    ``params_total`` (the model's parameter count) is needed by ``params_target``; ``curves``
    (group → measured (ratio, metric drop) pairs, from a sensitivity analysis) by
    ``allocation: sensitivity``.
    """
    if config.latency_target is not None:
        raise PlanError(
            "latency_target is met by measuring pruned candidates, which planning alone cannot do: "
            "use cuttree.prune (or cuttree prune / run), or set macs_target"
        )
    budgets = group_budgets(graph, config, overrides)
    score_fn = scorer(config.criterion)
    scores = [
        block_scores(g, extra) if g.unit == DEPTH_UNIT else score_fn(g, weights, extra, config.seed)
        for g in graph.groups
    ]
    names = [g.name for g in graph.groups]
    cost, full, what, target = _cost(graph, config, weights, params_total)
    allocation: dict[str, Any] | None = None
    if config.allocation == "sensitivity":
        keeps, allocation = _by_sensitivity(graph, config, scores, budgets, curves, cost, full, target)
    elif target is not None:
        keeps = search(graph, scores, budgets, target, config.scope == "global", cost, full, what, config.uniform)
    else:
        keeps = select(names, scores, budgets, config.ratio if config.scope == "global" else None)
        keeps = uniform_keeps(graph, scores, keeps, budgets) if config.uniform else keeps
    plan = PruningPlan(
        groups=tuple(
            GroupPlan(
                g.name,
                g.size,
                tuple(int(k) for k in keep),
                g.members,
                BLOCK_CRITERION if g.unit == DEPTH_UNIT else used_criterion(config.criterion, g, extra),
                g.unit,
            )
            for g, keep in zip(graph.groups, keeps, strict=True)
        ),
        shapes={n: graph.shapes[n] for g in graph.groups for n in {m.tensor for m in g.members}},
        macs_before=graph.macs,
        config=config.to_dict(),
        framework=framework,
        layout=layout,
    )
    plan = dataclasses.replace(plan, macs_after=estimate(graph, plan))
    note = dict(allocation or {})
    if target is None and (short := shortfall(graph, config, budgets, scores, keeps)) is not None:
        note["shortfall"] = short
    if note:
        plan = dataclasses.replace(plan, budget=note)
    return plan


@dataclass(frozen=True)
class PlanningInputs:
    """What planning reads from a model, traced and scored once by a frontend: the graph, the
    per-layer overrides, the criterion's inputs (numpy), the parameter count, and the frontend's
    name and weight layout. Several plans of one model share it (the sensitivity analysis plans
    once per ratio)."""

    graph: DependencyGraph
    overrides: dict[str, list[str]]
    weights: Mapping[str, np.ndarray]
    extra: Mapping[str, np.ndarray]
    params_total: int
    framework: str
    layout: str

    def decide(self, config: Config, sensitivity: Sensitivity | None = None) -> PruningPlan:
        """The plan for ``config`` (its ``layers`` and criterion as traced); ``sensitivity`` (a
        :class:`cuttree.core.sensitivity.Sensitivity`) is what ``allocation: sensitivity`` needs."""
        curves = sensitivity.curves() if sensitivity is not None else None
        return decide(
            self.graph,
            config,
            self.overrides,
            self.weights,
            self.extra,
            self.framework,
            self.layout,
            self.params_total,
            curves,
        )


def _cost(
    graph: DependencyGraph, config: Config, weights: Mapping[str, np.ndarray], params_total: int | None
) -> tuple[Callable[[Sequence[np.ndarray]], int], int, str, float | None]:
    """The budget's cost of a choice of kept channels, the unpruned cost, its name and the target."""
    if config.params_target is not None:
        if params_total is None:
            raise PlanError("params_target needs the model's parameter count; this frontend does not give it")
        params = set(weights)
        return (
            lambda k: estimate_params(graph, k, params, params_total),
            params_total,
            "params",
            config.params_target,
        )
    return (lambda k: estimate_macs(graph, k)), graph.macs, "macs", config.macs_target


def _by_sensitivity(
    graph: DependencyGraph,
    config: Config,
    scores: Sequence[np.ndarray],
    budgets: Sequence[GroupBudget],
    curves: Mapping[str, Curve] | None,
    cost: Callable[[Sequence[np.ndarray]], int],
    full: int,
    target: float | None,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    if curves is None:
        raise PlanError(
            "allocation: sensitivity needs a sensitivity analysis of this model: pass sensitivity= "
            "(cuttree.sensitivity(...)) or run `cuttree sensitivity` first; or set allocation: uniform"
        )
    if target is None:
        raise PlanError("allocation: sensitivity needs a budget to allocate: set macs_target or params_target")
    names = [g.name for g in graph.groups]
    known = [n for n in names if n in curves]
    if not known:
        raise PlanError(
            f"the sensitivity analysis names none of this model's {len(names)} groups (e.g. '{names[0]}'); "
            "it was made for another model or other settings: run it again on this one"
        )

    def keeps_at(rs: Sequence[float]) -> list[np.ndarray]:
        return select(names, scores, [_with_ratio(b, r) for b, r in zip(budgets, rs, strict=True)], None)

    ratios, loss = allocate(names, keeps_at, curves, cost, target * full)
    return keeps_at(ratios), {
        "allocation": "sensitivity",
        "target": target,
        "predicted_drop": round(loss, 4),
        "ratios": {n: round(r, 4) for n, r in zip(names, ratios, strict=True)},
        "groups_without_curve": [n for n in names if n not in curves],
    }


_WHY = {  # why a layer's output channels stay (the ``protected`` reasons of a graph)
    "output": "a model output",
    "fixed": "a fixed size in the model's code",
    "op": "an operation cuttree cannot prune through",
    "ignored": "'ignore'",
    "unused": "never reached by the trace",
}


def nothing_prunable(graph: DependencyGraph, config: Config) -> str | None:
    """The warning for a config that asks for structured pruning of a model whose trace left no
    channel group to prune (every channel pinned), or ``None``.

    >>> from cuttree.core.grouping import DependencyGraph, Group
    >>> g = DependencyGraph([], {"conv": "op", "fc": "output"}, [], np.zeros(0, dtype=np.int64), {}, [], {}, 0.0, [])
    >>> print(nothing_prunable(g, Config(ratio=0.5)))  # doctest: +NORMALIZE_WHITESPACE
    nothing in this model can be pruned, so it is returned unchanged: every layer's output channels are
    pinned (conv: an operation cuttree cannot prune through; fc: a model output); run `cuttree layers`
    for each layer's reason, and register a rule for the layer or operation involved
    """
    if config.method != "structured" or graph.groups:
        return None
    targets = (config.threshold, config.macs_target, config.params_target, config.latency_target)
    if not (config.ratio or config.head_ratio or any(t is not None for t in targets)):
        return None
    by_reason: dict[str, list[str]] = {}
    for layer, why in graph.protected.items():
        by_reason.setdefault(why, []).append(layer)
    parts = [
        f"{', '.join(layers[:2])}{f' and {len(layers) - 2} more' if len(layers) > 2 else ''}: {_WHY.get(why, why)}"
        for why, layers in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))
    ]
    if by_reason.keys() - {"output", "ignored"}:
        fix = "run `cuttree layers` for each layer's reason, and register a rule for the layer or operation involved"
    elif "ignored" in by_reason:
        fix = "take layers out of 'ignore'"
    else:
        fix = "the model has no channels besides its outputs'"
    return (
        "nothing in this model can be pruned, so it is returned unchanged: every layer's output channels are pinned "
        f"({'; '.join(parts) or 'no layer with channels was traced'}); {fix}"
    )


BLOCK_CRITERION = "block_influence"  #: what scores whole layers, whatever ``criterion`` scores channels with


def block_scores(group: Group, extra: Mapping[str, np.ndarray]) -> np.ndarray:
    """A depth group's scores: each block's influence on the calibration data, 1 − cos(input,
    output) averaged over tokens (ShortGPT), from the frontend (``extra["<stack>#influence"]``)."""
    key = f"{group.name}#influence"
    if key not in extra:
        raise PlanError(
            f"units: layers scores the blocks of '{group.name}' by their influence on calibration data, and none was "
            "given; pass calib_data (calibration text) or drop layers from units"
        )
    return np.asarray(extra[key], dtype=np.float64)


def estimate(graph: DependencyGraph, plan: PruningPlan) -> int:
    """MACs after ``plan``, from the graph's MAC terms."""
    return estimate_macs(graph, [np.asarray(g.keep, dtype=np.int64) for g in plan])


def group_budgets(graph: DependencyGraph, cfg: Config, overrides: dict[str, list[str]]) -> list[GroupBudget]:
    owners: dict[str, list[int]] = {}  # a grouped conv owns its whole-groups group and its width group
    for i, g in enumerate(graph.groups):
        for owner in g.owners:
            owners.setdefault(owner, []).append(i)
    per_group: dict[int, LayerOverride] = {}
    for pattern, hits in overrides.items():
        idx = {i for h in hits if h in owners for i in owners[h]}
        if not idx:
            why = {graph.protected[h] for h in hits if h in graph.protected}
            if "output" in why:
                raise PlanError(
                    f"layers: '{pattern}' produces a model output, which mode={cfg.mode} never prunes; "
                    f"remove '{pattern}' from 'layers'"
                )
            raise PlanError(
                f"layers: '{pattern}' has no prunable output channels ({', '.join(sorted(why)) or 'coupled to fixed shapes'}); "
                f"remove '{pattern}' from 'layers' or name a layer that `cuttree layers` lists as prunable"
            )
        for i in idx:
            per_group[i] = cfg.layers[pattern]
    out = []
    for i, g in enumerate(graph.groups):
        o = per_group.get(i)
        if g.unit not in cfg.pruned_units:  # ``units`` leaves this kind whole
            out.append(GroupBudget(0.0, None, g.size, 1, False))
            continue
        ratio = o.ratio if o is not None and o.ratio is not None else cfg.ratio
        heads = g.unit in HEAD_UNITS and cfg.head_ratio is not None and (o is None or o.ratio is None)
        if heads:
            ratio = cfg.head_ratio
        out.append(
            GroupBudget(
                ratio=ratio,
                threshold=o.threshold if o is not None and o.threshold is not None else cfg.threshold,
                min_channels=o.min_channels if o is not None and o.min_channels is not None else cfg.min_channels,
                round_to=round_to(cfg.round_to, g.unit, g.size, cfg.target),
                in_global_pool=cfg.scope == "global"
                and (o is None or o.ratio is None)
                and not heads
                and (cfg.ratio is not None or cfg.macs_target is not None or cfg.params_target is not None),
                nearest=g.unit in (*HEAD_UNITS, DEPTH_UNIT),
            )
        )
    return _crossing_heads(graph, out, per_group)


def _crossing_heads(
    graph: DependencyGraph, budgets: list[GroupBudget], overrides: dict[int, LayerOverride]
) -> list[GroupBudget]:
    """Pair each key/value heads group with its ``:query_heads`` group (grouped-query attention)
    so that the two share one head budget (:func:`cuttree.core.budget.head_counts`); a per-layer
    ratio on either keeps them apart."""
    index = {g.name: i for i, g in enumerate(graph.groups)}
    for j, g in enumerate(graph.groups):
        i = index.get(g.name.removesuffix(":query_heads"), -1) if g.unit == "query heads" else -1
        if (
            i < 0
            or graph.groups[i].unit != "heads"
            or any(k in overrides and overrides[k].ratio is not None for k in (i, j))
        ):
            continue
        budgets[i] = dataclasses.replace(budgets[i], crosses=j)
        budgets[j] = dataclasses.replace(budgets[j], crosses=i)
    return budgets


AUTO_ROUND_MIN = 64  #: the smallest channel group that ``round_to: auto`` rounds
TARGET_BLOCKS = {"generic": 8, "avx2": 8, "avx512": 16, "cuda": 8}  #: ``target`` → channel block


def channel_block(target: str = "generic") -> int:
    """The channel count the kernels of a deployment ``target`` work in blocks of.

    ONNX Runtime's NCHWc convolutions and oneDNN's blocked layouts take a fast path only when a
    convolution's channel counts are multiples of the CPU's vector block: 16 floats with AVX-512,
    8 with AVX2; GPU tensor cores want multiples of 8 in half precision. Elsewhere the kernels
    reorder the data in and out of the blocked layout around the layer. ``generic`` is 8, a
    multiple of every block but AVX-512's; ``this-machine`` is the only value that reads the CPU
    cuttree runs on (:func:`host_channel_block`).

    >>> channel_block("avx512"), channel_block("avx2"), channel_block("generic"), channel_block("cuda")
    (16, 8, 8, 8)
    >>> channel_block("this-machine") in (8, 16)
    True
    """
    if target == "this-machine":
        return host_channel_block()
    try:
        return TARGET_BLOCKS[target]
    except KeyError:
        raise ValueError(
            f"target '{target}' is not known{did_you_mean(target, TARGET_BLOCKS)}; "
            f"use one of {', '.join(TARGET_BLOCKS)} or this-machine"
        ) from None


def host_channel_block() -> int:
    """16 when the CPU running this code has AVX-512, else 8 (``target: this-machine``)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # pragma: no cover - numpy < 2 or another build
        return 8
    return 16 if __cpu_features__.get("AVX512F") else 8


def round_to(setting: int | str, unit: str, size: int, target: str = "generic") -> int:
    """The multiple a group's kept count is rounded up to.

    ``auto`` rounds channel groups of at least :data:`AUTO_ROUND_MIN` channels to the
    ``target``'s :func:`channel_block` (a step is then at most a quarter of the group), and leaves
    smaller groups, attention heads and conv groups free: rounding a 16- or 32-channel group to a
    block would keep it whole, and budgets such as half the MACs of a CIFAR ResNet would be out of
    reach.

    >>> round_to("auto", "channels", 256), round_to("auto", "channels", 256, "avx512")
    (8, 16)
    >>> round_to("auto", "channels", 32), round_to("auto", "heads", 96), round_to(4, "channels", 32)
    (1, 1, 4)
    """
    if setting == "auto":
        return channel_block(target) if unit == "channels" and size >= AUTO_ROUND_MIN else 1
    return int(setting)


def __getattr__(name: str) -> Any:  # names this module held before cuttree.core.names
    from cuttree import _aliases

    return _aliases.old_name(__name__, name)
