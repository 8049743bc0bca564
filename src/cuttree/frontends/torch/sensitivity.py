"""The torch side of the sensitivity analysis (``cuttree.sensitivity``, :func:`cuttree.core.flow.sensitivity`):
the validation subset it scores on. What it measures:

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

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cuttree.config import Config
from cuttree.core.frontend import ScoredSubset
from cuttree.core.results import metric_name
from cuttree.core.sensitivity import key_settings, subset_indices
from cuttree.frontends.torch.measure import evaluate
from cuttree.frontends.torch.util import to_numpy
from cuttree.recover.batching import Subset
from cuttree.recover.train import recalibrate_bn


def scored_subset(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    data: Any,
    ratios: Sequence[float],
    samples: int,
    calib_data: Any,
) -> ScoredSubset:
    """``samples`` of the dataset ``data`` of ``(x, y)`` (a fixed random subset, seeded by
    ``config.seed``) and how a model scores on them. Batch norm is recalibrated on ``calib_data``
    (default: the same subset; all of it, or ``calib_samples`` if more), the unpruned baseline too,
    so that each drop is pruning's alone."""
    subset = Subset(data, subset_indices(len(data), samples, config.min_samples, config.seed))
    calib: Any = calib_data if calib_data is not None else subset
    metric = metric_name(config)
    ignore = config.finetune.ignore_index
    # BN recalibration alone moves the metric (new statistics from a finite sample), so the
    # baseline is the unpruned model recalibrated the same way: the drops are pruning's alone
    recal_cfg = config.model_copy(update={"calib_samples": max(config.calib_samples, len(subset))})

    def recalibrated_score(m: nn.Module) -> float:
        if config.finetune.bn_recalibrate:
            recalibrate_bn(m, calib, recal_cfg)
        result = evaluate(m, subset, config.mode, batch_size=config.finetune.batch_size, ignore_index=ignore)
        return float(result[metric])

    key = _key(model, example_inputs, config, subset, ratios)
    return ScoredSubset(recalibrated_score, len(subset), metric, calib, key)


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
