"""The state of one walk over a Keras model's graph, which the layer rules read and write.

:mod:`~cuttree.frontends.keras.graph` walks the model and calls each layer's rule
(:mod:`~cuttree.frontends.keras.rules`) with a :class:`Call`; the rule reads and records labels on
the :class:`Tracer`. Both depend on this module, never on each other's internals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cuttree.core.grouping import Role
from cuttree.core.labels import Label, LabelState, MacTerm, Pin


@dataclass
class Call:
    """One layer call of the walk: its inputs' and outputs' shapes and labels."""

    layer: Any
    path: str
    in_shapes: list[tuple[int, ...]]
    in_labels: list[tuple[Label, ...]]
    out_shapes: list[tuple[int, ...]] = field(default_factory=list)
    out_labels: list[tuple[Label, ...]] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tracer:
    """The walk's state: labels of every weight, every call, and what could not be traced."""

    state: LabelState = field(default_factory=LabelState)
    weights: dict[str, tuple[Label, ...]] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    var_name: dict[int, str] = field(default_factory=dict)  # id(variable) -> weight name
    layers: dict[str, Any] = field(default_factory=dict)  # path -> layer (every traced leaf layer)
    layer_weights: dict[str, list[str]] = field(default_factory=dict)  # path -> names, in layer.weights order
    calls: list[Call] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)  # path -> class name of layers without a rule
    whole: dict[str, str] = field(default_factory=dict)  # path -> class name of layers their rule keeps whole
    pinned_out: set[str] = field(default_factory=set)  # paths whose own outputs stay (``ignore``)
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    nested_inputs: dict[str, list[tuple[tuple[int, ...], tuple[Label, ...]]]] = field(default_factory=dict)
    # Grouped convs are labelled by whole groups; in the second walk (``group_width``) by the
    # positions of the width inside every group (see :func:`cuttree.core.grouping.with_width_groups`).
    group_width: bool = False
    # Set by the first walk where grouped-query attention has several key/value heads: the second
    # walk then also labels the query heads of every kv head.
    grouped_heads: bool = False

    def w(self, var: Any) -> tuple[Label, ...]:
        """The labels of one of a layer's variables."""
        return self.weights[self.var_name[id(var)]]


def pin_through(tr: Tracer, call: Call) -> list[tuple[Label, ...]]:
    """A layer without a rule: whatever it touches keeps its size; its outputs are fixed."""
    for lab in call.in_labels:
        for x in lab:
            tr.state.pin(x, Pin.OP)
    for name in tr.layer_weights.get(call.path, []):
        for x in tr.weights[name]:
            tr.state.pin(x, Pin.OP)
    return [(None,) * len(s) for s in call.out_shapes]


def macs_of(tr: Tracer) -> int:
    """MACs of the walked forward (batch as given), from the rules' MAC terms."""
    return sum(t.macs for t in tr.state.mac_terms)


def add_macs(tr: Tracer, macs: int, *factors: Label) -> None:
    """Record ``macs`` multiply-accumulates that scale with the kept fraction of each factor."""
    if macs:
        tr.state.mac_terms.append(MacTerm(int(macs), [f for f in factors if f is not None]))


def prod(xs: Sequence[int]) -> int:
    return math.prod(int(x) for x in xs)
