"""The Keras layer-rules table: how channels flow through each layer type, and how its config
follows new widths.

A :class:`LayerRule` has a ``propagate`` function (input labels → output labels, recording
unions and MAC terms on the tracer), the layer's own output-channel dims per variable attribute
(for naming groups and ``ignore``), whether it is a producer (conv, dense: the natural name of
a group), the attribute of a norm layer's γ (``bn_scale``), and ``update``, which brings the
layer's config in line with its sliced weights before the model is rebuilt. Rules are looked
up by class name along the MRO (subclasses are covered). A layer without a rule pins every
channel it touches, with a warning naming it.

Channels-last and channels-first layers are both read from their ``data_format``.

>>> rule_for_name("Conv2D").out_dims, rule_for_name("Conv2D").producer
({'kernel': -1, 'bias': 0}, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cuttree.core.labels import Label, Pin
from cuttree.frontends.keras.graph import Call, Tracer, add_macs, prod

Labels = tuple[Label, ...]
Propagate = Callable[[Tracer, Call], list[Labels]]
Update = Callable[[dict[str, Any], Any, list[np.ndarray], list[tuple[int, ...]]], None]


def _no_update(cfg: dict[str, Any], layer: Any, new: list[np.ndarray], out_shapes: list[tuple[int, ...]]) -> None:
    """Layers that infer their sizes from their inputs when built need no config change."""


@dataclass(frozen=True)
class LayerRule:
    """How one Keras layer type relates to channels."""

    propagate: Propagate | None = None
    out_dims: Mapping[str, int] = field(default_factory=dict)
    producer: bool = False
    scale: str | None = None
    update: Update = _no_update


LAYER_RULES: dict[str, LayerRule] = {}
_DEFAULT = LayerRule()


def layer_rule(*names: str, **kwargs: Any) -> Callable[[Propagate], Propagate]:
    """Register the decorated propagation function (and the rule's fields) for Keras class names."""

    def deco(fn: Propagate) -> Propagate:
        for n in names:
            if n in LAYER_RULES:
                warnings.warn(f"layer rule for {n} replaced by {fn.__qualname__}", stacklevel=2)
            LAYER_RULES[n] = LayerRule(propagate=fn, **kwargs)
        return fn

    return deco


def rule_for_name(name: str) -> LayerRule:
    return LAYER_RULES.get(name, _DEFAULT)


def rule_for(layer: Any) -> LayerRule:
    """The rule of ``layer``'s class or its nearest registered base class."""
    for t in type(layer).__mro__:
        if t.__name__ in LAYER_RULES:
            return LAYER_RULES[t.__name__]
    return _DEFAULT


def _axis(layer: Any, rank: int, default: int = -1) -> int:
    """The channel axis of a ``rank``-dim tensor for ``layer`` (its data_format, or ``axis``)."""
    fmt = getattr(layer, "data_format", None)
    ax = 1 if fmt == "channels_first" else default
    return ax % rank


def _index(layer: Any, var: Any) -> int:
    return next(i for i, v in enumerate(layer.weights) if v is var)


def _set(key: str, attr: str, dim: int = -1) -> Update:
    """An updater that sets ``cfg[key]`` to the size of ``attr``'s ``dim`` after slicing."""

    def update(cfg: dict[str, Any], layer: Any, new: list[np.ndarray], out_shapes: list[tuple[int, ...]]) -> None:
        cfg[key] = int(new[_index(layer, getattr(layer, attr))].shape[dim])

    return update


def _pin_window(tr: Tracer, kernel: tuple[Label, ...]) -> None:
    """A kernel's window dims (all but the last two) are fixed sizes, never channels."""
    for lab in kernel[:-2]:
        tr.state.pin(lab, Pin.FIXED)


# --- producers ------------------------------------------------------------------------------


def _conv_update(cfg: dict[str, Any], layer: Any, new: list[np.ndarray], out_shapes: list[tuple[int, ...]]) -> None:
    filters = int(new[_index(layer, layer.kernel)].shape[-1])
    if int(cfg.get("groups", 1)) > 1 and int(cfg["groups"]) == int(cfg["filters"]):
        cfg["groups"] = filters  # depthwise as a grouped conv: one group per channel
    cfg["filters"] = filters


@layer_rule("Conv1D", "Conv2D", "Conv3D", out_dims={"kernel": -1, "bias": 0}, producer=True, update=_conv_update)
def conv(tr: Tracer, call: Call) -> list[Labels]:
    """Convolution: kernel (*k, in/groups, out). With groups equal to the channels it is a
    depthwise conv (channel c in, channel c out); other grouped convs are kept whole."""
    layer, x, xs = call.layer, call.in_labels[0], call.in_shapes[0]
    ax = _axis(layer, len(xs))
    k = tr.w(layer.kernel)
    _pin_window(tr, k)
    b = tr.w(layer.bias)[0] if layer.use_bias else None
    groups = int(getattr(layer, "groups", 1))
    out: list[Label] = [None] * len(call.out_shapes[0])
    if b is not None:
        tr.state.unify(k[-1], b)
    if groups == 1:
        tr.state.unify(x[ax], k[-2])
        out[ax] = k[-1]
    elif groups == xs[ax] == int(layer.filters):  # depthwise, written as a grouped conv (ConvNeXt)
        tr.state.unify(x[ax], k[-1])
        out[ax] = k[-1]
    else:
        for lab in (x[ax], k[-2], k[-1], b):
            tr.state.pin(lab, Pin.OP)
    ys = call.out_shapes[0]
    spatial = prod([s for i, s in enumerate(ys) if i != ax])
    kshape = tr.shapes[tr.var_name[id(layer.kernel)]]
    add_macs(tr, spatial * prod(kshape), k[-2], k[-1])
    return [tuple(out)]


@layer_rule(
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
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


@layer_rule("DepthwiseConv1D", "DepthwiseConv2D", out_dims={"kernel": -2, "bias": 0}, producer=True)
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
    "SeparableConv1D",
    "SeparableConv2D",
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


@layer_rule("Dense", out_dims={"kernel": -1, "bias": 0}, producer=True, update=_set("units", "kernel"))
def dense(tr: Tracer, call: Call) -> list[Labels]:
    """Dense on the last axis: kernel (in, units)."""
    layer, x, xs = call.layer, call.in_labels[0], call.in_shapes[0]
    k = tr.w(layer.kernel)
    tr.state.unify(x[-1], k[0])
    if layer.use_bias:
        tr.state.unify(k[1], tr.w(layer.bias)[0])
    add_macs(tr, prod(xs) * int(layer.units), k[0], k[1])
    return [(*x[:-1], k[1])]


@layer_rule("Embedding", out_dims={"embeddings": 1}, producer=True, update=_set("output_dim", "embeddings"))
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
    "BatchNormalization",
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


@layer_rule("LayerNormalization", "RMSNormalization", out_dims={"gamma": 0, "beta": 0}, scale="gamma")
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


def _group_norm_update(
    cfg: dict[str, Any], layer: Any, new: list[np.ndarray], out_shapes: list[tuple[int, ...]]
) -> None:
    if layer.groups not in (1, -1) and new:
        cfg["groups"] = int(new[0].shape[0])  # one channel per group stays one channel per group


@layer_rule("GroupNormalization", out_dims={"gamma": 0, "beta": 0}, scale="gamma", update=_group_norm_update)
def group_norm(tr: Tracer, call: Call) -> list[Labels]:
    """Prunable with one group or one channel per group (as in torch), otherwise kept whole."""
    layer, x, xs = call.layer, call.in_labels[0], call.in_shapes[0]
    ax = int(layer.axis) % len(xs)
    c = xs[ax]
    ok = layer.groups in (1, -1, c)
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


@layer_rule("LayerScale", out_dims={"gamma": 0}, update=_set("projection_dim", "gamma", 0))
def layer_scale(tr: Tracer, call: Call) -> list[Labels]:
    """ConvNeXt's per-channel scale γ ⊙ x on the last axis."""
    x = call.in_labels[0]
    tr.state.unify(x[-1], tr.w(call.layer.weights[0])[0])
    return [x]


@layer_rule("PReLU", out_dims={"alpha": -1})
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


@layer_rule("Normalization", "UnitNormalization")
def fixed_channels(tr: Tracer, call: Call) -> list[Labels]:
    """Preprocessing statistics (or an L2 norm across channels) fix the channel count."""
    x = call.in_labels[0]
    for lab in x:
        tr.state.pin(lab, Pin.FIXED)
    for v in call.layer.weights:
        for lab in tr.w(v):
            tr.state.pin(lab, Pin.FIXED)
    return [x]


@layer_rule("Rescaling")
def rescaling(tr: Tracer, call: Call) -> list[Labels]:
    """A scalar scale/offset passes channels through; per-channel ones fix them."""
    x = call.in_labels[0]
    if np.ndim(call.layer.scale) or np.ndim(call.layer.offset):
        for lab in x:
            tr.state.pin(lab, Pin.FIXED)
    return [x]


# --- shape-only and elementwise layers ---------------------------------------------------------


@layer_rule(
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
    "StochasticDepth",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "UpSampling1D",
    "UpSampling2D",
    "UpSampling3D",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "Resizing",
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


@layer_rule("Softmax")
def softmax(tr: Tracer, call: Call) -> list[Labels]:
    """Softmax over an axis couples its positions: that axis is kept whole."""
    x = call.in_labels[0]
    axes = call.layer.axis if isinstance(call.layer.axis, list | tuple) else [call.layer.axis]
    for a in axes:
        tr.state.pin(x[int(a) % len(x)], Pin.OP)
    return [tuple(None if i in {int(a) % len(x) for a in axes} else lab for i, lab in enumerate(x))]


@layer_rule(
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
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


@layer_rule("Flatten", "Reshape")
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


def _reshape_update(cfg: dict[str, Any], layer: Any, new: list[np.ndarray], out_shapes: list[tuple[int, ...]]) -> None:
    if "target_shape" in cfg:
        cfg["target_shape"] = tuple(out_shapes[0][1:])


LAYER_RULES["Reshape"] = LayerRule(propagate=reshape, update=_reshape_update)


@layer_rule("Permute")
def permute(tr: Tracer, call: Call) -> list[Labels]:
    x = call.in_labels[0]
    return [(x[0], *(x[int(d)] for d in call.layer.dims))]


@layer_rule("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
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


@layer_rule("Concatenate")
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


@layer_rule("MultiHeadAttention")
def attention(tr: Tracer, call: Call) -> list[Labels]:
    """Kept whole for now (heads are issue 15): every channel it touches stays; MACs are counted."""
    layer = call.layer
    q = call.in_shapes[0]
    v = call.in_shapes[1] if len(call.in_shapes) > 1 else q
    k = call.in_shapes[2] if len(call.in_shapes) > 2 else v
    h, dk = int(layer.num_heads), int(layer.key_dim)
    dv = int(layer.value_dim or dk)
    t, s = prod(q[1:-1]), prod(v[1:-1])
    out_dim = call.out_shapes[0][-1]
    macs = t * q[-1] * h * dk + s * k[-1] * h * dk + s * v[-1] * h * dv + h * t * s * (dk + dv) + t * h * dv * out_dim
    add_macs(tr, q[0] * macs)
    return _pin_all(tr, call)


def _pin_all(tr: Tracer, call: Call) -> list[Labels]:
    from cuttree.frontends.keras.graph import _pin_through

    return _pin_through(tr, call)


@layer_rule("InputLayer")
def input_layer(tr: Tracer, call: Call) -> list[Labels]:
    return [call.in_labels[0]] if call.in_labels else [(None,) * len(s) for s in call.out_shapes]
