"""SparseGPT: one layer's weights made sparse with the optimal brain surgeon's update, on numpy.

Frantar and Alistarh (2023) prune a linear layer ``W`` (output rows × input columns) so that its
outputs on the calibration inputs ``X`` change least, using the layer Hessian ``H = 2/n · XᵀX``:
column by column, the weights chosen for removal are zeroed and the error that leaves is spread
over the columns not yet visited, through the upper Cholesky factor ``U`` of ``H⁻¹``. The
procedure, as here:

- inputs that never fire (``H_jj = 0``) get ``H_jj = 1`` and their column of ``W`` zeroed;
- ``H`` is dampened by ``damp`` × the mean of its diagonal (1% by default);
- columns go in blocks of ``block`` (128): at the start of a block, unstructured pruning picks the
  ``ratio`` of the block's weights (rows × block columns, compared together) with the lowest
  ``w² / U_jj²``; N:M picks, at every M-th column, the M−N lowest of each row's next M columns;
- each column ``j``: ``q`` = the column with the picked weights zeroed, ``e = (w − q) / U_jj``, the
  block's later columns less ``e ⊗ U[j, j:]``; at the end of a block its errors update the
  columns after it (``W[:, later] −= E · U[block, later]``).

Everything is computed in float64 (the Hessian, its inverse and factor, the updates) and the
weights are handed back in their own dtype. Equal scores are ordered as
:func:`cuttree.core.masks.tie_order` orders them.

>>> rng = np.random.default_rng(0)
>>> x, w = rng.standard_normal((256, 8)), rng.standard_normal((4, 8))
>>> new, keep = sparsegpt(w, hessian(x), ratio=0.5)
>>> int(keep.sum()), bool(np.all(new[~keep] == 0))
(16, True)
>>> err_obs = np.linalg.norm(x @ (new - w).T)
>>> err_zero = np.linalg.norm(x @ (np.where(keep, w, 0) - w).T)  # the same mask, no update
>>> bool(err_obs < err_zero)
True
"""

from __future__ import annotations

import math

import numpy as np

from cuttree.core.masks import ascending, drop_lowest, tie_order

BLOCK = 128  #: columns per block (the paper's)
DAMP = 0.01  #: the Hessian's dampening, as a fraction of its mean diagonal (the paper's 1%)


def hessian(x: np.ndarray) -> np.ndarray:
    """``2/n · XᵀX`` of inputs ``x`` (n samples × features), in float64."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    return 2.0 / len(x) * (x.T @ x)


def sparsegpt(
    weight: np.ndarray,
    h: np.ndarray,
    ratio: float | None = None,
    nm: tuple[int, int] | None = None,
    block: int = BLOCK,
    damp: float = DAMP,
    seed: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` (rows × columns) pruned to ``ratio`` (or ``nm``) with the OBS update, given the
    Hessian ``h`` of its inputs; the new weights and the keep-mask."""
    if (ratio is None) == (nm is None):
        raise ValueError("sparsegpt takes ratio (unstructured) or nm (N:M), one of them")
    dtype = weight.dtype
    w = np.array(weight, dtype=np.float64)
    h = np.array(h, dtype=np.float64)
    cols = w.shape[1]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices(cols)] += damp * float(np.mean(np.diag(h)))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H⁻¹ = UᵀU
    pruned = np.zeros(w.shape, dtype=bool)
    ties = tie_order(w.shape, seed)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, u1 = w[:, i1:i2].copy(), u[i1:i2, i1:i2]
        err = np.zeros_like(w1)
        if ratio is not None:
            pruned[:, i1:i2] = _tile_mask(w1, np.diag(u1), ratio, None if ties is None else ties[:, i1:i2])
        for j in range(i2 - i1):
            if nm is not None and j % nm[1] == 0:
                cut = slice(i1 + j, i1 + j + nm[1])
                pruned[:, cut] = _nm_mask(w1[:, j : j + nm[1]], np.diag(u1)[j : j + nm[1]], nm, ties, cut)
            col = w1[:, j]
            q = np.where(pruned[:, i1 + j], 0.0, col)
            e = (col - q) / u1[j, j]
            w1[:, j:] -= np.outer(e, u1[j, j:])
            w1[:, j] = q
            err[:, j] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return w.astype(dtype), ~pruned


def _tile_mask(w1: np.ndarray, d: np.ndarray, ratio: float, ties: np.ndarray | None) -> np.ndarray:
    """The ``ratio`` of a block's weights with the lowest ``w² / d²``, compared across the tile."""
    score = (w1 * w1 / (d * d)[None, :]).reshape(1, -1)
    k = math.floor(ratio * score.size + 1e-9)
    return drop_lowest(score, k, None if ties is None else ties.reshape(1, -1)).reshape(w1.shape)


def _nm_mask(w: np.ndarray, d: np.ndarray, nm: tuple[int, int], ties: np.ndarray | None, cut: slice) -> np.ndarray:
    """In each row of ``m`` columns, the ``m − n`` with the lowest ``w² / d²``."""
    n, m = nm
    score = w * w / (d * d)[None, :]
    order = ascending(score, None if ties is None else ties[:, cut], axis=1)[:, : m - n]
    out = np.zeros(w.shape, dtype=bool)
    np.put_along_axis(out, order, True, axis=1)
    return out


def inverse_hessian(h: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """``H⁻¹`` in float64, inputs that never fire given ``H_jj = 1`` and ``H`` dampened by ``damp``
    × its mean diagonal, as :func:`sparsegpt` prepares it."""
    h = np.array(h, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices(len(h))] += damp * float(np.mean(np.diag(h)))
    return np.linalg.inv(h)


def channel_removal_scores(
    readers: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    size: int,
    step: int | None = None,
    damp: float = DAMP,
    seed: int | None = 0,
) -> np.ndarray:
    """Structured OBS: the channels of a group removed greedily, each time the ones whose removal
    costs least once every reader's remaining columns absorb it; a channel's score is the total
    output error when it goes (non-decreasing in the order of removal, so keeping the ``k``
    highest keeps what the greedy keeps at ``k``).

    ``readers`` are ``(weight, h, owner)``: a linear layer reading the channels (rows × columns),
    the Hessian of its inputs, and for each column the channel it holds (−1: not this group's).
    Removing channel set ``C`` from a reader costs ``tr(W_C (H⁻¹_CC)⁻¹ W_Cᵀ)`` and updates
    ``W −= W_C (H⁻¹_CC)⁻¹ H⁻¹_C·`` and ``H⁻¹ −= H⁻¹_·C (H⁻¹_CC)⁻¹ H⁻¹_C·`` (the OBS update,
    Hassibi and Stork 1993, as SlimGPT and ZipLM apply it to rows of structure). ``step``
    channels go per round (default ``size // 128``, at least 1), picked by their costs at the
    round's start and ordered by them; equal costs in :func:`cuttree.core.masks.tie_order` order.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((512, 4)) * [1.0, 1.0, 0.1, 1.0]
    >>> x[:, 3] = x[:, 0] + 0.01 * rng.standard_normal(512)  # column 3 repeats column 0
    >>> w = rng.standard_normal((2, 4))
    >>> s = channel_removal_scores([(w, hessian(x), np.arange(4))], 4, step=1)
    >>> first, second = np.argsort(s).tolist()[:2]  # the faint one, then a twin: the other absorbs it
    >>> first, second in (0, 3)
    (2, True)
    """
    step = max(1, size // 128) if step is None else step
    state = [(np.array(w, dtype=np.float64), inverse_hessian(h, damp), np.asarray(o)) for w, h, o in readers]
    columns = [[np.flatnonzero(o == c) for c in range(size)] for _, _, o in state]
    ties = tie_order((size,), seed)
    scores, alive, total = np.zeros(size), np.ones(size, dtype=bool), 0.0
    while alive.any():
        cost = np.zeros(size)
        for (w, hinv, _), cols in zip(state, columns, strict=True):
            cost += _costs(w, hinv, cols, alive)
        order = ascending(np.where(alive, cost, np.inf), ties)[: min(step, int(alive.sum()))]
        for c in order:
            total += cost[c]
            scores[c] = total
        alive[order] = False
        for (w, hinv, _), cols in zip(state, columns, strict=True):
            _remove(w, hinv, np.concatenate([cols[c] for c in order]))
    return scores


def _costs(w: np.ndarray, hinv: np.ndarray, cols: list[np.ndarray], alive: np.ndarray) -> np.ndarray:
    """Per channel, ``tr(W_C (H⁻¹_CC)⁻¹ W_Cᵀ)``: the output error its removal leaves once the
    remaining columns are refitted (one column per channel: ``‖w_j‖² / H⁻¹_jj``, vectorised)."""
    out = np.zeros(len(cols))
    if all(len(c) == 1 for c in cols):
        j = np.concatenate(cols)[alive]
        out[alive] = np.einsum("ij,ij->j", w[:, j], w[:, j]) / np.diag(hinv)[j]
        return out
    for c in np.flatnonzero(alive):
        if len(cols[c]):
            wc = w[:, cols[c]]
            out[c] = float(np.sum(wc * np.linalg.solve(hinv[np.ix_(cols[c], cols[c])], wc.T).T))
    return out


def _remove(w: np.ndarray, hinv: np.ndarray, cols: np.ndarray) -> None:
    """Columns ``C`` removed in place, the rest refitted (the OBS update); ``C``'s rows and columns of ``H⁻¹`` become 0."""
    if len(cols) == 0:
        return
    a = np.linalg.solve(hinv[np.ix_(cols, cols)], hinv[cols, :])
    w -= w[:, cols] @ a
    hinv -= hinv[:, cols] @ a
    w[:, cols] = 0.0
    hinv[cols, :] = 0.0
    hinv[:, cols] = 0.0
