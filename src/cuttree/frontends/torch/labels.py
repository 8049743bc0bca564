"""The torch tracer's labels: the core's :class:`~cuttree.core.labels.LabelState` plus a
weak map from live tensors to their per-dimension labels.

The element ids, unions and pins themselves are framework-neutral (:mod:`cuttree.core.labels`);
this module only adds what needs torch: finding the labels of a tensor an ATen op received.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.weak import WeakIdKeyDictionary

from cuttree.core import labels as core
from cuttree.core.labels import N_SENTINELS, Label, MacTerm, Pin

__all__ = ["N_SENTINELS", "Label", "LabelState", "MacTerm", "Pin"]


@dataclass
class LabelState(core.LabelState):
    """The core's state plus the labels of live torch tensors (weakly keyed by identity)."""

    labels: WeakIdKeyDictionary = field(default_factory=WeakIdKeyDictionary)
    # How many attention modules (module rules with ``heads``) the forward is inside right now:
    # only there may a reshape split a channel dim into (heads, head width).
    in_attention: int = 0
    # How many RMS norms with a scale (module rules with ``rms``) the forward is inside: there
    # the mean of squares over the last dim is the norm's statistic and does not pin the channels.
    in_rms_norm: int = 0
    # Grouped convs: label the width inside a group (the same positions in every group) instead
    # of whole groups; the second of the two walks that give a grouped conv both units.
    group_width: bool = False
    # Set by the first walk where grouped-query attention ran with several key/value heads: the
    # second walk then also gives the query heads within each kv head's group.
    grouped_heads: bool = False
    # The strides a tensor had before an in-place ``as_strided_`` (set by the recorder, read by its rule).
    strides_before: tuple[int, ...] = ()

    def query_heads(self, kv: np.ndarray, per_kv: int) -> np.ndarray:
        """The labels of the query heads that grouped-query attention gives ``per_kv`` of to each of the
        key/value heads ``kv`` (query head ``h`` reads kv head ``h // per_kv``): in the first walk each
        kv head's own (and the second walk is asked for), in the second (``group_width``) the same
        positions among every kv head's query heads, a unit of its own."""
        if self.group_width:
            return np.tile(self.fresh_unit(per_kv, "query heads"), len(kv))
        self.grouped_heads = True
        return np.repeat(kv, per_kv)

    def label_tensor(self, t: torch.Tensor) -> tuple[Label, ...]:
        """Give every dimension of size > 1 of ``t`` fresh ids (parameters and buffers)."""
        lab = self.label_shape(tuple(t.shape))
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

    def pin_all(self, t: torch.Tensor, why: Pin) -> None:
        """Pin every tracked dimension of ``t``."""
        for lab in self.get(t):
            self.pin(lab, why)
