"""Sensitivity analysis (``cuttree.sensitivity``): what pruning each group alone costs, at several ratios.

For every prunable group and every ratio, the model is pruned in that group alone (channels
ranked by the config's criterion, as the planner ranks them), batch norm is recalibrated (when
``finetune.bn_recalibrate``), and the task metric is measured on a fixed validation subset. The
result is the drop per group and ratio, which ``allocation: sensitivity`` turns into per-group
ratios that meet a budget with the least predicted loss (:mod:`cuttree.core.allocate`).

Results are cached on disk, keyed by the model's weights, the data subset and the settings; each
entry is written as soon as it is measured, so an interrupted run resumes where it stopped and
a repeated one is instant. The cache folder is ``cache_dir``, else ``$CUTTREE_CACHE``, else
``~/.cache/cuttree``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cuttree._util import as_inputs, to_numpy
from cuttree.api import planning_inputs
from cuttree.batching import Subset
from cuttree.config import Config
from cuttree.core.planner import estimate
from cuttree.core.sensitivity import (
    DEFAULT_RATIOS,
    FORMAT,
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
from cuttree.measure import evaluate
from cuttree.plan import PruningPlan
from cuttree.surgery import apply_plan
from cuttree.train import recalibrate_bn

__all__ = ["DEFAULT_RATIOS", "FORMAT", "Sensitivity", "cache_root", "sensitivity"]


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
    log: Callable[[str], object] | None = None,
) -> Sensitivity:
    """Measure the metric after pruning each group alone at each of ``ratios``.

    ``data`` is a dataset of ``(x, y)``; ``samples`` of it (a fixed random subset, seeded by
    ``config.seed``) are scored. Batch norm is recalibrated on ``calib_data`` (default: the same
    subset; all of it, or ``calib_samples`` if more), the unpruned baseline too, so that each drop is
    pruning's alone. Use a validation split, not the test split the final figure is reported on.
    """
    from cuttree.job import metric_name

    example_inputs = as_inputs(example_inputs)
    ratios = check_ratios(ratios)
    subset = Subset(data, subset_indices(len(data), samples, config.min_samples, config.seed))
    calib: Any = calib_data if calib_data is not None else subset
    key = _key(model, example_inputs, config, subset, ratios)
    cache = cache_root(cache_dir) / "sensitivity" / f"{key}.json"
    metric = metric_name(config)
    ignore = config.finetune.ignore_index

    def score(m: nn.Module) -> float:
        return float(
            evaluate(m, subset, config.mode, batch_size=config.finetune.batch_size, ignore_index=ignore)[metric]
        )

    # BN recalibration alone moves the metric (new statistics from a finite sample), so the
    # baseline is the unpruned model recalibrated the same way: the drops are pruning's alone
    recal_cfg = config.model_copy(update={"calib_samples": max(config.calib_samples, len(subset))})

    def recalibrated_score(m: nn.Module) -> float:
        if config.finetune.bn_recalibrate:
            recalibrate_bn(m, calib, recal_cfg)
        return score(m)

    result = cached(cache)
    if result is not None and result.complete:
        return result
    if result is None:
        result = Sensitivity(metric, recalibrated_score(copy.deepcopy(model)), ratios, len(subset), key)
    # each group alone, at each ratio; traced and scored once, planned once per ratio
    base = config.model_copy(update=SINGLE_GROUP)
    traced = planning_inputs(model, example_inputs, base.model_copy(update={"ratio": ratios[0]}), calib)
    graph = traced.graph
    plans = {r: traced.decide(base.model_copy(update={"ratio": r})) for r in ratios}

    def pruned_score(single: PruningPlan) -> float | None:
        try:
            work = apply_plan(copy.deepcopy(model), single, example_inputs, graph.outputs)
        except SurgeryError:
            return None  # the model's code fixes this group's size: it stays whole
        return recalibrated_score(work)

    return measure_groups(result, plans, pruned_score, lambda p: estimate(graph, p), cache, quiet, log)


def _key(
    model: nn.Module, example_inputs: Sequence[Any], config: Config, subset: Subset, ratios: Sequence[float]
) -> str:
    """A digest of everything the result depends on: weights, inputs' shapes, data, settings."""
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(to_numpy(v)).tobytes())
    h.update(json.dumps([list(getattr(x, "shape", ())) for x in example_inputs]).encode())
    for i in range(len(subset)):
        x, y = subset[i]
        h.update(np.ascontiguousarray(to_numpy(torch.as_tensor(x))).tobytes())
        h.update(np.ascontiguousarray(to_numpy(torch.as_tensor(y))).tobytes())
    h.update(key_settings(config, ratios))
    return h.hexdigest()[:20]
