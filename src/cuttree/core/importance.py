"""Importance criteria: a coupled group in, one score per channel out.

Every criterion has the same signature: ``(group, weights, extra, seed) -> np.ndarray`` of length
``group.size``, non-negative, higher meaning more important. Criteria see numpy arrays only,
never a framework tensor, so a model on a GPU is scored exactly like one on the CPU: ``weights``
maps the state-dict names of the group members' parameters to their current values; ``extra``
holds statistics collected beforehand by the frontend: gradients by tensor name for
``taylor``; per-position vectors keyed ``"name@dim"`` for ``activation`` (mean |output|) and
``bn_scale`` (the norm layers' γ). The frontend converts both once, at its border
(:func:`cuttree.frontends.torch.util.to_numpy` for torch).

Criteria live in one registry, :data:`REGISTRY`, that :class:`cuttree.Config` validates
against: a criterion registered with :func:`criterion` is usable by name in a config. Its
:class:`CriterionInfo` says what the frontend must collect for it (``needs``) and for which
methods it scores.

Definitions (a channel's *slices* are, in every parameter of its group, the entries at the
channel's positions along the coupled dim):

- ``l1``: the sum of |w| over all the channel's slices;
- ``l2``: the square root of the sum of w² over them;
- ``bn_scale``: the sum of |γ| over the group's norm-layer scales (groups without a norm
  layer, e.g. a classifier's hidden Linear, use ``l1``; the plan records which was used);
- ``taylor``: (Σ w·∂L/∂w over the slices)², the first-order Taylor estimate of the loss change
  (Molchanov et al., 2019), gradients summed over the calibration data;
- ``activation``: the mean |output| of the channel at its producing layers over the data
  (a group no layer's output holds, such as a fused experts' width, uses ``l1``; the plan records it);
- ``wanda``: Σ |w|·‖x‖₂ over the channel's slices in the layers that *read* it as an input
  feature (a linear layer's input column, a convolution's input channel), ‖x‖₂ that feature's
  norm over every calibration token: the output each channel contributes, as Wanda scores
  weights, summed per channel (FLAP's "Wanda-sp"); a group no layer reads uses ``l1``;
- ``flap``: Σ var(x)·w² over the same slices (FLAP's fluctuation, An et al. 2024): a channel
  whose input barely varies is replaceable by its mean (without FLAP's bias compensation,
  which would add biases the architecture does not have);
- ``obs``: structured Optimal Brain Surgeon (SlimGPT, ZipLM): channels leave greedily, each
  time the ones whose removal leaves the least output error in the linear layers reading them
  once those layers' remaining columns are refitted (with ``H = XᵀX`` of their inputs); a
  channel scores the total error at its removal (:func:`cuttree.core.obs.channel_removal_scores`).
  Convolutions are not read (a group read by none uses ``l1``);
- ``random``: uniform, seeded by the config's ``seed`` and the group name.

Statistics of a layer's input features are keyed like activations, ``"weight name@dim"`` with
``dim`` the weight's input dim: ``input_norms`` ‖x‖₂ per feature (``wanda``), ``input_moments``
the variance per feature (``flap``), ``hessian`` the mean of xxᵀ over tokens (``obs``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cuttree.core.grouping import Group
from cuttree.core.obs import channel_removal_scores
from cuttree.core.plan import Member
from cuttree.core.registry import Registry

Arrays = Mapping[str, np.ndarray]
Criterion = Callable[[Group, Arrays, Arrays, int], np.ndarray]
Needs = Literal["weights", "gradients", "activations", "norm_scales", "input_norms", "input_moments", "hessian"]


@dataclass(frozen=True)
class CriterionInfo:
    """A registered criterion: its channel scorer (``None`` if it only scores weights), what the
    frontend collects for it, and whether it serves structured and/or unstructured pruning."""

    name: str
    fn: Criterion | None
    needs: Needs = "weights"
    structured: bool = True
    unstructured: bool = False

    @property
    def data_driven(self) -> bool:
        """Whether it needs calibration data (and so ``min_samples`` of it)."""
        return self.needs in ("gradients", "activations", "input_norms", "input_moments", "hessian")


REGISTRY: Registry[str, CriterionInfo] = Registry("criterion")


def criterion(name: str, needs: Needs = "weights", unstructured: bool = False) -> Callable[[Criterion], Criterion]:
    """Register a channel-importance criterion under ``name`` (warns when it replaces one).

    What the frontend collects for it follows ``needs`` (never its name): ``"gradients"`` gives
    ``extra`` the loss gradients by tensor name, ``"activations"`` the mean |output| per channel.

    >>> @criterion("ones_for_doc")
    ... def ones(group, weights, extra, seed):
    ...     return np.ones(group.size)
    >>> REGISTRY["ones_for_doc"].data_driven
    False
    >>> _ = REGISTRY.pop("ones_for_doc")
    """
    return REGISTRY.decorator(name, make=lambda fn: CriterionInfo(name, fn, needs, unstructured=unstructured))


def register_weight_criterion(name: str, needs: Needs = "weights") -> None:
    """Register a criterion that only scores individual weights (unstructured pruning, e.g. wanda)."""
    REGISTRY.register(name, CriterionInfo(name, None, needs, structured=False, unstructured=True))


def scorer(name: str) -> Criterion:
    """The channel scorer of a structured criterion."""
    fn = REGISTRY.lookup(name).fn
    if fn is None:
        raise ValueError(f"criterion '{name}' scores single weights only; use it with method: unstructured")
    return fn


def per_position(x: np.ndarray, dim: int, fn: str) -> np.ndarray:
    """Reduce ``x`` over every dim but ``dim``: ``sum_abs`` or ``sum_sq`` or ``sum``, as float64.

    ``x`` is viewed as (before, ``dim``, after) and summed first over the leading axis, then over
    the trailing one: both contiguous reductions on views, no copy of a reduced axis (numpy's
    reduction over scattered axes is several times slower; BLAS would fight torch's threads).

    >>> per_position(np.array([[1.0, -2.0], [3.0, 4.0]]), 0, "sum_abs").tolist()
    [3.0, 7.0]
    >>> per_position(np.arange(24.0).reshape(2, 3, 4), 1, "sum").tolist()
    [60.0, 92.0, 124.0]
    """
    a = np.abs(x) if fn == "sum_abs" else np.square(x) if fn == "sum_sq" else x
    n = a.shape[dim]
    pre, post = math.prod(a.shape[:dim]), math.prod(a.shape[dim + 1 :])
    m = a.reshape(pre, n, post)
    rows = m.sum(axis=0) if pre > 1 else m[0]
    return np.asarray(rows.sum(axis=1, dtype=np.float64))


def _accumulate(group: Group, members: list[Member], values: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(group.size, dtype=np.float64)
    for m, v in zip(members, values, strict=True):
        out += np.bincount(m.channels, weights=v[m.positions], minlength=group.size)
    return out


def _params(group: Group, weights: Arrays) -> list[Member]:
    return [m for m in group.members if m.tensor in weights]


@criterion("l1", unstructured=True)
def l1(group: Group, weights: Arrays, extra: Arrays, seed: int) -> np.ndarray:
    ms = _params(group, weights)
    return _accumulate(group, ms, [per_position(weights[m.tensor], m.dim, "sum_abs") for m in ms])


@criterion("l2", unstructured=True)
def l2(group: Group, weights: Arrays, extra: Arrays, seed: int) -> np.ndarray:
    ms = _params(group, weights)
    return np.sqrt(_accumulate(group, ms, [per_position(weights[m.tensor], m.dim, "sum_sq") for m in ms]))


@criterion("random")
def random(group: Group, weights: Arrays, extra: Arrays, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(group.name.encode())])
    return rng.random(group.size)


@criterion("taylor", needs="gradients")
def taylor(group: Group, weights: Arrays, extra: Arrays, seed: int) -> np.ndarray:
    ms = [m for m in _params(group, weights) if m.tensor in extra]
    vals = [per_position(np.multiply(weights[m.tensor], extra[m.tensor], dtype=np.float64), m.dim, "sum") for m in ms]
    return _accumulate(group, ms, vals) ** 2


@criterion("activation", needs="activations")
def activation(group: Group, weights: Arrays, extra: Arrays, seed: int) -> np.ndarray:
    ms = [m for m in group.members if f"{m.tensor}@{m.dim}" in extra]
    if not ms:  # no producer whose output holds these channels (fused experts): by weight, as the plan records
        return l1(group, weights, extra, seed)
    return _accumulate(group, ms, [extra[f"{m.tensor}@{m.dim}"].astype(np.float64) for m in ms])


@criterion("bn_scale", needs="norm_scales")
def bn_scale(group: Group, weights: Arrays, extra: Arrays, seed: int) -> np.ndarray:
    ms = [m for m in group.members if f"{m.tensor}@{m.dim}" in extra]
    if not ms:
        return l1(group, weights, extra, seed)
    return _accumulate(group, ms, [np.abs(extra[f"{m.tensor}@{m.dim}"]).astype(np.float64) for m in ms])


def _read_by(group: Group, weights: Arrays, extra: Arrays, reduce: str) -> np.ndarray | None:
    """Σ over the layers reading ``group`` as input features of (``reduce`` of the weight slice)
    × the feature's statistic; ``None`` where no layer reads it."""
    ms = [m for m in group.members if m.tensor in weights and f"{m.tensor}@{m.dim}" in extra]
    if not ms:
        return None
    vals = [per_position(weights[m.tensor], m.dim, reduce) * extra[f"{m.tensor}@{m.dim}"] for m in ms]
    return _accumulate(group, ms, vals)


@criterion("wanda", needs="input_norms", unstructured=True)  # weights: each frontend's sparsity code
def wanda(group: Group, weights: Arrays, extra: Arrays, seed: int) -> np.ndarray:
    s = _read_by(group, weights, extra, "sum_abs")
    return l1(group, weights, extra, seed) if s is None else s


@criterion("flap", needs="input_moments")
def flap(group: Group, weights: Arrays, extra: Arrays, seed: int) -> np.ndarray:
    s = _read_by(group, weights, extra, "sum_sq")
    return l1(group, weights, extra, seed) if s is None else s


@criterion("obs", needs="hessian")
def obs(group: Group, weights: Arrays, extra: Arrays, seed: int) -> np.ndarray:
    ms = [m for m in group.members if f"{m.tensor}@{m.dim}" in extra and m.tensor in weights]
    if not ms:
        return l1(group, weights, extra, seed)
    readers = []
    for m in ms:
        w = weights[m.tensor]
        owner = np.full(w.shape[m.dim], -1)
        owner[m.positions] = m.channels
        readers.append((w, extra[f"{m.tensor}@{m.dim}"], owner))
    return channel_removal_scores(readers, group.size, seed=seed)


register_weight_criterion("sparsegpt", needs="hessian")  # the OBS update (cuttree.core.obs), layer by layer


def used_criterion(name: str, group: Group, extra: Arrays) -> str:
    """The criterion that really scored ``group`` (``bn_scale`` without a norm layer, or
    ``activation`` without a layer whose output holds the channels, ``wanda``, ``flap`` or ``obs``
    without a layer reading them, is ``l1``)."""
    if name in ("bn_scale", "activation", "wanda", "flap", "obs") and not any(
        f"{m.tensor}@{m.dim}" in extra for m in group.members
    ):
        return "l1"
    return name
