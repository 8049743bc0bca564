"""The Keras side of the sensitivity analysis (:func:`cuttree.core.flow.sensitivity`): the
validation subset it scores on.

The same analysis as the torch frontend's, through the same flow and cache: each group is pruned
alone by rebuilding the model (the original is never touched), batch norm is recalibrated, and
top-1 or mean IoU is measured on a fixed, seeded subset of the validation arrays. The unpruned
baseline is a copy recalibrated the same way, so each drop is pruning's alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from cuttree.config import Config
from cuttree.core.frontend import ScoredSubset
from cuttree.core.results import metric_name
from cuttree.core.sensitivity import key_settings, subset_indices
from cuttree.frontends.keras.calibrate import to_numpy
from cuttree.frontends.keras.recover import evaluate, recalibrate_bn


def scored_subset(
    model: Any,
    shapes: list[tuple[int, ...]],
    config: Config,
    data: Any,
    ratios: Sequence[float],
    samples: int,
    calib_data: Any,
) -> ScoredSubset:
    """``samples`` of the ``(x, y)`` validation arrays ``data`` (a fixed subset, seeded by
    ``config.seed``) and how a model scores on them, batch norm recalibrated on ``calib_data``
    (default: the same subset) first."""
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(
            f"data must be an (x, y) pair of validation arrays, got {type(data).__name__}; pass data=(x_val, y_val)"
        )
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) != len(y):
        raise ValueError(f"data has {len(x)} inputs and {len(y)} labels; pass one label per input")
    idx = subset_indices(len(x), samples, config.min_samples, config.seed)
    xs, ys = x[idx], y[idx]
    calib = (
        np.asarray(calib_data[0] if isinstance(calib_data, tuple | list) else calib_data)
        if calib_data is not None
        else xs
    )
    ft = config.finetune
    # as many samples as the torch frontend recalibrates on: calib_samples, or the subset if larger
    recal_batches = -(-min(max(config.calib_samples, len(xs)), len(calib)) // ft.batch_size)

    def recalibrated_score(m: Any) -> float:
        if ft.bn_recalibrate:
            recalibrate_bn(m, calib, batches=recal_batches, batch_size=ft.batch_size, seed=config.seed)
        return evaluate(m, xs, ys, config.mode, batch_size=ft.batch_size, ignore_index=ft.ignore_index)

    metric = metric_name(config)
    # planning reads the calibration data the caller gave, else the validation arrays (x, y)
    planning_data = calib_data if calib_data is not None else data
    return ScoredSubset(recalibrated_score, len(xs), metric, planning_data, _key(model, shapes, config, xs, ys, ratios))


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
