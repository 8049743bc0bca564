"""The flow, written once over a :class:`~cuttree.core.frontend.Frontend`: trace → score → plan
→ apply → measure, and the sensitivity analysis.

Decide, then do: the plan is made without touching the model (``make_plan``); surgery comes
after, on a copy unless the caller asks for ``inplace``, then the figures. ``cuttree.prune`` and
``cuttree.keras.prune`` are these functions with their frontend filled in.

>>> import torch, cuttree
>>> from cuttree.core.frontend import frontend_named
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
>>> r = prune(frontend_named("torch"), net, cuttree.Config(ratio=0.5, latency_runs=0), (torch.randn(1, 3, 8, 8),))
>>> r.model[0].out_channels, r.plan.framework
(4, 'torch')
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cuttree.config import Config
from cuttree.core.frontend import Frontend, Inputs, Model
from cuttree.core.grouping import DependencyGraph
from cuttree.core.plan import PruningPlan
from cuttree.core.planner import estimate, nothing_prunable
from cuttree.core.results import PruneResult, SparsifyResult
from cuttree.core.sensitivity import (
    DEFAULT_RATIOS,
    SINGLE_GROUP,
    Sensitivity,
    cache_root,
    cached,
    check_ratios,
    measure_groups,
)
from cuttree.core.shortfall import shortfall_warning
from cuttree.errors import SurgeryError, warn


def _checked_config(config: object) -> Config:
    if not isinstance(config, Config):
        raise TypeError(f"config must be a cuttree.Config, got {type(config).__name__}; build one with Config(...)")
    return config


def make_plan(
    fe: Frontend,
    model: Model,
    config: Config,
    example_inputs: Any = None,
    calib_data: Any = None,
    sensitivity: Sensitivity | None = None,
    validate: bool = True,
) -> tuple[PruningPlan, DependencyGraph]:
    """Trace, score and plan; ``model`` is not modified. With ``validate`` the frontend keeps
    whole, with a warning, the groups the model's code cannot lose."""
    fe.check(model, _checked_config(config))
    inputs = fe.inputs(model, example_inputs)
    model, folded = fe.prepare(model, inputs, config, inplace=False)
    plan, graph = _plan(fe, model, inputs, config, calib_data, sensitivity, validate)
    return dataclasses.replace(plan, folded=folded) if folded else plan, graph


def _plan(
    fe: Frontend,
    model: Model,
    inputs: Inputs,
    config: Config,
    calib_data: Any,
    sensitivity: Sensitivity | None,
    validate: bool,
) -> tuple[PruningPlan, DependencyGraph]:
    traced = fe.planning_inputs(model, inputs, config, calib_data)
    plan = traced.decide(config, sensitivity)
    if validate:
        plan = fe.checked(model, plan, inputs, traced.graph, config)
    if (why := nothing_prunable(traced.graph, config)) is not None:
        warn(why)
    elif validate and (why := shortfall_warning(plan)) is not None:
        warn(why)
    return plan, traced.graph


def plan_and_apply(
    fe: Frontend,
    model: Model,
    config: Config,
    example_inputs: Any = None,
    calib_data: Any = None,
    inplace: bool = False,
    sensitivity: Sensitivity | None = None,
) -> tuple[Model, PruningPlan, DependencyGraph]:
    """The engine without figures: trace, score, plan, surgery (repaired where the model's code
    breaks), and with ``config.reconstruct`` the refit of the layers that lost inputs."""
    fe.check(model, _checked_config(config))
    if config.reconstruct and calib_data is None:
        raise ValueError(
            "reconstruct=true needs calibration data: pass calib_data= (an iterable of batches, or a Dataset) "
            "or set reconstruct=false"
        )
    inputs = fe.inputs(model, example_inputs)
    model, folded = fe.prepare(model, inputs, config, inplace)
    work, plan, graph = _plan_and_apply(fe, model, inputs, config, calib_data, inplace, sensitivity)
    return work, dataclasses.replace(plan, folded=folded) if folded else plan, graph


def _plan_and_apply(
    fe: Frontend,
    model: Model,
    inputs: Inputs,
    config: Config,
    calib_data: Any,
    inplace: bool,
    sensitivity: Sensitivity | None,
) -> tuple[Model, PruningPlan, DependencyGraph]:
    if config.latency_target is not None:
        if inplace:
            raise ValueError("latency_target prunes several candidates: it cannot work in place; drop inplace=True")

        def engine(m: Model, x: Inputs, c: Config, data: Any, s: Sensitivity | None) -> Any:
            return _plan_and_apply(fe, m, x, c, data, False, s)

        return fe.meet_latency(model, inputs, config, calib_data, sensitivity, engine)
    plan, graph = _plan(fe, model, inputs, config, calib_data, sensitivity, validate=False)
    original = fe.copy(model) if config.reconstruct and inplace else model
    work, plan = fe.apply(model, plan, inputs, graph, config, inplace)
    if graph.groups and (why := shortfall_warning(plan)) is not None:
        warn(why)
    if config.reconstruct:
        fe.reconstruct(original, work, plan, calib_data, config)
    return work, plan, graph


def prune(
    fe: Frontend,
    model: Model,
    config: Config,
    example_inputs: Any = None,
    calib_data: Any = None,
    inplace: bool = False,
    sensitivity: Sensitivity | None = None,
) -> PruneResult:
    """Prune ``model`` (structured, or masked for ``method: unstructured``) and measure both.

    In place, the dense model is gone afterwards: it is measured first and timed alone; otherwise
    both are measured at the end, their latencies interleaved in one loop."""
    fe.check(model, _checked_config(config))
    inputs = fe.inputs(model, example_inputs)
    before = fe.measure(model, inputs, config.latency_runs) if inplace else None
    t0 = time.perf_counter()
    if config.method == "unstructured":  # zeroed weights, made permanent; the plan removes no channels
        work = fe.strip(fe.sparsify(model, config, calib_data, inplace, None).model)
        plan = PruningPlan(groups=(), config=config.to_dict(), framework=fe.name, layout=fe.name)
        unsupported: dict[str, int] = {}
    else:
        work, plan, graph = plan_and_apply(fe, model, config, inputs, calib_data, inplace, sensitivity)
        unsupported = dict(graph.unsupported)
    t1 = time.perf_counter()
    if before is not None:
        after = fe.measure(work, inputs, config.latency_runs)
    else:
        before, after = fe.compare(model, work, inputs, config.latency_runs)
    return PruneResult(work, plan, before, after, timings={"engine_s": t1 - t0}, unsupported_ops=unsupported)


def sparsify(
    fe: Frontend,
    model: Model,
    config: Config,
    calib_data: Any = None,
    inplace: bool = False,
    sparsity_now: float | None = None,
) -> SparsifyResult:
    """Mask weights as ``config`` asks; ``sparsity_now`` overrides the ratio (a schedule's step)."""
    fe.check(model, _checked_config(config))
    return fe.sparsify(model, config, calib_data, inplace, sparsity_now)


def sensitivity(
    fe: Frontend,
    model: Model,
    config: Config,
    data: Any,
    example_inputs: Any = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    samples: int = 1000,
    calib_data: Any = None,
    cache_dir: str | Path | None = None,
    quiet: bool = False,
    log: Any = None,
) -> Sensitivity:
    """The metric after pruning each group alone at each of ``ratios``; ``model`` is not modified.

    ``samples`` of ``data`` (a fixed subset, seeded by ``config.seed``) are scored, batch norm
    recalibrated first (the unpruned baseline too, so each drop is pruning's alone). Cached on disk
    after every entry: a repeated run is instant, an interrupted one resumes."""
    fe.check(model, _checked_config(config))
    inputs = fe.inputs(model, example_inputs)
    ratios = check_ratios(ratios)
    subset = fe.scored_subset(model, inputs, config, data, ratios, samples, calib_data)
    cache = cache_root(cache_dir) / "sensitivity" / f"{subset.key}.json"
    result = cached(cache)
    if result is not None and result.complete:
        return result
    if result is None:
        result = Sensitivity(subset.metric, subset.score(fe.copy(model)), ratios, subset.size, subset.key)
    # each group alone, at each ratio; traced and scored once, planned once per ratio
    base = config.model_copy(update=SINGLE_GROUP)
    traced = fe.planning_inputs(model, inputs, base.model_copy(update={"ratio": ratios[0]}), subset.calib)
    plans = {r: traced.decide(base.model_copy(update={"ratio": r})) for r in ratios}

    def pruned_score(single: PruningPlan) -> float | None:
        try:
            work = fe.pruned(model, single, inputs, traced.graph)
        except SurgeryError:
            return None  # the model's code fixes this group's size: it stays whole
        return subset.score(work)

    return measure_groups(result, plans, pruned_score, lambda p: estimate(traced.graph, p), cache, quiet, log)
