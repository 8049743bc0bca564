"""Channel labels: the bookkeeping that the tracer fills while a model runs.

Every dimension of every parameter and buffer gets one *element id* per position. While the
model runs, each ATen op says how the positions of its inputs relate to those of its outputs
(:mod:`cuttree.graph.ops`); two positions that must be removed together are *unified*, and a
position that can never be removed is *pinned* to a sentinel that names the reason. A tensor
dimension whose positions are not tracked (batch, spatial, a model input's channels) has the
label ``None``: it is fixed, so any tracked dimension that meets it gets pinned.

Unions are only recorded here (two arrays at a time); the connected components are computed
once, vectorised, when the trace is finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import torch
from torch.utils.weak import WeakIdKeyDictionary

Label = np.ndarray | None
"""Per-position element ids of one tensor dimension, or ``None`` for an untracked dimension."""


class Pin(IntEnum):
    """Why a channel can never be removed: the reserved element ids of the sentinels."""

    OUTPUT = 0  #: it reaches a model output (class logits, per-pixel class maps)
    FIXED = 1  #: it meets a dimension of fixed size: a model input, a constant, a hard-coded shape
    OP = 2  #: an op cuttree cannot prune through (slicing a channel range, grouped conv, …)
    IGNORED = 3  #: the user asked to keep it (``ignore``)
    UNUSED = 4  #: the trace never reached the tensor


N_SENTINELS = len(Pin)


@dataclass
class MacTerm:
    """One multiply-accumulate count of the traced forward and the labels that scale it."""

    macs: int
    factors: list[np.ndarray]


@dataclass
class LabelState:
    """The tracer's working state: labels of live tensors, recorded unions, MAC terms."""

    next_id: int = N_SENTINELS
    union_a: list[np.ndarray] = field(default_factory=list)
    union_b: list[np.ndarray] = field(default_factory=list)
    mac_terms: list[MacTerm] = field(default_factory=list)
    unsupported: dict[str, int] = field(default_factory=dict)
    current_op: str = ""
    labels: WeakIdKeyDictionary = field(default_factory=WeakIdKeyDictionary)

    def fresh(self, n: int) -> np.ndarray:
        """Allocate ``n`` new element ids."""
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        return ids

    def label_tensor(self, t: torch.Tensor) -> tuple[Label, ...]:
        """Give every dimension of size > 1 of ``t`` fresh ids (parameters and buffers)."""
        lab = tuple(self.fresh(s) if s > 1 else None for s in t.shape)
        self.labels[t] = lab
        return lab

    def get(self, t: torch.Tensor) -> tuple[Label, ...]:
        """The labels of ``t``; untracked tensors (inputs, constants) are all ``None``."""
        lab = self.labels.get(t)
        if lab is None or len(lab) != t.dim():
            return (None,) * t.dim()
        return lab

    def set(self, t: object, lab: tuple[Label, ...] | list[Label]) -> None:
        """Record the labels of an op's output (ignored for non-tensors or all-``None``)."""
        if isinstance(t, torch.Tensor) and len(lab) == t.dim():
            if any(x is not None for x in lab):
                self.labels[t] = tuple(lab)
            elif t in self.labels:
                del self.labels[t]

    def unify(self, a: Label, b: Label) -> None:
        """Positions ``a[i]`` and ``b[i]`` must be removed together; a ``None`` side pins."""
        if (a is None and b is None) or a is b:
            return
        if a is None or b is None:
            self.pin(b if a is None else a, Pin.FIXED)
            return
        if len(a) != len(b):
            # Shapes disagree only when an op rule misread the op: refuse to prune either side.
            self.pin(a, Pin.OP)
            self.pin(b, Pin.OP)
            return
        self.union_a.append(a)
        self.union_b.append(b)

    def pin(self, a: Label, why: Pin) -> None:
        """Positions ``a`` can never be removed, for reason ``why``."""
        if a is not None:
            self.union_a.append(a)
            self.union_b.append(np.full(len(a), int(why), dtype=np.int64))

    def pin_all(self, t: torch.Tensor, why: Pin) -> None:
        """Pin every tracked dimension of ``t``."""
        for lab in self.get(t):
            self.pin(lab, why)

    def filler(self, n: int) -> np.ndarray:
        """Labels for ``n`` positions of fixed size (e.g. zero channels padded in by the model)."""
        return np.full(n, int(Pin.FIXED), dtype=np.int64)
