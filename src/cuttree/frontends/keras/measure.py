"""A Keras model's figures: parameters, MACs (from the traced graph), ``.keras`` file size and
latency (ms: the median and interquartile range of timed calls, :mod:`cuttree.core.timing`)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cuttree.core.results import Measurements
from cuttree.core.timing import interleaved
from cuttree.frontends.keras.calibrate import model_input, quiet_numpy_copy, to_numpy
from cuttree.frontends.keras.graph import trace
from cuttree.frontends.keras.tracer import macs_of

Shapes = list[tuple[int, ...]]


def measure(model: Any, shapes: Shapes, latency_runs: int = 10) -> Measurements:
    """The model's figures on inputs of ``shapes``, its latency timed alone."""
    m = static(model, shapes)
    if not latency_runs:
        return m
    return m.with_timing(interleaved([timer(model, shapes)], latency_runs)[0], "alone")


def compare(before: Any, after: Any, shapes: Shapes, latency_runs: int = 10) -> tuple[Measurements, Measurements]:
    """Figures for two models on the same input shapes, their latencies timed interleaved in one
    loop after the same warm-up."""
    ma, mb = static(before, shapes), static(after, shapes)
    if not latency_runs:
        return ma, mb
    ta, tb = interleaved([timer(before, shapes), timer(after, shapes)], latency_runs)
    return ma.with_timing(ta, "interleaved"), mb.with_timing(tb, "interleaved")


def static(model: Any, shapes: Shapes) -> Measurements:
    """Everything but the latency."""
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


def timer(model: Any, shapes: Shapes) -> Callable[[], float]:
    """A call that runs ``model`` once on zeros, its output read back, and returns milliseconds."""
    xs = [np.zeros(s, dtype="float32") for s in shapes]
    arg = xs if len(xs) > 1 else xs[0]

    def timed() -> float:
        t = time.perf_counter()
        to_numpy(keras.tree.flatten(model(model_input(model, arg), training=False))[0])
        return (time.perf_counter() - t) * 1e3

    return timed
