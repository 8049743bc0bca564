"""The Keras layer-rules table: how channels flow through each layer type, and how its config
follows new widths.

A :class:`LayerRule` has a ``propagate`` function (input labels → output labels, recording
unions and MAC terms on the tracer), the layer's own output-channel dims per variable attribute
(for naming groups and ``ignore``), whether it is a producer (conv, dense: the natural name of
a group), the attribute of a norm layer's γ (``bn_scale``), and ``update``, which brings the
layer's config in line with its sliced weights before the model is rebuilt. Rules are keyed by
class and looked up along the MRO (subclasses are covered); the rules live in
:mod:`~cuttree.frontends.keras.rules.weighted`, :mod:`~cuttree.frontends.keras.rules.shapes` and
:mod:`~cuttree.frontends.keras.rules.attention`. A layer without a rule pins every
channel it touches, with a warning naming it.

Channels-last and channels-first layers are both read from their ``data_format``.

>>> import keras
>>> from cuttree.frontends.keras import rules  # registers the rules
>>> rule_for(keras.layers.Conv2D(8, 3)).out_dims, rule_for(keras.layers.Conv2D(8, 3)).producer
({'kernel': -1, 'bias': 0}, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cuttree.core.labels import Label
from cuttree.core.registry import Registry
from cuttree.frontends.keras.tracer import Call, Tracer, pin_through

Labels = tuple[Label, ...]
Propagate = Callable[[Tracer, Call], list[Labels]]


@dataclass(frozen=True)
class Shapes:
    """One layer call's input and output shapes after the plan (batch included), for ``update``."""

    ins: list[tuple[int, ...]]
    outs: list[tuple[int, ...]]


Update = Callable[[dict[str, Any], Any, list[np.ndarray], Shapes], None]


def _no_update(cfg: dict[str, Any], layer: Any, new: list[np.ndarray], shapes: Shapes) -> None:
    """Layers that infer their sizes from their inputs when built need no config change."""


@dataclass(frozen=True)
class LayerRule:
    """How one Keras layer type relates to channels."""

    propagate: Propagate | None = None
    out_dims: Mapping[str, int] = field(default_factory=dict)
    producer: bool = False
    scale: str | None = None
    update: Update = _no_update


LAYER_RULES: Registry[type, LayerRule] = Registry("layer rule")
_DEFAULT = LayerRule()


def layer_rule(*classes: type, **kwargs: Any) -> Callable[[Propagate], Propagate]:
    """Register the decorated propagation function (and the rule's fields) for Keras layer classes."""

    def make(fn: Propagate) -> LayerRule:
        return LayerRule(propagate=fn, **kwargs)

    return LAYER_RULES.decorator(*classes, make=make)


def rule_for(layer: Any) -> LayerRule:
    """The rule of ``layer``'s class or its nearest registered base class."""
    for t in type(layer).__mro__:
        if t in LAYER_RULES:
            return LAYER_RULES[t]
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

    def update(cfg: dict[str, Any], layer: Any, new: list[np.ndarray], shapes: Shapes) -> None:
        cfg[key] = int(new[_index(layer, getattr(layer, attr))].shape[dim])

    return update


def _pin_all(tr: Tracer, call: Call) -> list[Labels]:
    return pin_through(tr, call)
