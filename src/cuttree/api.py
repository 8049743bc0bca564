"""The public entry point: ``prune(model, example_inputs, config)``.

Decide, then do: trace → score → plan, all without touching the model; then surgery on a copy
(or on the model itself with ``inplace=True``), then measurement.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cuttree import calibrate
from cuttree._util import as_inputs, model_bytes, model_device, refuse_keras, to_numpy
from cuttree.config import Config
from cuttree.core.plan import HEAD_UNITS
from cuttree.core.planner import PlanningInputs, estimate, nothing_prunable, resolve, selects
from cuttree.core.shortfall import shortfall_warning
from cuttree.errors import SurgeryError, warn
from cuttree.fold import computes_its_weight, fold_computed_weights
from cuttree.graph.groups import DependencyGraph, build_graph
from cuttree.graph.trace import named_tensors
from cuttree.measure import compare, count_params, measure
from cuttree.plan import PruningPlan
from cuttree.resources import check_memory
from cuttree.results import Measurements as Measurements  # re-exported: old import path
from cuttree.results import PruneResult
from cuttree.results import measurements_table as measurements_table  # re-exported: old import path
from cuttree.rules import rule_for_module
from cuttree.sparsity import Mask, strip
from cuttree.surgery import apply_plan
from cuttree.validate import heads_compute_the_same, keep_all, repair


def module_names(model: nn.Module) -> list[str]:
    """Dotted names of the modules that hold tensors (what configs can name)."""
    tensors = named_tensors(model)
    return sorted({n.rpartition(".")[0] for n in tensors} - {""})


def planning_inputs(
    model: nn.Module, example_inputs: Sequence[Any], config: Config, calib_data: Iterable[Any] | None = None
) -> PlanningInputs:
    """Trace ``model`` and compute what ``config.criterion`` reads: the part of planning that
    several plans of one model share (the sensitivity analysis plans once per ratio)."""
    refuse_keras(model)
    example_inputs = as_inputs(example_inputs)
    names = module_names(model)
    ignore = sorted({n for hits in resolve(config.ignore, names, "ignore").values() for n in hits})
    overrides = resolve(config.layers, names, "layers")
    graph = build_graph(model, example_inputs, ignore, group_width=config.group_width)
    extra, weights = criterion_inputs(model, graph, config, calib_data)
    return PlanningInputs(graph, overrides, weights, extra, count_params(model), "torch", "torch")


def make_plan(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    calib_data: Iterable[Any] | None = None,
    validate: bool = True,
    sensitivity: Any = None,
) -> tuple[PruningPlan, DependencyGraph]:
    """Trace, score and plan; ``model`` is not modified.

    With ``validate`` (the default) the plan is first tried on a shape-only copy of the model,
    and groups whose pruning the model's code cannot take (a literal channel count in a
    ``view``) are kept whole, with a warning. ``sensitivity`` (a
    :class:`cuttree.Sensitivity`) is what ``allocation: sensitivity`` allocates from.
    """
    example_inputs = as_inputs(example_inputs)
    model, folded = _folded(model, example_inputs, config, inplace=False)
    plan, graph = _make_plan(model, example_inputs, config, calib_data, validate, sensitivity)
    return dataclasses.replace(plan, folded=folded) if folded else plan, graph


def _make_plan(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    calib_data: Iterable[Any] | None,
    validate: bool,
    sensitivity: Any,
) -> tuple[PruningPlan, DependencyGraph]:
    inputs = planning_inputs(model, example_inputs, config, calib_data)
    plan = inputs.decide(config, sensitivity)
    graph = inputs.graph
    if validate:
        plan = _validated(model, _train_checked(model, plan, example_inputs, graph), example_inputs, graph)
        _warn_heads_not_found(model, plan, config, graph)
    if (why := nothing_prunable(graph, config)) is not None:
        warn(why)
    elif validate and (why := shortfall_warning(plan)) is not None:
        warn(why)
    return plan, graph


def _folded(
    model: nn.Module, example_inputs: Sequence[Any], config: Config, inplace: bool
) -> tuple[nn.Module, tuple[str, ...]]:
    """``model`` with its computed-weight layers folded when the config asks (a copy unless
    ``inplace``), and their names; otherwise ``model``, with a warning if it has such layers."""
    if config.method != "structured":
        return model, ()
    if config.fold_computed_weights:
        return fold_computed_weights(model, example_inputs, inplace)
    computed = [n for n, m in model.named_modules() if computes_its_weight(m, besides=(Mask,))]
    targets = (config.ratio, config.head_ratio, config.threshold, config.macs_target, config.params_target)
    if computed and (any(targets) or config.latency_target is not None):
        warn(
            f"{len(computed)} conv/linear layer(s) compute their weight in forward ({', '.join(computed[:3])}"
            f"{' …' if len(computed) > 3 else ''}; weight standardization or weight norm, say): cuttree keeps the "
            "channels it cannot prune through whole; set fold_computed_weights: true to make them plain layers "
            "holding that weight (exact) and prune them"
        )
    return model, ()


def _train_checked(
    model: nn.Module, plan: PruningPlan, example_inputs: Sequence[Any], graph: DependencyGraph
) -> PruningPlan:
    """``plan``, with the groups whose pruning breaks the training-mode forward kept whole.

    Layers the eval-mode trace never reached (auxiliary classifiers that run only in training)
    keep their shapes, so the channels feeding them must stay too: the plan is tried in training
    mode on a shape-only copy, and the groups that break it are kept whole, with a warning.
    """
    if not graph.unreached:
        return plan
    from cuttree.validate import train_output_shapes

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


def _validated(
    model: nn.Module, plan: PruningPlan, example_inputs: Sequence[Any], graph: DependencyGraph
) -> PruningPlan:
    plan, broken = repair(model, plan, example_inputs, graph.outputs)
    if broken:
        warn(
            f"kept {len(broken)} group(s) whole because the model's code fixes their size: {', '.join(broken[:5])}"
            + (" …" if len(broken) > 5 else "")
        )
    return _heads_checked(model, plan, example_inputs, graph)


def _heads_checked(
    model: nn.Module, plan: PruningPlan, example_inputs: Sequence[Any], graph: DependencyGraph
) -> PruningPlan:
    """``plan``, with its attention heads kept whole if removing them is not zeroing them."""
    if not heads_compute_the_same(model, plan, example_inputs):
        names = [g.name for g in plan.groups if g.unit in HEAD_UNITS and len(g.keep) < g.size]
        plan = dataclasses.replace(plan, groups=tuple(keep_all(g) if g.unit in HEAD_UNITS else g for g in plan.groups))
        warn(
            f"kept the attention heads whole ({', '.join(names[:3])}{' …' if len(names) > 3 else ''}): removing them "
            "does not compute what zeroing them does, so the model's code counts heads somewhere cuttree does not patch; "
            "register a module rule for its attention (cuttree.rules.named_rule) or set head_ratio: 0"
        )
    return dataclasses.replace(plan, macs_after=estimate(graph, plan))


def _warn_heads_not_found(model: nn.Module, plan: PruningPlan, config: Config, graph: DependencyGraph) -> None:
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


def criterion_inputs(
    model: nn.Module, graph: DependencyGraph, cfg: Config, data: Iterable[Any] | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What the criterion reads, as numpy (the border: each tensor goes to the CPU once):
    the statistics it needs from ``data``, and the groups' parameters by state-dict name."""
    stats: dict[str, torch.Tensor] = {}
    if cfg.criterion == "taylor":
        stats = calibrate.gradients(model, data, cfg)
    elif cfg.criterion == "activation":
        stats = calibrate.activations(model, graph, data, cfg)
    elif cfg.criterion == "bn_scale":
        stats = calibrate.norm_scales(model, graph)
    members = {m.tensor for g in graph.groups for m in g.members}
    params = {k: v for k, v in named_tensors(model).items() if k in members and isinstance(v, nn.Parameter)}
    if cfg.criterion == "taylor":
        stats = {k: v for k, v in stats.items() if k in params}
    return {k: to_numpy(v) for k, v in stats.items()}, {k: to_numpy(v) for k, v in params.items()}


def prune(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    calib_data: Iterable[Any] | None = None,
    inplace: bool = False,
    sensitivity: Any = None,
) -> PruneResult:
    """Structurally prune ``model``; returns a new model unless ``inplace=True``.

    >>> import torch, cuttree
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    >>> r = cuttree.prune(net, (torch.randn(1, 3, 8, 8),), cuttree.Config(ratio=0.5, latency_runs=0))
    >>> r.model[0].out_channels, r.model[2].in_channels, net[0].out_channels
    (4, 4, 8)
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be a cuttree.Config, got {type(config).__name__}; build one with Config(...)")
    refuse_keras(model)
    example_inputs = as_inputs(example_inputs)
    # in place, the dense model is gone afterwards: it is measured now and timed alone; otherwise
    # both are measured at the end, their latencies interleaved in one loop
    before = measure(model, example_inputs, config.latency_runs) if inplace else None
    t0 = time.perf_counter()
    if config.method == "unstructured":
        # Zeroed weights, made permanent; the plan removes no channels.
        work = strip(sparsify(model, config, calib_data, inplace).model)
        plan, unsupported = PruningPlan(groups=(), config=config.to_dict()), {}
    else:
        work, plan, graph = plan_and_apply(model, example_inputs, config, calib_data, inplace, sensitivity)
        unsupported = graph.unsupported
    t1 = time.perf_counter()
    if before is not None:
        after = measure(work, example_inputs, config.latency_runs)
    else:
        before, after = compare(model, work, example_inputs, config.latency_runs)
    return PruneResult(
        model=work,
        plan=plan,
        before=before,
        after=after,
        timings={"engine_s": t1 - t0},
        unsupported_ops=unsupported,
    )


@dataclass
class SparsifyResult:
    """A model whose Conv/Linear weights are masked (parametrized), the masks, the sparsity reached."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    sparsity: float


def sparsify(
    model: nn.Module,
    config: Config,
    calib_data: Iterable[Any] | None = None,
    inplace: bool = False,
    sparsity_now: float | None = None,
) -> SparsifyResult:
    """Mask weights by magnitude (or Wanda, or N:M); returns a new model unless ``inplace=True``.

    ``sparsity_now`` overrides the ratio (what a gradual schedule asks for at a step). The model
    stays trainable; :func:`cuttree.sparsity.strip` makes the zeros permanent.

    >>> import torch, cuttree
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    >>> r = cuttree.sparsify(net, cuttree.Config(method="unstructured", ratio=0.75))
    >>> r.sparsity, int((r.model[0].weight == 0).sum())
    (0.75, 48)
    """
    from cuttree import sparsity as sp

    refuse_keras(model)
    names = module_names(model)
    ignore = [n for hits in resolve(config.ignore, names, "ignore").values() for n in hits]
    overrides = resolve(config.layers, names, "layers")
    work = model if inplace else copy.deepcopy(model)
    layers = sp.prunable_layers(work, ignore, include_output=list(config.layers))
    if computed := [n for n, m in layers.items() if computes_its_weight(m, besides=(Mask,))]:
        warn(
            f"kept {len(computed)} layer(s) dense that compute their weight in forward ({', '.join(computed[:3])}"
            f"{' …' if len(computed) > 3 else ''}; weight standardization or weight norm, say): zeros in their "
            "parameter would not be zeros in the weight they use; fold them first with "
            "cuttree.fold.fold_computed_weights(model, example_inputs)"
        )
        layers = {n: m for n, m in layers.items() if n not in computed}
    norms = None
    if config.criterion == "wanda":
        batches = calibrate.batches(calib_data, config, need_labels=False, device=model_device(work))
        norms = sp.input_norms(work, layers, (x for x, _ in batches))
    score = sp.scores(layers, norms)
    if config.nm is not None:
        n, m = (int(v) for v in config.nm.split(":"))
        masks = sp.nm_masks(score, n, m)
    else:
        per_layer = {
            h: o.ratio for p, o in config.layers.items() if o.ratio is not None for h in overrides[p] if h in layers
        }
        ratio = sparsity_now if sparsity_now is not None else config.ratio
        masks = sp.magnitude_masks(
            score, ratio, None if sparsity_now is not None else config.threshold, config.scope, per_layer
        )
    sp.apply_masks(work, masks)
    return SparsifyResult(work, masks, sp.sparsity(work, layers))


def plan_and_apply(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    calib_data: Iterable[Any] | None = None,
    inplace: bool = False,
    sensitivity: Any = None,
) -> tuple[nn.Module, PruningPlan, DependencyGraph]:
    """The engine without measurements: trace, score, plan, surgery, forward check.

    The plan is tried for real first (surgery is all or nothing); only if the forward check
    fails is it repaired on shape-only copies (see :func:`make_plan`'s ``validate``) and
    applied again. With ``config.reconstruct`` the layers that lost input channels are then
    refitted on ``calib_data`` (:func:`cuttree.reconstruct.reconstruct`).
    """
    if config.reconstruct and calib_data is None:
        raise ValueError(
            "reconstruct=true needs calibration data: pass calib_data= (an iterable of batches, or a Dataset) "
            "or set reconstruct=false"
        )
    model, folded = _folded(model, example_inputs, config, inplace)
    work, plan, graph = _plan_and_apply(model, example_inputs, config, calib_data, inplace, sensitivity)
    return work, dataclasses.replace(plan, folded=folded) if folded else plan, graph


def _plan_and_apply(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    calib_data: Iterable[Any] | None,
    inplace: bool,
    sensitivity: Any,
) -> tuple[nn.Module, PruningPlan, DependencyGraph]:
    if config.latency_target is not None:
        from cuttree.latency_budget import meet_latency

        if inplace:
            raise ValueError("latency_target prunes several candidates: it cannot work in place; drop inplace=True")

        def engine(m: nn.Module, x: Sequence[Any], c: Config, data: Any, s: Any) -> Any:
            return _plan_and_apply(m, x, c, data, False, s)

        return meet_latency(model, example_inputs, config, calib_data, sensitivity, engine)
    plan, graph = _make_plan(model, example_inputs, config, calib_data, False, sensitivity)
    plan = _heads_checked(model, _train_checked(model, plan, example_inputs, graph), example_inputs, graph)
    if not inplace and model_device(model).type == "cpu":
        check_memory(model_bytes(model), "a working copy of the model", "pass inplace=True or free memory")
    original = copy.deepcopy(model) if config.reconstruct and inplace else model
    work = model if inplace else copy.deepcopy(model)
    try:
        work = apply_plan(work, plan, example_inputs, graph.outputs)
    except SurgeryError:
        plan = _validated(original, plan, example_inputs, graph)
        work = apply_plan(work, plan, example_inputs, graph.outputs)
    _warn_heads_not_found(original, plan, config, graph)
    if graph.groups and (why := shortfall_warning(plan)) is not None:
        warn(why)
    if config.reconstruct:
        from cuttree.reconstruct import reconstruct

        reconstruct(original, work, plan, calib_data, config)
    return work, plan, graph


def keep_fraction(plan: PruningPlan) -> float:
    """Fraction of prunable channels the plan keeps."""
    return plan.channels_after / plan.channels_before if plan.channels_before else 1.0
