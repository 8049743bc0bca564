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

import fnmatch
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cuttree.config import Config
from cuttree.core.grouping import DependencyGraph
from cuttree.core.plan import PruningPlan
from cuttree.core.planner import PlanningInputs, nothing_prunable
from cuttree.core.sensitivity import DEFAULT_RATIOS, Sensitivity
from cuttree.core.shortfall import shortfall_warning
from cuttree.errors import did_you_mean, warn
from cuttree.frontends.keras import surgery
from cuttree.frontends.keras.calibrate import criterion_inputs, model_input, quiet_numpy_copy, to_numpy
from cuttree.frontends.keras.files import load, plan_of, read_metadata, save
from cuttree.frontends.keras.graph import build_graph, check_model, macs_of, trace
from cuttree.frontends.keras.recover import evaluate, finetune, recalibrate_bn
from cuttree.frontends.keras.sensitivity import analyse as _sensitivity
from cuttree.frontends.keras.sparsity import GradualPruning, SparsifyResult, strip
from cuttree.frontends.keras.sparsity import sparsify as _sparsify
from cuttree.results import Measurements, PruneResult
from cuttree.timing import interleaved

__all__ = [
    "GradualPruning",
    "apply_plan",
    "compare",
    "evaluate",
    "finetune",
    "layer_names",
    "load",
    "make_plan",
    "measure",
    "plan_of",
    "prune",
    "read_metadata",
    "recalibrate_bn",
    "save",
    "sensitivity",
    "sparsify",
    "strip",
]


def input_shapes(model: Any, example_inputs: Any = None) -> list[tuple[int, ...]]:
    """Shapes (batch included) of ``example_inputs``, or of the model's own inputs with batch 1."""
    check_model(model)
    if example_inputs is None:
        shapes = [(1, *x.shape[1:]) for x in model.inputs]
        for s in shapes:
            if any(d is None for d in s):
                raise ValueError(
                    f"the model's input shape {s} has unknown sizes; pass example_inputs=np.zeros((1, H, W, C)) "
                    "with the size to prune for"
                )
        return [tuple(int(d) for d in s) for s in shapes]  # type: ignore[arg-type]
    items = list(example_inputs) if isinstance(example_inputs, list | tuple) else [example_inputs]
    if len(items) != len(model.inputs):
        raise ValueError(
            f"example_inputs has {len(items)} arrays, the model takes {len(model.inputs)} inputs; pass one array per input"
        )
    return [tuple(int(d) for d in np.shape(x)) for x in items]


def layer_names(model: Any) -> list[str]:
    """Paths of the layers that hold weights (what ``ignore`` and ``layers`` can name)."""
    return [p for p, layer in surgery.leaf_layers(model).items() if getattr(layer, "weights", None)]


def _resolve(patterns: Sequence[str], names: list[str], key: str) -> dict[str, list[str]]:
    """Layer paths or globs; a bare layer name matches inside nested models too."""
    leaf = {n: n.rsplit("/", 1)[-1] for n in names}
    out: dict[str, list[str]] = {}
    for p in patterns:
        hits = [
            n for n in names if fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(leaf[n], p) or n.startswith(p + "/")
        ]
        if not hits:
            raise ValueError(
                f"{key}: unknown layer '{p}'{did_you_mean(p, [*names, *leaf.values()])}; use a Keras layer name, "
                "a path such as vgg16/block1_conv1, or a glob (list them with cuttree.keras.layer_names)"
            )
        out[p] = hits
    return out


def planning_inputs(model: Any, config: Config, example_inputs: Any = None, calib_data: Any = None) -> PlanningInputs:
    """Trace ``model`` and compute what ``config.criterion`` reads, once: what several plans of one
    model share (the sensitivity analysis plans once per ratio)."""
    _check_config(config)
    shapes = input_shapes(model, example_inputs)
    names = layer_names(model)
    ignore = sorted({n for hits in _resolve(config.ignore, names, "ignore").values() for n in hits})
    overrides = _resolve(list(config.layers), names, "layers")
    graph, tr = build_graph(model, shapes, ignore, config.group_width)
    extra, weights = criterion_inputs(model, tr, graph, config, calib_data)
    return PlanningInputs(graph, overrides, weights, extra, int(model.count_params()), "keras", "keras")


def make_plan(
    model: Any, config: Config, example_inputs: Any = None, calib_data: Any = None, sensitivity: Any = None
) -> tuple[PruningPlan, DependencyGraph]:
    """Trace, score and plan; ``model`` is not modified. ``sensitivity`` (from
    :func:`cuttree.keras.sensitivity`) is what ``allocation: sensitivity`` allocates from."""
    inputs = planning_inputs(model, config, example_inputs, calib_data)
    plan = inputs.decide(config, sensitivity)
    if (why := nothing_prunable(inputs.graph, config) or shortfall_warning(plan)) is not None:
        warn(why)
    return plan, inputs.graph


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
    _check_config(config)
    check_model(model)
    shapes = input_shapes(model, example_inputs)

    def traced(cfg: Config) -> PlanningInputs:  # a data-driven criterion reads the calibration data
        return planning_inputs(model, cfg, example_inputs, calib_data if calib_data is not None else data)

    return _sensitivity(model, config, data, shapes, traced, ratios, samples, calib_data, cache_dir, quiet, log)


def apply_plan(model: Any, plan: PruningPlan, example_inputs: Any = None) -> Any:
    """A new Keras model with the plan's channels removed (the original is left untouched)."""
    return surgery.apply_plan(model, plan, input_shapes(model, example_inputs))


def prune(
    model: Any, config: Config, example_inputs: Any = None, calib_data: Any = None, sensitivity: Any = None
) -> PruneResult:
    """Structurally prune a Keras model: returns a new model, the plan and before/after figures
    (``sensitivity``: for ``allocation: sensitivity``, see :func:`make_plan`)."""
    _check_config(config)
    shapes = input_shapes(model, example_inputs)
    t0 = time.perf_counter()
    if config.method == "unstructured":
        work = strip(sparsify(model, config, calib_data).model)
        plan = PruningPlan(groups=(), config=config.to_dict(), framework="keras", layout="keras")
        unsupported: dict[str, int] = {}
    else:
        plan, graph = make_plan(model, config, example_inputs, calib_data, sensitivity)
        work = surgery.apply_plan(model, plan, shapes)
        unsupported = dict(graph.unsupported)
    t1 = time.perf_counter()
    before, after = compare(model, work, shapes, config.latency_runs)
    return PruneResult(work, plan, before, after, timings={"engine_s": t1 - t0}, unsupported_ops=unsupported)


def sparsify(model: Any, config: Config, calib_data: Any = None, sparsity_now: float | None = None) -> SparsifyResult:
    """A copy of ``model`` with its kernels masked by magnitude (or N:M); see :class:`GradualPruning`
    for the schedule during ``model.fit``."""
    _check_config(config)
    check_model(model)
    return _sparsify(model, config, calib_data, sparsity_now)


def _check_config(config: Any) -> None:
    if not isinstance(config, Config):
        raise TypeError(f"config must be a cuttree.Config, got {type(config).__name__}; build one with Config(...)")
    for key, bad in (
        ("reconstruct", config.reconstruct),
        ("steps", config.steps > 1),
        ("fold_computed_weights", config.fold_computed_weights),
    ):
        if bad:
            raise ValueError(
                f"config key '{key}' = {getattr(config, key)!r} is not available for Keras models yet (torch only); "
                f"remove it from the config"
            )


def measure(model: Any, shapes: Any = None, latency_runs: int = 10) -> Measurements:
    """Parameters, MACs (from the Keras graph), ``.keras`` file size and latency (ms: the median
    and interquartile range of ``latency_runs`` calls, the model timed alone)."""
    shapes = _shapes(model, shapes)
    m = _static(model, shapes)
    if not latency_runs:
        return m
    return m.with_timing(interleaved([_timer(model, shapes)], latency_runs)[0], "alone")


def compare(before: Any, after: Any, shapes: Any = None, latency_runs: int = 10) -> tuple[Measurements, Measurements]:
    """Figures for two models on the same input shapes, their latencies timed interleaved in one
    loop after the same warm-up (:mod:`cuttree.timing`)."""
    shapes = _shapes(before, shapes)
    ma, mb = _static(before, shapes), _static(after, shapes)
    if not latency_runs:
        return ma, mb
    ta, tb = interleaved([_timer(before, shapes), _timer(after, shapes)], latency_runs)
    return ma.with_timing(ta, "interleaved"), mb.with_timing(tb, "interleaved")


def _shapes(model: Any, shapes: Any) -> list[tuple[int, ...]]:
    if shapes is None or not (isinstance(shapes, list) and all(isinstance(s, tuple) for s in shapes)):
        return input_shapes(model, shapes)
    return shapes


def _static(model: Any, shapes: list[tuple[int, ...]]) -> Measurements:
    macs = macs_of(trace(model, shapes))
    with tempfile.TemporaryDirectory() as d, quiet_numpy_copy():
        p = Path(d) / "m.keras"
        model.save(p)
        size = p.stat().st_size
    return Measurements(
        params=int(model.count_params()),
        macs=int(macs),
        size_bytes=int(size),
        latency_ms=None,
        batch_size=int(shapes[0][0]),
        threads=int(os.cpu_count() or 1),
    )


def _timer(model: Any, shapes: list[tuple[int, ...]]) -> Any:
    """A call that runs ``model`` once on zeros, its output read back, and returns milliseconds."""
    xs = [np.zeros(s, dtype="float32") for s in shapes]
    arg = xs if len(xs) > 1 else xs[0]

    def timed() -> float:
        t = time.perf_counter()
        to_numpy(keras.tree.flatten(model(model_input(model, arg), training=False))[0])
        return (time.perf_counter() - t) * 1e3

    return timed
