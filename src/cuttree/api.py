"""The public torch verbs: ``prune(model, example_inputs, config)`` and its relatives.

Each is :mod:`cuttree.core.flow` with the torch frontend
(:mod:`cuttree.frontends.torch.frontend`) filled in: decide, then do — trace → score → plan
without touching the model, then surgery on a copy (or on the model itself with
``inplace=True``), then measurement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from cuttree import _aliases
from cuttree.config import Config
from cuttree.core import flow
from cuttree.core.plan import PruningPlan
from cuttree.core.planner import PlanningInputs
from cuttree.core.results import PruneResult, SparsifyResult
from cuttree.core.sensitivity import DEFAULT_RATIOS, Sensitivity
from cuttree.frontends.torch.frontend import FRONTEND
from cuttree.frontends.torch.groups import DependencyGraph
from cuttree.frontends.torch.trace import module_names

__all__ = [
    "PruneResult",
    "SparsifyResult",
    "keep_fraction",
    "make_plan",
    "module_names",
    "plan_and_apply",
    "planning_inputs",
    "prune",
    "sensitivity",
    "sparsify",
]


def planning_inputs(
    model: nn.Module, example_inputs: Sequence[Any], config: Config, calib_data: Iterable[Any] | None = None
) -> PlanningInputs:
    """Trace ``model`` and compute what ``config.criterion`` reads: the part of planning that
    several plans of one model share (the sensitivity analysis plans once per ratio)."""
    FRONTEND.check(model, config)
    return FRONTEND.planning_inputs(model, FRONTEND.inputs(model, example_inputs), config, calib_data)


def make_plan(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    calib_data: Iterable[Any] | None = None,
    validate: bool = True,
    sensitivity: Sensitivity | None = None,
) -> tuple[PruningPlan, DependencyGraph]:
    """Trace, score and plan; ``model`` is not modified.

    With ``validate`` (the default) the plan is first tried on a shape-only copy of the model,
    and groups whose pruning the model's code cannot take (a literal channel count in a
    ``view``) are kept whole, with a warning. ``sensitivity`` (a
    :class:`cuttree.Sensitivity`) is what ``allocation: sensitivity`` allocates from.
    """
    return flow.make_plan(FRONTEND, model, config, example_inputs, calib_data, sensitivity, validate)


def prune(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    calib_data: Iterable[Any] | None = None,
    inplace: bool = False,
    sensitivity: Sensitivity | None = None,
) -> PruneResult:
    """Structurally prune ``model``; returns a new model unless ``inplace=True``.

    >>> import torch, cuttree
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    >>> r = cuttree.prune(net, (torch.randn(1, 3, 8, 8),), cuttree.Config(ratio=0.5, latency_runs=0))
    >>> r.model[0].out_channels, r.model[2].in_channels, net[0].out_channels
    (4, 4, 8)
    """
    return flow.prune(FRONTEND, model, config, example_inputs, calib_data, inplace, sensitivity)


def sparsify(
    model: nn.Module,
    config: Config,
    calib_data: Iterable[Any] | None = None,
    inplace: bool = False,
    sparsity_now: float | None = None,
) -> SparsifyResult:
    """Mask weights by magnitude (or Wanda, or N:M); returns a new model unless ``inplace=True``.

    ``sparsity_now`` overrides the ratio (what a gradual schedule asks for at a step). The model
    stays trainable; :func:`cuttree.frontends.torch.sparsity.strip` makes the zeros permanent.

    >>> import torch, cuttree
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    >>> r = cuttree.sparsify(net, cuttree.Config(method="unstructured", ratio=0.75))
    >>> r.sparsity, int((r.model[0].weight == 0).sum())
    (0.75, 48)
    """
    return flow.sparsify(FRONTEND, model, config, calib_data, inplace, sparsity_now)


def plan_and_apply(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    calib_data: Iterable[Any] | None = None,
    inplace: bool = False,
    sensitivity: Sensitivity | None = None,
) -> tuple[nn.Module, PruningPlan, DependencyGraph]:
    """The engine without measurements: trace, score, plan, surgery, forward check.

    The plan is tried for real first (surgery is all or nothing); only if the forward check
    fails is it repaired on shape-only copies (see :func:`make_plan`'s ``validate``) and
    applied again. With ``config.reconstruct`` the layers that lost input channels are then
    refitted on ``calib_data`` (:func:`cuttree.recover.reconstruct.reconstruct`).
    """
    return flow.plan_and_apply(FRONTEND, model, config, example_inputs, calib_data, inplace, sensitivity)


def sensitivity(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    data: Any,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    samples: int = 1000,
    calib_data: Any = None,
    cache_dir: str | Path | None = None,
    quiet: bool = False,
    log: Any = None,
) -> Sensitivity:
    """Measure the metric after pruning each group alone at each of ``ratios``.

    ``data`` is a dataset of ``(x, y)``; ``samples`` of it (a fixed random subset, seeded by
    ``config.seed``) are scored. Batch norm is recalibrated on ``calib_data`` (default: the same
    subset; all of it, or ``calib_samples`` if more), the unpruned baseline too, so that each drop is
    pruning's alone. Use a validation split, not the test split the final figure is reported on.
    Results are cached (``cache_dir``, else ``$CUTTREE_CACHE``, else ``~/.cache/cuttree``).
    """
    return flow.sensitivity(
        FRONTEND, model, config, data, example_inputs, ratios, samples, calib_data, cache_dir, quiet, log
    )


def keep_fraction(plan: PruningPlan) -> float:
    """Fraction of prunable channels the plan keeps."""
    return plan.channels_after / plan.channels_before if plan.channels_before else 1.0


def __getattr__(name: str) -> Any:  # names this module re-exported before the move
    return _aliases.old_name(__name__, name)
