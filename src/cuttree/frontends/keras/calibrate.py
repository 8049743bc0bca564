"""What the criteria read from a Keras model, as numpy: weights, norm scales, and statistics
from calibration data (mean |activation|, loss gradients), on whichever backend Keras runs.

Calibration data is an iterable of ``(x, y)`` batches (numpy arrays, backend tensors, a
``tf.data.Dataset`` or ``keras.utils.PyDataset``), or one ``(x, y)`` pair of whole arrays (cut
into batches of 64). ``min_samples`` is checked after reading.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from cuttree.config import Config
from cuttree.core.grouping import DependencyGraph
from cuttree.core.importance import REGISTRY
from cuttree.frontends.keras.graph import run_recording
from cuttree.frontends.keras.rules import rule_for
from cuttree.frontends.keras.tracer import Tracer
from cuttree.recover.batching import capped


def to_numpy(x: Any) -> np.ndarray:
    """The Keras frontend's border: a variable, backend tensor or array as a numpy array. A torch
    tensor (Keras's torch backend) converts itself: through ``np.array`` numpy 2 would warn that
    its ``__array__`` takes no ``copy`` keyword."""
    if hasattr(x, "value") and isinstance(x, keras.Variable):
        x = x.value
    if type(x).__module__.startswith("torch"):  # the torch backend's tensor, read through DLPack
        x = x.detach()
        if str(x.dtype) in ("torch.float16", "torch.bfloat16"):
            x = x.float()  # numpy has no bfloat16, as in the torch frontend
        return np.from_dlpack(x.cpu())
    return np.asarray(keras.ops.convert_to_numpy(x))


@contextlib.contextmanager
def quiet_numpy_copy() -> Iterator[None]:
    """Silence numpy 2's note that a torch tensor's ``__array__`` takes no ``copy`` keyword, which
    Keras's own code (saving, ``set_weights``) raises on the torch backend once per tensor: the
    user cannot act on it, and cuttree's own conversions avoid it (:func:`to_numpy`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy keyword", DeprecationWarning)
        yield


def model_input(model: Any, x: Any) -> Any:
    """``x`` in the structure ``model`` was built with: one array goes in a list of one for a model
    built with ``inputs=[...]`` (as legacy ``.h5`` files are), so that Keras does not warn, on
    every call cuttree makes, that the structures differ.

    >>> i = keras.Input((2,))
    >>> type(model_input(keras.Model([i], i), np.zeros((1, 2)))).__name__, model_input(keras.Model(i, i), 1)
    ('list', 1)
    """
    try:
        built = model.input
    except (AttributeError, ValueError):  # a subclassed or unbuilt model: no structure to match
        return x
    return [x] if isinstance(built, list) and len(built) == 1 and not isinstance(x, list | tuple) else x


def batches(data: Any, cfg: Config, need_labels: bool, batch_size: int = 64) -> Iterator[tuple[np.ndarray, Any]]:
    """``(x, y)`` numpy batches up to ``calib_samples`` samples; at least ``min_samples`` of them."""
    if data is None:
        raise ValueError(
            f"criterion '{cfg.criterion}' needs calibration data; pass calib_data= (an iterable of (x, y) batches "
            "or an (x, y) pair of arrays) or use a data-free criterion (l1, l2, bn_scale, random)"
        )
    if isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "shape") and not isinstance(data[0], tuple):
        xs, ys = np.asarray(data[0]), data[1]
        data = [
            (xs[i : i + batch_size], None if ys is None else np.asarray(ys)[i : i + batch_size])
            for i in range(0, len(xs), batch_size)
        ]
    elif hasattr(data, "shape"):
        xs = np.asarray(data)
        data = [(xs[i : i + batch_size], None) for i in range(0, len(xs), batch_size)]

    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for batch in data:
            if isinstance(batch, list | tuple):
                x, y = batch[0], batch[1] if len(batch) > 1 else None
            else:
                x, y = batch, None
            if need_labels and y is None:
                raise ValueError(f"criterion '{cfg.criterion}' needs labels; give calibration batches as (x, y) pairs")
            yield to_numpy(x), (to_numpy(y) if y is not None else None)

    yield from capped(pairs(), cfg.calib_samples, cfg.min_samples)


def criterion_inputs(
    model: Any, tr: Tracer, graph: DependencyGraph, cfg: Config, data: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The statistics the criterion needs and the groups' weights, by weight name, as numpy."""
    members = {m.tensor for g in graph.groups for m in g.members}
    variables = {
        tr.var_name[id(v)]: v
        for layer in tr.layers.values()
        for v in getattr(layer, "weights", [])
        if id(v) in tr.var_name
    }
    weights = {n: to_numpy(variables[n]) for n in members if variables[n].trainable}
    needs = REGISTRY[cfg.criterion].needs
    if needs in ("activations", "gradients") and len(model.inputs) > 1:
        raise ValueError(
            f"criterion '{cfg.criterion}' on a Keras model with {len(model.inputs)} inputs is not supported yet; "
            "use a data-free criterion (l1, l2, bn_scale)"
        )
    if needs in ("input_norms", "input_moments", "hessian"):
        raise ValueError(
            f"criterion '{cfg.criterion}' scores channels of torch models only so far; on a Keras model use "
            "activation or taylor (data-driven) or l1"
        )
    extra: dict[str, np.ndarray] = {}
    if needs == "norm_scales":
        for g in graph.groups:
            for m in g.members:
                layer = tr.layers[tr.roles[m.tensor].layer]
                scale = rule_for(layer).scale
                if scale is not None and getattr(layer, scale, None) is variables[m.tensor]:
                    extra[f"{m.tensor}@{m.dim}"] = to_numpy(variables[m.tensor]).reshape(-1)
    elif needs == "activations":
        extra = activations(model, tr, graph, cfg, data)
    elif needs == "gradients":
        grads = gradients(model, tr, cfg, data)
        extra = {k: v for k, v in grads.items() if k in weights}
    return extra, weights


def activations(model: Any, tr: Tracer, graph: DependencyGraph, cfg: Config, data: Any) -> dict[str, np.ndarray]:
    """Mean |output| per output channel of every producer layer, keyed ``"kernel name@dim"``."""
    wanted: dict[str, tuple[str, int]] = {}
    for g in graph.groups:
        for m in g.members:
            role = tr.roles[m.tensor]
            if role.producer and role.out_dim == m.dim and m.tensor.endswith("kernel"):
                wanted[role.layer] = (m.tensor, m.dim)
    axis = {
        c.path: next((d for d, lab in enumerate(c.out_labels[0]) if lab is not None), -1)
        for c in tr.calls
        if c.path in wanted
    }
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for x, _ in batches(data, cfg, need_labels=False):
        _, seen = run_recording(model, [x], set(wanted))
        for path, out in seen.items():
            a = np.abs(to_numpy(out))
            d = axis[path] % a.ndim
            a = np.moveaxis(a, d, 0).reshape(a.shape[d], -1)
            sums[path] = sums.get(path, 0) + a.sum(1, dtype=np.float64)
            counts[path] = counts.get(path, 0) + a.shape[1]
    return {f"{t}@{d}": sums[p] / counts[p] for p, (t, d) in wanted.items() if p in sums}


def gradients(model: Any, tr: Tracer, cfg: Config, data: Any) -> dict[str, np.ndarray]:
    """Summed loss gradients of every trainable weight over the calibration data, per backend."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=not _softmax_output(model))
    names = {id(v): tr.var_name[id(v)] for v in model.trainable_variables if id(v) in tr.var_name}
    trainable = [v for v in model.trainable_variables if id(v) in names]
    total: dict[str, np.ndarray] = {}
    backend = keras.backend.backend()
    for x, y in batches(data, cfg, need_labels=True):
        if backend == "torch":
            import torch

            params = [v.value for v in trainable]
            loss = loss_fn(torch.as_tensor(y), model(model_input(model, x), training=False))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        elif backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(model_input(model, x), training=False))
            grads = tape.gradient(loss, [v.value for v in trainable])
        elif backend == "jax":
            import jax

            tv = [v.value for v in trainable]
            ntv = [v.value for v in model.non_trainable_variables]

            def f(tv: list[Any], ntv: list[Any] = ntv, x: Any = x, y: Any = y) -> Any:
                out, _ = model.stateless_call(tv, ntv, model_input(model, x), training=False)
                return loss_fn(y, out)

            grads = jax.grad(f)(tv)
        else:
            raise ValueError(
                f"criterion taylor: backend '{backend}' has no gradient path; use torch, tensorflow or jax"
            )
        for v, g in zip(trainable, grads, strict=True):
            if g is not None:
                n = names[id(v)]
                total[n] = total.get(n, 0) + to_numpy(g).astype(np.float64)
    return total


def _softmax_output(model: Any) -> bool:
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    return getattr(act, "__name__", "") == "softmax" or type(last).__name__ == "Softmax"
