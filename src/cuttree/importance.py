"""Importance criteria: a coupled group in, one score per channel out.

Every criterion has the same signature: ``(group, tensors, extra) -> np.ndarray`` of length
``group.size``, non-negative, higher meaning more important. ``tensors`` maps state-dict names
to the model's current tensors; ``extra`` holds statistics collected beforehand
(:mod:`cuttree.calibrate`): gradients by tensor name for ``taylor``; per-position vectors keyed
``"name@dim"`` for ``activation`` (mean |output|) and ``bn_scale`` (the norm layers' γ).

Definitions (a channel's *slices* are, in every parameter of its group, the entries at the
channel's positions along the coupled dim):

- ``l1``: the sum of |w| over all the channel's slices;
- ``l2``: the square root of the sum of w² over them;
- ``bn_scale``: the sum of |γ| over the group's norm-layer scales (groups without a norm
  layer, e.g. a classifier's hidden Linear, use ``l1``; the plan records which was used);
- ``taylor``: (Σ w·∂L/∂w over the slices)², the first-order Taylor estimate of the loss change
  (Molchanov et al., 2019), gradients summed over the calibration data;
- ``activation``: the mean |output| of the channel at its producing layers over the data;
- ``random``: uniform, seeded by the config's ``seed`` and the group name.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

import numpy as np
import torch

from cuttree.graph.groups import Group, Member

Tensors = Mapping[str, torch.Tensor]
Criterion = Callable[[Group, Tensors, Mapping[str, torch.Tensor], int], np.ndarray]
CRITERIA: dict[str, Criterion] = {}


def criterion(name: str) -> Callable[[Criterion], Criterion]:
    """Register an importance criterion under ``name``."""

    def deco(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        return fn

    return deco


def per_position(t: torch.Tensor, dim: int, fn: str) -> np.ndarray:
    """Reduce ``t`` over every dim but ``dim``: ``sum_abs`` or ``sum_sq`` or ``sum``."""
    x = t.detach()
    others = [d for d in range(x.dim()) if d != dim]
    if fn == "sum_abs":
        r = x.abs().sum(others) if others else x.abs()
    elif fn == "sum_sq":
        r = (x * x).sum(others) if others else x * x
    else:
        r = x.sum(others) if others else x
    return r.double().numpy()


def _accumulate(group: Group, members: list[Member], values: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(group.size, dtype=np.float64)
    for m, v in zip(members, values, strict=True):
        out += np.bincount(m.channels, weights=v[m.positions], minlength=group.size)
    return out


def _params(group: Group, tensors: Tensors) -> list[Member]:
    return [m for m in group.members if isinstance(tensors[m.tensor], torch.nn.Parameter)]


@criterion("l1")
def l1(group: Group, tensors: Tensors, extra: Mapping[str, torch.Tensor], seed: int) -> np.ndarray:
    ms = _params(group, tensors)
    return _accumulate(group, ms, [per_position(tensors[m.tensor], m.dim, "sum_abs") for m in ms])


@criterion("l2")
def l2(group: Group, tensors: Tensors, extra: Mapping[str, torch.Tensor], seed: int) -> np.ndarray:
    ms = _params(group, tensors)
    return np.sqrt(_accumulate(group, ms, [per_position(tensors[m.tensor], m.dim, "sum_sq") for m in ms]))


@criterion("random")
def random(group: Group, tensors: Tensors, extra: Mapping[str, torch.Tensor], seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(group.name.encode())])
    return rng.random(group.size)


@criterion("taylor")
def taylor(group: Group, tensors: Tensors, extra: Mapping[str, torch.Tensor], seed: int) -> np.ndarray:
    ms = [m for m in _params(group, tensors) if m.tensor in extra]
    vals = [per_position(tensors[m.tensor].detach() * extra[m.tensor], m.dim, "sum") for m in ms]
    return _accumulate(group, ms, vals) ** 2


@criterion("activation")
def activation(group: Group, tensors: Tensors, extra: Mapping[str, torch.Tensor], seed: int) -> np.ndarray:
    ms = [m for m in group.members if f"{m.tensor}@{m.dim}" in extra]
    return _accumulate(group, ms, [extra[f"{m.tensor}@{m.dim}"].to(torch.float64).numpy() for m in ms])


@criterion("bn_scale")
def bn_scale(group: Group, tensors: Tensors, extra: Mapping[str, torch.Tensor], seed: int) -> np.ndarray:
    ms = [m for m in group.members if f"{m.tensor}@{m.dim}" in extra]
    if not ms:
        return l1(group, tensors, extra, seed)
    return _accumulate(group, ms, [extra[f"{m.tensor}@{m.dim}"].abs().to(torch.float64).numpy() for m in ms])


def used_criterion(name: str, group: Group, extra: Mapping[str, torch.Tensor]) -> str:
    """The criterion that really scored ``group`` (``bn_scale`` without a norm layer is ``l1``)."""
    if name == "bn_scale" and not any(f"{m.tensor}@{m.dim}" in extra for m in group.members):
        return "l1"
    return name
