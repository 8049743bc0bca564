"""Prune Keras 3 models, on any backend, with the same Config and PruningPlan as the torch API.

>>> import cuttree, cuttree.keras as ck, keras
>>> inp = keras.Input((8, 8, 3))
>>> x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inp)
>>> out = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(x))
>>> r = ck.prune(keras.Model(inp, out), cuttree.Config(ratio=0.5, latency_runs=0))
>>> r.model.get_layer("c1").filters, r.plan.framework, r.after.params < r.before.params
(4, 'keras', True)

Functional and Sequential models are supported, nested ones included (the original design's
``base_model(inputs)`` inside an outer model), as are ``keras.applications`` models. A
subclassed model without a layer graph is refused with a one-line error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cuttree.config import Config
from cuttree.core import flow
from cuttree.core.grouping import DependencyGraph
from cuttree.core.plan import PruningPlan
from cuttree.core.planner import PlanningInputs
from cuttree.core.results import Measurements, PruneResult, SparsifyResult
from cuttree.core.sensitivity import DEFAULT_RATIOS, Sensitivity
from cuttree.frontends.keras import measure as _measure
from cuttree.frontends.keras import surgery
from cuttree.frontends.keras.files import load, plan_of, read_metadata, save
from cuttree.frontends.keras.frontend import FRONTEND, input_shapes, layer_names
from cuttree.frontends.keras.recover import evaluate, finetune, recalibrate_bn
from cuttree.frontends.keras.sparsity import GradualPruning, strip

__all__ = [
    "GradualPruning",
    "apply_plan",
    "compare",
    "evaluate",
    "finetune",
    "input_shapes",
    "layer_names",
    "load",
    "make_plan",
    "measure",
    "plan_of",
    "planning_inputs",
    "prune",
    "read_metadata",
    "recalibrate_bn",
    "save",
    "sensitivity",
    "sparsify",
    "strip",
]


def planning_inputs(model: Any, config: Config, example_inputs: Any = None, calib_data: Any = None) -> PlanningInputs:
    """Trace ``model`` and compute what ``config.criterion`` reads, once: what several plans of one
    model share (the sensitivity analysis plans once per ratio)."""
    FRONTEND.check(model, config)
    return FRONTEND.planning_inputs(model, input_shapes(model, example_inputs), config, calib_data)


def make_plan(
    model: Any,
    config: Config,
    example_inputs: Any = None,
    calib_data: Any = None,
    sensitivity: Sensitivity | None = None,
) -> tuple[PruningPlan, DependencyGraph]:
    """Trace, score and plan; ``model`` is not modified. ``sensitivity`` (from
    :func:`cuttree.keras.sensitivity`) is what ``allocation: sensitivity`` allocates from."""
    return flow.make_plan(FRONTEND, model, config, example_inputs, calib_data, sensitivity)


def sensitivity(
    model: Any,
    config: Config,
    data: tuple[Any, Any],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    samples: int = 1000,
    example_inputs: Any = None,
    calib_data: Any = None,
    cache_dir: str | Path | None = None,
    quiet: bool = False,
    log: Any = None,
) -> Sensitivity:
    """The metric after pruning each group alone at each of ``ratios`` (the model is not modified).

    ``data`` is an ``(x, y)`` pair of validation arrays; ``samples`` of them (a fixed subset,
    seeded by ``config.seed``) are scored, batch norm recalibrated on ``calib_data`` (default: the
    same subset). Cached on disk (``cache_dir``, else ``$CUTTREE_CACHE``, else ``~/.cache/cuttree``)
    after every entry: a repeated run is instant, an interrupted one resumes. Pass the result to
    :func:`prune` or :func:`make_plan` as ``sensitivity=`` with ``allocation: sensitivity``. Use a
    validation split, not the test split the final figure is reported on.
    """
    return flow.sensitivity(
        FRONTEND, model, config, data, example_inputs, ratios, samples, calib_data, cache_dir, quiet, log
    )


def apply_plan(model: Any, plan: PruningPlan, example_inputs: Any = None) -> Any:
    """A new Keras model with the plan's channels removed (the original is left untouched)."""
    return surgery.apply_plan(model, plan, input_shapes(model, example_inputs))


def prune(
    model: Any,
    config: Config,
    example_inputs: Any = None,
    calib_data: Any = None,
    sensitivity: Sensitivity | None = None,
) -> PruneResult:
    """Structurally prune a Keras model: returns a new model, the plan and before/after figures
    (``sensitivity``: for ``allocation: sensitivity``, see :func:`make_plan`)."""
    return flow.prune(FRONTEND, model, config, example_inputs, calib_data, sensitivity=sensitivity)


def sparsify(model: Any, config: Config, calib_data: Any = None, sparsity_now: float | None = None) -> SparsifyResult:
    """A copy of ``model`` with its kernels masked by magnitude (or N:M); see :class:`GradualPruning`
    for the schedule during ``model.fit``."""
    return flow.sparsify(FRONTEND, model, config, calib_data, sparsity_now=sparsity_now)


def measure(model: Any, shapes: Any = None, latency_runs: int = 10) -> Measurements:
    """Parameters, MACs (from the Keras graph), ``.keras`` file size and latency (ms: the median
    and interquartile range of ``latency_runs`` calls, the model timed alone)."""
    return _measure.measure(model, input_shapes(model, shapes), latency_runs)


def compare(before: Any, after: Any, shapes: Any = None, latency_runs: int = 10) -> tuple[Measurements, Measurements]:
    """Figures for two models on the same input shapes, their latencies timed interleaved in one
    loop after the same warm-up (:mod:`cuttree.core.timing`)."""
    return _measure.compare(before, after, input_shapes(before, shapes), latency_runs)
