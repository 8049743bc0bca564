"""Layer rules for layers without channel weights: elementwise and spatial-only layers, global
pooling, Flatten/Reshape/Permute, merges and Concatenate.

Registered into :data:`cuttree.frontends.keras.rules.base.LAYER_RULES` on import.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import layers as L
from keras.src.applications.convnext import StochasticDepth
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
from keras.src.ops import nn as knn
from keras.src.ops import numpy as knp

from cuttree.core.labels import Label, Pin
from cuttree.frontends.keras.rules.base import LAYER_RULES, Labels, LayerRule, Shapes, _axis, _pin_all, layer_rule
from cuttree.frontends.keras.tracer import Call, Tracer

_ELEMENTWISE_OPS = (knp.Add, knp.Subtract, knp.Multiply, knp.Maximum, knp.Minimum)

# --- shape-only and elementwise layers ---------------------------------------------------------


@layer_rule(
    L.Activation,
    L.ReLU,
    L.LeakyReLU,
    L.ELU,
    L.Dropout,
    L.SpatialDropout1D,
    L.SpatialDropout2D,
    L.SpatialDropout3D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.AlphaDropout,
    L.ActivityRegularization,
    L.Identity,
    StochasticDepth,
    L.ZeroPadding1D,
    L.ZeroPadding2D,
    L.ZeroPadding3D,
    L.Cropping1D,
    L.Cropping2D,
    L.Cropping3D,
    L.UpSampling1D,
    L.UpSampling2D,
    L.UpSampling3D,
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.MaxPooling3D,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.AveragePooling3D,
    L.Resizing,
)
def passthrough(tr: Tracer, call: Call) -> list[Labels]:
    """Elementwise, or changing spatial sizes only: channel labels pass; a tracked dim whose
    size changes (padding along channels) is pinned."""
    x, xs, ys = call.in_labels[0], call.in_shapes[0], call.out_shapes[0]
    if len(xs) != len(ys):
        return _pin_all(tr, call)
    out = []
    for lab, a, b in zip(x, xs, ys, strict=True):
        if lab is not None and a != b:
            tr.state.pin(lab, Pin.OP)
            lab = None
        out.append(lab)
    return [tuple(out)]


@layer_rule(L.Softmax, knn.Softmax)
def softmax(tr: Tracer, call: Call) -> list[Labels]:
    """Softmax over an axis couples its positions: that axis is kept whole."""
    x = call.in_labels[0]
    axes = call.layer.axis if isinstance(call.layer.axis, list | tuple) else [call.layer.axis]
    for a in axes:
        tr.state.pin(x[int(a) % len(x)], Pin.OP)
    return [tuple(None if i in {int(a) % len(x) for a in axes} else lab for i, lab in enumerate(x))]


@layer_rule(
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.GlobalMaxPooling3D,
)
def global_pool(tr: Tracer, call: Call) -> list[Labels]:
    x, xs = call.in_labels[0], call.in_shapes[0]
    ax = _axis(call.layer, len(xs))
    if len(call.out_shapes[0]) == len(xs):  # keepdims
        return [tuple(lab if i in (0, ax) else None for i, lab in enumerate(x))]
    return [(x[0], x[ax])]


def _grid(shape: tuple[int, ...], labs: Labels) -> np.ndarray | None:
    """Per-element labels of one sample (batch dim excluded): the one tracked dim broadcast."""
    tracked = [d for d, lab in enumerate(labs) if lab is not None]
    if not tracked:
        return None
    if len(tracked) > 1:
        raise ValueError("more than one tracked dim")
    d = tracked[0]
    view = [-1 if i == d else 1 for i in range(len(shape))]
    return np.broadcast_to(np.asarray(labs[d]).reshape(view), shape)


def _from_grid(tr: Tracer, g: np.ndarray) -> Labels | None:
    """The output labels if the grid varies along exactly one dim (that dim carries them), else None."""
    varying = [d for d in range(g.ndim) if g.shape[d] > 1 and not (g == g.take([0], axis=d)).all()]
    if len(varying) != 1:
        return None
    d = varying[0]
    line = g[tuple(slice(None) if i == d else 0 for i in range(g.ndim))]
    return tuple(line.copy() if i == d else None for i in range(g.ndim))


@layer_rule(L.Flatten)
def reshape(tr: Tracer, call: Call) -> list[Labels]:
    """Reshape of one sample, row-major: the tracked dim's labels move with its elements
    (Flatten after a conv gives each flattened position its channel's label)."""
    x, xs, ys = call.in_labels[0], call.in_shapes[0], call.out_shapes[0]
    if x[0] is not None:
        return _pin_all(tr, call)
    try:
        g = _grid(xs[1:], x[1:])
    except ValueError:
        return _pin_all(tr, call)
    if g is None:
        return [(None,) * len(ys)]
    if getattr(call.layer, "data_format", "channels_last") == "channels_first" and len(xs) > 2:
        g = np.moveaxis(g, 0, -1)  # Keras's Flatten puts channels last first
    found = _from_grid(tr, g.reshape(ys[1:]))
    if found is None:
        return _pin_all(tr, call)
    return [(None, *found)]


def _reshape_update(cfg: dict[str, Any], layer: Any, new: list[np.ndarray], shapes: Shapes) -> None:
    if "target_shape" in cfg:
        cfg["target_shape"] = tuple(shapes.outs[0][1:])


for _reshape in (L.Reshape, knp.Reshape):
    LAYER_RULES.register(_reshape, LayerRule(propagate=reshape, update=_reshape_update))


@layer_rule(L.Permute)
def permute(tr: Tracer, call: Call) -> list[Labels]:
    x = call.in_labels[0]
    return [(x[0], *(x[int(d)] for d in call.layer.dims))]


# Keras operations count too: ``x + 3.0`` in a functional model is the operation ``ops.numpy.Add``
# (``ops.numpy.Average`` is a reduction, not a merge: it has no rule).
@layer_rule(L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum, *_ELEMENTWISE_OPS)
def merge(tr: Tracer, call: Call) -> list[Labels]:
    """Elementwise with broadcasting: every input's tracked dims of equal size are one channel."""
    ys = call.out_shapes[0]
    out: list[Label] = [None] * len(ys)
    for d in range(1, len(ys) + 1):
        present = [
            (lab[-d], s[-d]) for lab, s in zip(call.in_labels, call.in_shapes, strict=True) if len(s) >= d and s[-d] > 1
        ]
        if not present:
            continue
        first = present[0][0]
        for lab, _ in present[1:]:
            tr.state.unify(first, lab)
        out[-d] = next((lab for lab, _ in present if lab is not None), None)
        if any(lab is None for lab, _ in present):
            out[-d] = None  # met an untracked input: pinned by the unify above
    return [tuple(out)]


@layer_rule(CustomScaleLayer)
def scaled_residual(tr: Tracer, call: Call) -> list[Labels]:
    """keras.applications' Inception-ResNet-v2 residual, ``x + scale · branch``: a merge (a user's
    class of the same name is another class, a layer without a rule)."""
    return merge(tr, call)


@layer_rule(L.Concatenate, knp.Concatenate)
def concatenate(tr: Tracer, call: Call) -> list[Labels]:
    """Concatenation along the channel axis stacks the inputs' labels (untracked parts fixed)."""
    ys = call.out_shapes[0]
    ax = int(call.layer.axis) % len(ys)
    out: list[Label] = [None] * len(ys)
    for d in range(len(ys)):
        labs = [lab[d] for lab in call.in_labels]
        if d == ax:
            if any(lab is not None for lab in labs):
                out[d] = np.concatenate(
                    [
                        lab if lab is not None else tr.state.filler(s[d])
                        for lab, s in zip(labs, call.in_shapes, strict=True)
                    ]
                )
            continue
        for lab in labs[1:]:
            tr.state.unify(labs[0], lab)
        out[d] = labs[0] if all(lab is not None for lab in labs) else None
    return [tuple(out)]


@layer_rule(L.InputLayer)
def input_layer(tr: Tracer, call: Call) -> list[Labels]:
    return [call.in_labels[0]] if call.in_labels else [(None,) * len(s) for s in call.out_shapes]
