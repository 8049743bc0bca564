"""Channel labels: the bookkeeping a frontend's tracer fills while it walks a model.

Every dimension of every parameter and buffer gets one *element id* per position. Each op or
layer says how the positions of its inputs relate to those of its outputs; two positions that
must be removed together are *unified*, and a position that can never be removed is *pinned* to
a sentinel that names the reason. A tensor dimension whose positions are not tracked (batch,
spatial, a model input's channels) has the label ``None``: it is fixed, so any tracked dimension
that meets it gets pinned.

Unions are only recorded here (two arrays at a time); the connected components are computed
once, vectorised, when the walk is finished (:func:`cuttree.core.grouping.components`).

>>> st = LabelState()
>>> a, b = st.fresh(3), st.fresh(3)
>>> st.unify(a, b); st.pin(a[:1], Pin.OUTPUT)
>>> int(st.next_id), len(st.union_a)
(11, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

Label = np.ndarray | None
"""Per-position element ids of one tensor dimension, or ``None`` for an untracked dimension."""


class Pin(IntEnum):
    """Why a channel can never be removed: the reserved element ids of the sentinels."""

    OUTPUT = 0  #: it reaches a model output (class logits, per-pixel class maps)
    FIXED = 1  #: it meets a dimension of fixed size: a model input, a constant, a hard-coded shape
    OP = 2  #: an op or layer cuttree cannot prune through (a channel range, grouped conv, …)
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
    """A walk's working state: element ids handed out, recorded unions, MAC terms."""

    next_id: int = N_SENTINELS
    union_a: list[np.ndarray] = field(default_factory=list)
    union_b: list[np.ndarray] = field(default_factory=list)
    mac_terms: list[MacTerm] = field(default_factory=list)
    unsupported: dict[str, int] = field(default_factory=dict)
    current_op: str = ""
    units: list[tuple[np.ndarray, str]] = field(default_factory=list)  # ids that stand for heads or conv groups
    # Equal pieces of one split dim (``chunk``): each must lose the same positions as the first,
    # or all of them are pinned when the walk ends (:meth:`pin_misaligned`).
    aligned: list[tuple[np.ndarray, ...]] = field(default_factory=list)

    def fresh_unit(self, n: int, kind: str) -> np.ndarray:
        """``n`` new ids for pruning units other than channels (``"heads"``, ``"groups"``)."""
        ids = self.fresh(n)
        self.units.append((ids, kind))
        return ids

    def fresh(self, n: int) -> np.ndarray:
        """Allocate ``n`` new element ids."""
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        return ids

    def label_shape(self, shape: tuple[int, ...]) -> tuple[Label, ...]:
        """Fresh ids for every dimension of size > 1 of a tensor of ``shape`` (parameters, buffers)."""
        return tuple(self.fresh(s) if s > 1 else None for s in shape)

    def unify(self, a: Label, b: Label) -> None:
        """Positions ``a[i]`` and ``b[i]`` must be removed together; a ``None`` side pins."""
        if (a is None and b is None) or a is b:
            return
        if a is None or b is None:
            self.pin(b if a is None else a, Pin.FIXED)
            return
        if len(a) != len(b):
            # Shapes disagree only when a rule misread the op: refuse to prune either side.
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

    def align(self, pieces: tuple[np.ndarray, ...]) -> None:
        """Equal pieces of a split dim that the code splits by the current width (``chunk``): they
        may lose channels only if every piece loses the same positions, so that the split still
        pairs position ``i`` of each piece after surgery. Checked when the walk ends."""
        self.aligned.append(pieces)

    def pin_misaligned(self, comp: np.ndarray) -> bool:
        """Pin the pieces of every split whose positions did not end up coupled piece by piece
        (``comp``: element id → component); whether any were."""
        kept: list[tuple[np.ndarray, ...]] = []
        bad: list[tuple[np.ndarray, ...]] = []
        for pieces in self.aligned:
            (kept if all(np.array_equal(comp[q], comp[pieces[0]]) for q in pieces[1:]) else bad).append(pieces)
        for pieces in bad:
            for q in pieces:
                self.pin(q, Pin.OP)
        self.aligned = kept
        return bool(bad)

    def filler(self, n: int) -> np.ndarray:
        """Labels for ``n`` positions of fixed size (e.g. zero channels padded in by the model)."""
        return np.full(n, int(Pin.FIXED), dtype=np.int64)
