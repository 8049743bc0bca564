"""Unstructured and N:M keep-masks from weight scores, on numpy arrays (every frontend's masks).

A score is |w| (or |w|·‖x‖ for Wanda) in the frontend's own weight layout; masks come back in
the same layout. Equal scores are ordered by a fixed pseudo-random permutation of their positions
drawn from ``seed`` (SplitMix64 of the position, the same on every machine), so ties favour no position: a
weight quantised to a few levels (a 4-bit checkpoint has ~5% distinct magnitudes per layer) would
otherwise lose its later positions first. ``seed=None`` breaks ties by position instead (the
earlier position pruned first, as a stable ascending sort does). Two frontends given the same weights in their own layouts agree wherever the scores
are distinct.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from cuttree.errors import warn


def tie_order(shape: tuple[int, ...], seed: int | None) -> np.ndarray | None:
    """The secondary sort key of each position (``None``: by position), as ``shape``: position
    ``i`` gets the ``i+1``-th output of SplitMix64 seeded with ``seed``, in unsigned 64-bit
    arithmetic (the same on every machine; distinct keys, none of them favoured).

    >>> k = tie_order((4,), 0)
    >>> sorted(k.tolist()) != k.tolist() or sorted(k.tolist(), reverse=True) != k.tolist(), tie_order((4,), None)
    (True, None)
    >>> int(tie_order((1,), 0)[0]) == 0xE220A8397B1DCDAF  # SplitMix64's first output from 0
    True
    """
    if seed is None:
        return None
    with np.errstate(over="ignore"):
        z = np.uint64(seed % 2**64) + (
            np.arange(1, math.prod(shape) + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))).reshape(shape)


def ascending(s: np.ndarray, ties: np.ndarray | None, axis: int = -1) -> np.ndarray:
    """Indices that sort ``s`` along ``axis``, equal scores in ``ties`` order (else by position)."""
    if ties is None:
        return np.argsort(s, axis=axis, kind="stable")
    return np.lexsort((ties, s), axis=axis)


def drop_lowest(rows: np.ndarray, k: int, ties: np.ndarray | None) -> np.ndarray:
    """Which entries of each row of the 2-D ``rows`` are its ``k`` lowest, equal scores taken in
    ``ties`` order (else by position): the first ``k`` of the row sorted by (score, tie), as
    :func:`ascending` gives them, found by a partition instead of a sort (each row's ``k``-th
    score, then a choice among the entries equal to it).

    >>> drop_lowest(np.array([[1.0, 2.0, 1.0, 1.0]]), 2, None).tolist()
    [[True, False, True, False]]
    """
    r, n = rows.shape
    drop = np.zeros((r, n), dtype=bool)
    if k <= 0 or n == 0:
        return drop
    if k >= n:
        drop[:] = True
        return drop
    kth = np.partition(rows, k - 1, axis=1)[:, k - 1 : k]
    if np.isnan(kth).any():
        raise ValueError("scores hold NaN (the weights or the calibration statistics); check the model for NaN weights")
    drop |= rows < kth
    at = rows == kth
    need = k - drop.sum(axis=1)
    whole = at.sum(axis=1) == need
    drop[whole] |= at[whole]
    for i in np.flatnonzero(~whole):  # more equal scores at the cut than it takes: the lowest keys go
        idx = np.flatnonzero(at[i])
        key = idx if ties is None else ties[i, idx]
        drop[i, idx[np.argpartition(key, need[i] - 1)[: need[i]]]] = True
    return drop


def _lowest(s: np.ndarray, k: int, seed: int | None = None) -> np.ndarray:
    ties = tie_order((1, s.size), seed)
    return ~drop_lowest(s.reshape(1, -1), k, ties)[0]


def row_masks(score: np.ndarray, ratio: float, row_dim: int, seed: int | None = None) -> np.ndarray:
    """Zero ``ratio`` of each output row's lowest scores (Wanda's comparison group): every slice
    along ``row_dim`` loses the same number of weights.

    >>> row_masks(np.array([[3.0, 1.0, 2.0, 4.0], [1.0, 9.0, 8.0, 0.5]]), 0.5, 0, None).tolist()
    [[True, False, False, True], [False, True, True, False]]
    """
    rows = np.moveaxis(score, row_dim, 0).reshape(score.shape[row_dim], -1)
    k = math.floor(ratio * rows.shape[1] + 1e-9)
    keep = ~drop_lowest(rows, k, tie_order(rows.shape, seed))
    moved = np.moveaxis(score, row_dim, 0).shape
    return np.moveaxis(keep.reshape(moved), 0, row_dim)


def magnitude_masks(
    score: Mapping[str, np.ndarray],
    ratio: float | None = None,
    threshold: float | None = None,
    scope: str = "local",
    per_layer: Mapping[str, float] | None = None,
    seed: int | None = None,
    row_dims: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Keep-masks: ``ratio`` of each layer's (``scope: local``), of all layers' (``global``) or of
    each output row's (``row``, along ``row_dims[name]``) lowest scores zeroed, or those below
    ``threshold`` × the layer's largest score. Ties follow :func:`tie_order` of ``seed``.

    >>> magnitude_masks({"a": np.array([3.0, 1.0, 2.0, 4.0])}, ratio=0.5)["a"].tolist()
    [True, False, False, True]
    >>> m = magnitude_masks({"a": np.array([3.0, 1.0]), "b": np.array([0.5, 9.0])}, ratio=0.5, scope="global")
    >>> m["a"].tolist(), m["b"].tolist()
    ([True, False], [False, True])
    """
    per_layer = per_layer or {}
    masks: dict[str, np.ndarray] = {}
    if scope == "global" and ratio is not None:
        pool = [n for n in score if n not in per_layer]
        flat = np.concatenate([score[n].reshape(-1) for n in pool]) if pool else np.zeros(0)
        keep = _lowest(flat, math.floor(ratio * flat.size + 1e-9), seed)
        off = 0
        for n in pool:
            masks[n] = keep[off : off + score[n].size].reshape(score[n].shape)
            off += score[n].size
    for n, s in score.items():
        if n in masks:
            continue
        r = per_layer.get(n, ratio)
        if r is not None and scope == "row":
            masks[n] = row_masks(s, r, (row_dims or {}).get(n, 0), seed)
        elif r is not None:
            masks[n] = _lowest(s, math.floor(r * s.size + 1e-9), seed).reshape(s.shape)
        else:
            masks[n] = np.ones(s.shape, dtype=bool)
        if threshold is not None:
            masks[n] &= s >= threshold * s.max()
    return masks


def nm_masks(
    score: Mapping[str, np.ndarray], n: int, m: int, in_dims: Mapping[str, int], seed: int | None = None
) -> dict[str, np.ndarray]:
    """N:M keep-masks along each layer's input dim ``in_dims[name]``: in every run of ``m``
    consecutive weights along it, the ``n`` largest scores stay (ties in :func:`tie_order`). A layer whose
    input width is not a multiple of ``m`` (an RGB stem's 3 channels) has no such runs: it stays
    dense, with a warning naming it.

    >>> nm_masks({"a": np.array([[4.0, 1.0, 3.0, 2.0]])}, 2, 4, {"a": 1})["a"].tolist()
    [[True, False, True, False]]
    """
    out, dense = {}, []
    for name, s in score.items():
        rows = np.moveaxis(s, in_dims[name], -1)
        if rows.shape[-1] % m:
            out[name] = np.ones(s.shape, dtype=bool)
            dense.append(f"{name}: {rows.shape[-1]}")
            continue
        keep = _top_of_groups(rows.reshape(-1, m), n, tie_order((rows.size // m, m), seed))
        out[name] = np.moveaxis(keep.reshape(rows.shape), -1, in_dims[name])
    if dense:
        warn(
            f"kept {len(dense)} layer(s) dense under nm={n}:{m}: their input width is not a multiple of {m} "
            f"({', '.join(dense[:3])}{' …' if len(dense) > 3 else ''}); add them to 'ignore' to silence this"
        )
    return out


def _top_of_groups(g: np.ndarray, n: int, ties: np.ndarray | None) -> np.ndarray:
    """Keep-mask of the ``n`` largest of each row of ``g`` (equal scores: the larger tie key, else
    the later position, so that the earlier goes first as in :func:`drop_lowest`): an entry stays
    if fewer than ``n`` of its row rank above it, counted column by column (no sort; exact for
    any ``m``).

    >>> _top_of_groups(np.array([[1.0, 3.0, 2.0, 2.0]]), 2, None).tolist()
    [[False, True, False, True]]
    """
    t = ties if ties is not None else np.broadcast_to(np.arange(g.shape[1]), g.shape)
    above = np.zeros(g.shape, dtype=np.int64)
    for j in range(g.shape[1]):
        gj, tj = g[:, j : j + 1], t[:, j : j + 1]
        above += (gj > g) | ((gj == g) & (tj > t))
    return above < n
