"""Sensitivity analysis of a Keras model: the metric after pruning each group alone, at several ratios.

The same analysis as the torch frontend's (:func:`cuttree.sensitivity`), through the same core
loop and cache (:mod:`cuttree.core.sensitivity`): each group is pruned alone by rebuilding the
model (the original is never touched), batch norm is recalibrated, and top-1 or mean IoU is
measured on a fixed, seeded subset of the validation arrays. The unpruned baseline is rebuilt and
recalibrated the same way, so each drop is pruning's alone. What comes back is the same
:class:`~cuttree.core.sensitivity.Sensitivity`, which ``allocation: sensitivity`` allocates from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cuttree.config import Config
from cuttree.core.plan import PruningPlan
from cuttree.core.planner import PlanningInputs, estimate
from cuttree.core.sensitivity import (
    SINGLE_GROUP,
    Sensitivity,
    cache_root,
    cached,
    check_ratios,
    key_settings,
    measure_groups,
    subset_indices,
)
from cuttree.errors import SurgeryError
from cuttree.frontends.keras import surgery
from cuttree.frontends.keras.calibrate import to_numpy
from cuttree.frontends.keras.recover import evaluate, recalibrate_bn


def analyse(
    model: Any,
    config: Config,
    data: tuple[Any, Any],
    shapes: list[tuple[int, ...]],
    traced: Callable[[Config], PlanningInputs],
    ratios: Sequence[float],
    samples: int,
    calib_data: Any,
    cache_dir: str | Path | None,
    quiet: bool,
    log: Callable[[str], object] | None,
) -> Sensitivity:
    """See :func:`cuttree.keras.sensitivity`; ``traced(config)`` traces and scores the model once."""
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(
            f"data must be an (x, y) pair of validation arrays, got {type(data).__name__}; pass data=(x_val, y_val)"
        )
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) != len(y):
        raise ValueError(f"data has {len(x)} inputs and {len(y)} labels; pass one label per input")
    ratios = check_ratios(ratios)
    idx = subset_indices(len(x), samples, config.min_samples, config.seed)
    xs, ys = x[idx], y[idx]
    calib = (
        np.asarray(calib_data[0] if isinstance(calib_data, tuple | list) else calib_data)
        if calib_data is not None
        else xs
    )
    key = _key(model, shapes, config, xs, ys, ratios)
    cache = cache_root(cache_dir) / "sensitivity" / f"{key}.json"
    ft = config.finetune
    # as many samples as the torch frontend recalibrates on: calib_samples, or the subset if larger
    recal_batches = -(-min(max(config.calib_samples, len(xs)), len(calib)) // ft.batch_size)

    def recalibrated_score(m: Any) -> float:
        if ft.bn_recalibrate:
            recalibrate_bn(m, calib, batches=recal_batches, batch_size=ft.batch_size, seed=config.seed)
        return evaluate(m, xs, ys, config.mode, batch_size=ft.batch_size, ignore_index=ft.ignore_index)

    result = cached(cache)
    if result is not None and result.complete:
        return result
    base = config.model_copy(update=SINGLE_GROUP)
    inputs = traced(base.model_copy(update={"ratio": ratios[0]}))
    plans = {r: inputs.decide(base.model_copy(update={"ratio": r})) for r in ratios}
    if result is None:
        whole = plans[ratios[0]]
        whole = dataclasses.replace(
            whole, groups=tuple(dataclasses.replace(g, keep=tuple(range(g.size))) for g in whole)
        )
        metric = "miou" if config.mode == "segmentation" else "top1"
        result = Sensitivity(metric, recalibrated_score(surgery.apply_plan(model, whole, shapes)), ratios, len(xs), key)

    def pruned_score(single: PruningPlan) -> float | None:
        try:
            work = surgery.apply_plan(model, single, shapes)
        except SurgeryError:
            return None  # a layer fixes this group's size: it stays whole
        return recalibrated_score(work)

    return measure_groups(result, plans, pruned_score, lambda p: estimate(inputs.graph, p), cache, quiet, log)


def _key(
    model: Any, shapes: list[tuple[int, ...]], config: Config, x: np.ndarray, y: np.ndarray, ratios: Sequence[float]
) -> str:
    """A digest of everything the result depends on: weights, input shapes, data, settings."""
    h = hashlib.sha256(b"keras")
    for v in model.weights:
        h.update(str(v.path).encode())
        h.update(np.ascontiguousarray(to_numpy(v)).tobytes())
    h.update(json.dumps([list(s) for s in shapes]).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    h.update(key_settings(config, ratios))
    return h.hexdigest()[:20]
