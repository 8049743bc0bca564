"""Layer rules for the layers that hold channel weights: convolutions (plain, transposed,
depthwise, separable), Dense, Embedding, the norms, per-channel scales.

Registered into :data:`cuttree.frontends.keras.rules.base.LAYER_RULES` on import.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from keras import layers as L
from keras.src.applications.convnext import LayerScale

from cuttree.core.labels import Label, Pin
from cuttree.frontends.keras.rules.base import Labels, Shapes, _axis, _index, _set, layer_rule
from cuttree.frontends.keras.tracer import Call, Tracer, add_macs, prod


def _pin_window(tr: Tracer, kernel: tuple[Label, ...]) -> None:
    """A kernel's window dims (all but the last two) are fixed sizes, never channels."""
    for lab in kernel[:-2]:
        tr.state.pin(lab, Pin.FIXED)


# --- producers ------------------------------------------------------------------------------


def _conv_update(cfg: dict[str, Any], layer: Any, new: list[np.ndarray], shapes: Shapes) -> None:
    kernel = new[_index(layer, layer.kernel)]
    if int(cfg.get("groups", 1)) > 1:  # whole groups may have gone: the inputs left, per group's width
        cfg["groups"] = shapes.ins[0][_axis(layer, len(shapes.ins[0]))] // int(kernel.shape[-2])
    cfg["filters"] = int(kernel.shape[-1])


@layer_rule(L.Conv1D, L.Conv2D, L.Conv3D, out_dims={"kernel": -1, "bias": 0}, producer=True, update=_conv_update)
def conv(tr: Tracer, call: Call) -> list[Labels]:
    """Convolution: kernel (*k, in/groups, out). With groups equal to the channels it is a
    depthwise conv (channel c in, channel c out). Other grouped convs have two units, as in the
    torch frontend: whole groups (a group's input and output channels together), and in the
    second walk (``tr.group_width``) the same position of the width inside every group."""
    layer, x, xs = call.layer, call.in_labels[0], call.in_shapes[0]
    ax = _axis(layer, len(xs))
    k = tr.w(layer.kernel)
    _pin_window(tr, k)
    b = tr.w(layer.bias)[0] if layer.use_bias else None
    groups, filters = int(getattr(layer, "groups", 1)), int(layer.filters)
    out: list[Label] = [None] * len(call.out_shapes[0])
    if b is not None:
        tr.state.unify(k[-1], b)
    if groups == 1:
        tr.state.unify(x[ax], k[-2])
    elif groups == xs[ax] == filters:  # depthwise, written as a grouped conv (ConvNeXt)
        tr.state.unify(x[ax], k[-1])
    elif not tr.group_width:
        ids = tr.state.fresh_unit(groups, "groups")
        tr.state.unify(x[ax], np.repeat(ids, xs[ax] // groups))
        tr.state.unify(k[-1], np.repeat(ids, filters // groups))
        tr.state.pin(k[-2], Pin.OP)
    else:
        ids_in = tr.state.fresh_unit(xs[ax] // groups, "width")
        tr.state.unify(x[ax], np.tile(ids_in, groups))
        tr.state.unify(k[-2], ids_in)
        tr.state.unify(k[-1], np.tile(tr.state.fresh_unit(filters // groups, "width"), groups))
    out[ax] = k[-1]
    ys = call.out_shapes[0]
    spatial = prod([s for i, s in enumerate(ys) if i != ax])
    kshape = tr.shapes[tr.var_name[id(layer.kernel)]]
    add_macs(tr, spatial * prod(kshape), k[-2], k[-1])
    return [tuple(out)]


@layer_rule(
    L.Conv1DTranspose,
    L.Conv2DTranspose,
    L.Conv3DTranspose,
    out_dims={"kernel": -2, "bias": 0},
    producer=True,
    update=_set("filters", "kernel", -2),
)
def conv_transpose(tr: Tracer, call: Call) -> list[Labels]:
    """Transposed convolution: kernel (*k, out, in)."""
    layer, x, xs = call.layer, call.in_labels[0], call.in_shapes[0]
    ax = _axis(layer, len(xs))
    k = tr.w(layer.kernel)
    _pin_window(tr, k)
    tr.state.unify(x[ax], k[-1])
    if layer.use_bias:
        tr.state.unify(k[-2], tr.w(layer.bias)[0])
    out: list[Label] = [None] * len(call.out_shapes[0])
    out[ax] = k[-2]
    kshape = tr.shapes[tr.var_name[id(layer.kernel)]]
    add_macs(tr, prod([s for i, s in enumerate(xs) if i != ax]) * prod(kshape), k[-2], k[-1])
    return [tuple(out)]


def _depthwise(tr: Tracer, x: Label, k: tuple[Label, ...], dm: int) -> Label:
    """Depthwise kernel (*k, in, multiplier): output channel c·dm + m follows input channel c."""
    tr.state.unify(x, k[-2])
    if dm == 1:
        return k[-2]
    tr.state.pin(k[-1], Pin.FIXED)  # the multiplier itself is a fixed number
    return None if k[-2] is None else np.repeat(k[-2], dm)


@layer_rule(L.DepthwiseConv1D, L.DepthwiseConv2D, out_dims={"kernel": -2, "bias": 0}, producer=True)
def depthwise(tr: Tracer, call: Call) -> list[Labels]:
    layer, x, xs = call.layer, call.in_labels[0], call.in_shapes[0]
    ax = _axis(layer, len(xs))
    k = tr.w(layer.kernel)
    _pin_window(tr, k)
    y = _depthwise(tr, x[ax], k, int(layer.depth_multiplier))
    if layer.use_bias:
        tr.state.unify(y, tr.w(layer.bias)[0])
    out: list[Label] = [None] * len(call.out_shapes[0])
    out[ax] = y
    ys = call.out_shapes[0]
    kshape = tr.shapes[tr.var_name[id(layer.kernel)]]
    add_macs(tr, prod([s for i, s in enumerate(ys) if i != ax]) * prod(kshape), k[-2])
    return [tuple(out)]


@layer_rule(
    L.SeparableConv1D,
    L.SeparableConv2D,
    out_dims={"pointwise_kernel": -1, "bias": 0},
    producer=True,
    update=_set("filters", "pointwise_kernel"),
)
def separable(tr: Tracer, call: Call) -> list[Labels]:
    """Depthwise then pointwise: the input's channels, the middle ones, and the pointwise outputs."""
    layer, x, xs = call.layer, call.in_labels[0], call.in_shapes[0]
    ax = _axis(layer, len(xs))
    dk, pk = tr.w(layer.depthwise_kernel), tr.w(layer.pointwise_kernel)
    _pin_window(tr, dk)
    _pin_window(tr, pk)
    mid = _depthwise(tr, x[ax], dk, int(layer.depth_multiplier))
    tr.state.unify(mid, pk[-2])
    if layer.use_bias:
        tr.state.unify(pk[-1], tr.w(layer.bias)[0])
    out: list[Label] = [None] * len(call.out_shapes[0])
    out[ax] = pk[-1]
    ys = call.out_shapes[0]
    spatial = prod([s for i, s in enumerate(ys) if i != ax])
    add_macs(tr, spatial * prod(tr.shapes[tr.var_name[id(layer.depthwise_kernel)]]), dk[-2])
    add_macs(tr, spatial * prod(tr.shapes[tr.var_name[id(layer.pointwise_kernel)]]), pk[-2], pk[-1])
    return [tuple(out)]


@layer_rule(L.Dense, out_dims={"kernel": -1, "bias": 0}, producer=True, update=_set("units", "kernel"))
def dense(tr: Tracer, call: Call) -> list[Labels]:
    """Dense on the last axis: kernel (in, units)."""
    layer, x, xs = call.layer, call.in_labels[0], call.in_shapes[0]
    k = tr.w(layer.kernel)
    tr.state.unify(x[-1], k[0])
    if layer.use_bias:
        tr.state.unify(k[1], tr.w(layer.bias)[0])
    add_macs(tr, prod(xs) * int(layer.units), k[0], k[1])
    return [(*x[:-1], k[1])]


@layer_rule(L.Embedding, out_dims={"embeddings": 1}, producer=True, update=_set("output_dim", "embeddings"))
def embedding(tr: Tracer, call: Call) -> list[Labels]:
    e = tr.w(call.layer.embeddings)
    tr.state.pin(e[0], Pin.FIXED)  # the vocabulary is indexed by the input ids
    return [(*call.in_labels[0], e[1])]


# --- norms and per-channel scales ----------------------------------------------------------------


def _norm_axis(layer: Any, rank: int) -> int | None:
    axis = layer.axis
    if isinstance(axis, list | tuple):
        if len(axis) != 1:
            return None
        axis = axis[0]
    return int(axis) % rank


@layer_rule(
    L.BatchNormalization,
    out_dims={"gamma": 0, "beta": 0, "moving_mean": 0, "moving_variance": 0},
    scale="gamma",
)
def batch_norm(tr: Tracer, call: Call) -> list[Labels]:
    layer, x = call.layer, call.in_labels[0]
    ax = _norm_axis(layer, len(x))
    for v in layer.weights:
        lab = tr.w(v)[0] if tr.w(v) else None
        if ax is None:
            tr.state.pin(lab, Pin.OP)
        else:
            tr.state.unify(x[ax], lab)
    return [x]


def _rms_update(cfg: dict[str, Any], layer: Any, new: list[np.ndarray], shapes: Shapes) -> None:
    """An RMS norm's scale × √(d / d_kept), as the torch frontend does (``ModuleRule.rms``): the
    statistic of the channels left then equals the full one's where the removed ones are zero."""
    i = _index(layer, layer.scale)
    new[i] = new[i] * np.float32(math.sqrt(int(layer.scale.shape[0]) / new[i].shape[0]))


@layer_rule(L.LayerNormalization, out_dims={"gamma": 0, "beta": 0}, scale="gamma")
def layer_norm(tr: Tracer, call: Call) -> list[Labels]:
    """Layer norm over one axis: its γ/β follow that axis (as the torch frontend's layer_norm)."""
    layer, x = call.layer, call.in_labels[0]
    ax = _norm_axis(layer, len(x))
    if ax is None:
        for lab in x:
            tr.state.pin(lab, Pin.OP)
    for v in layer.weights:
        lab = tr.w(v)[0] if tr.w(v) else None
        if ax is not None:
            tr.state.unify(x[ax], lab)
        else:
            tr.state.pin(lab, Pin.OP)
    return [x]


layer_rule(L.RMSNormalization, out_dims={"scale": 0}, scale="scale", update=_rms_update)(layer_norm)


def _group_norm_update(cfg: dict[str, Any], layer: Any, new: list[np.ndarray], shapes: Shapes) -> None:
    if layer.groups not in (1, -1) and new:  # whole groups went: each keeps its size
        cfg["groups"] = int(new[0].shape[0]) // (int(layer.weights[0].shape[0]) // int(layer.groups))


@layer_rule(L.GroupNormalization, out_dims={"gamma": 0, "beta": 0}, scale="gamma", update=_group_norm_update)
def group_norm(tr: Tracer, call: Call) -> list[Labels]:
    """As in torch: with one group or one channel per group, prunable channel by channel; with
    groups of several channels and a γ or β, whole groups are the unit (removing all of a group
    changes no other group's statistics); without either, kept whole."""
    layer, x, xs = call.layer, call.in_labels[0], call.in_shapes[0]
    ax = int(layer.axis) % len(xs)
    c = xs[ax]
    ok = layer.groups in (1, -1, c) or (bool(layer.weights) and x[ax] is not None)
    if ok and layer.groups not in (1, -1, c):
        tr.state.unify(x[ax], np.repeat(tr.state.fresh_unit(int(layer.groups), "groups"), c // int(layer.groups)))
    for v in layer.weights:
        lab = tr.w(v)[0] if tr.w(v) else None
        if ok:
            tr.state.unify(x[ax], lab)
        else:
            tr.state.pin(lab, Pin.OP)
    if not ok:
        tr.state.pin(x[ax], Pin.OP)
        return [tuple(None if i == ax else lab for i, lab in enumerate(x))]
    return [x]


@layer_rule(LayerScale, out_dims={"gamma": 0}, update=_set("projection_dim", "gamma", 0))
def layer_scale(tr: Tracer, call: Call) -> list[Labels]:
    """ConvNeXt's per-channel scale γ ⊙ x on the last axis."""
    x = call.in_labels[0]
    tr.state.unify(x[-1], tr.w(call.layer.weights[0])[0])
    return [x]


@layer_rule(L.PReLU, out_dims={"alpha": -1})
def prelu(tr: Tracer, call: Call) -> list[Labels]:
    """α has the input's shape (minus batch); its channel dim follows the input's channels."""
    x = call.in_labels[0]
    alpha = tr.w(call.layer.alpha)
    for d, lab in enumerate(alpha):
        if x[d + 1] is not None:
            tr.state.unify(x[d + 1], lab)
        else:
            tr.state.pin(lab, Pin.FIXED)
    return [x]


@layer_rule(L.Normalization, L.UnitNormalization)
def fixed_channels(tr: Tracer, call: Call) -> list[Labels]:
    """Preprocessing statistics (or an L2 norm across channels) fix the channel count."""
    x = call.in_labels[0]
    for lab in x:
        tr.state.pin(lab, Pin.FIXED)
    for v in call.layer.weights:
        for lab in tr.w(v):
            tr.state.pin(lab, Pin.FIXED)
    return [x]


@layer_rule(L.Rescaling)
def rescaling(tr: Tracer, call: Call) -> list[Labels]:
    """A scalar scale/offset passes channels through; per-channel ones fix them."""
    x = call.in_labels[0]
    if np.ndim(call.layer.scale) or np.ndim(call.layer.offset):
        for lab in x:
            tr.state.pin(lab, Pin.FIXED)
    return [x]
