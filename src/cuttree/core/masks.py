"""Unstructured and N:M keep-masks from weight scores, on numpy arrays (every frontend's masks).

A score is |w| (or |w|·‖x‖ for Wanda) in the frontend's own weight layout; masks come back in
the same layout. Ties break by position in the flattened array (a stable sort), so two frontends
given the same weights in their own layouts agree wherever the scores are distinct.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from cuttree.errors import warn


def _lowest(s: np.ndarray, k: int) -> np.ndarray:
    keep = np.ones(s.size, dtype=bool)
    if k:
        keep[np.argsort(s.reshape(-1), kind="stable")[:k]] = False
    return keep


def magnitude_masks(
    score: Mapping[str, np.ndarray],
    ratio: float | None = None,
    threshold: float | None = None,
    scope: str = "local",
    per_layer: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Keep-masks: ``ratio`` of each layer's (or, global, of all) lowest scores zeroed, or those
    below ``threshold`` × the layer's largest score. Ties break by position (stable sort).

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
        keep = _lowest(flat, math.floor(ratio * flat.size + 1e-9))
        off = 0
        for n in pool:
            masks[n] = keep[off : off + score[n].size].reshape(score[n].shape)
            off += score[n].size
    for n, s in score.items():
        if n in masks:
            continue
        r = per_layer.get(n, ratio)
        if r is not None:
            masks[n] = _lowest(s, math.floor(r * s.size + 1e-9)).reshape(s.shape)
        else:
            masks[n] = np.ones(s.shape, dtype=bool)
        if threshold is not None:
            masks[n] &= s >= threshold * s.max()
    return masks


def nm_masks(score: Mapping[str, np.ndarray], n: int, m: int, in_dims: Mapping[str, int]) -> dict[str, np.ndarray]:
    """N:M keep-masks along each layer's input dim ``in_dims[name]``: in every run of ``m``
    consecutive weights along it, the ``n`` largest scores stay (the first on ties). A layer whose
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
        g = rows.reshape(-1, m)
        top = np.argsort(-g, axis=1, kind="stable")[:, :n]
        keep = np.zeros(g.shape, dtype=bool)
        np.put_along_axis(keep, top, True, axis=1)
        out[name] = np.moveaxis(keep.reshape(rows.shape), -1, in_dims[name])
    if dense:
        warn(
            f"kept {len(dense)} layer(s) dense under nm={n}:{m}: their input width is not a multiple of {m} "
            f"({', '.join(dense[:3])}{' …' if len(dense) > 3 else ''}); add them to 'ignore' to silence this"
        )
    return out
