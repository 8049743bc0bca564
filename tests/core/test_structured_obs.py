"""Structured OBS (criterion ``obs``): the greedy removal order and its scores against a brute
force over the closed form ``tr(W_S (H⁻¹_SS)⁻¹ W_Sᵀ)``, the least error of a layer whose
columns ``S`` are removed and the rest refitted, with the dampened Hessian."""

from __future__ import annotations

import numpy as np
import pytest

from cuttree.core.obs import channel_removal_scores, hessian, inverse_hessian


def _closed_form(w: np.ndarray, hinv: np.ndarray, cols: np.ndarray) -> float:
    if len(cols) == 0:
        return 0.0
    wc = w[:, cols]
    return float(np.trace(wc @ np.linalg.inv(hinv[np.ix_(cols, cols)]) @ wc.T))


def _greedy_oracle(
    readers: list[tuple[np.ndarray, np.ndarray, np.ndarray]], size: int
) -> tuple[list[int], list[float]]:
    """Each step removes the channel whose removal, with the ones already gone, leaves the least
    total error (the sum over readers of the closed form on the original weights)."""
    inv = [(w, inverse_hessian(h), owner) for w, h, owner in readers]

    def total(channels: list[int]) -> float:
        return sum(_closed_form(w, hi, np.flatnonzero(np.isin(o, channels))) for w, hi, o in inv)

    gone: list[int] = []
    totals: list[float] = []
    while len(gone) < size:
        left = [c for c in range(size) if c not in gone]
        costs = [total([*gone, c]) for c in left]
        gone.append(left[int(np.argmin(costs))])
        totals.append(min(costs))
    return gone, totals


def _layer(rng: np.random.Generator, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((256, cols)) @ rng.standard_normal((cols, cols))  # correlated inputs
    return rng.standard_normal((rows, cols)), hessian(x)


def test_one_column_per_channel_follows_the_greedy_oracle_exactly() -> None:
    rng = np.random.default_rng(3)
    w, h = _layer(rng, 5, 9)
    s = channel_removal_scores([(w, h, np.arange(9))], 9, step=1)
    order, totals = _greedy_oracle([(w, h, np.arange(9))], 9)
    assert np.argsort(s, kind="stable").tolist() == order
    np.testing.assert_allclose(np.sort(s), totals, rtol=1e-9)


def test_heads_of_several_columns_and_several_readers_follow_the_oracle() -> None:
    """Channels of 3 columns each (heads), a column outside the group (−1), two readers."""
    rng = np.random.default_rng(4)
    owner = np.array([0, 0, 0, 1, 1, 1, -1, 2, 2, 2, 3, 3, 3])
    readers = [(*_layer(rng, 4, 13), owner), (*_layer(rng, 6, 13), owner)]
    s = channel_removal_scores(readers, 4, step=1)
    order, totals = _greedy_oracle(readers, 4)
    assert np.argsort(s, kind="stable").tolist() == order
    np.testing.assert_allclose(np.sort(s), totals, rtol=1e-9)


def test_rounds_of_several_channels_order_each_round_by_its_costs() -> None:
    """``step=3``: the 3 cheapest at the start go first, in order of their costs then."""
    rng = np.random.default_rng(5)
    w, h = _layer(rng, 5, 8)
    s = channel_removal_scores([(w, h, np.arange(8))], 8, step=3)
    hinv = inverse_hessian(h)
    first = np.sum(w * w, axis=0) / np.diag(hinv)
    assert sorted(np.argsort(s)[:3].tolist()) == sorted(np.argsort(first)[:3].tolist())
    np.testing.assert_allclose(np.sort(s)[0], first.min(), rtol=1e-12)
    assert np.all(np.diff(np.sort(s)) >= 0)


def test_a_redundant_channel_goes_before_a_strong_one_that_wanda_would_drop() -> None:
    """Two copies of one input: either copy's removal costs nothing once the other absorbs it,
    though each carries more |w|·‖x‖ than the faint third input, which OBS keeps."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal(512)
    x = np.stack([base, base, 0.3 * rng.standard_normal(512)], axis=1)
    w = np.array([[1.0, 1.0, 1.0]])
    s = channel_removal_scores([(w, hessian(x), np.arange(3))], 3, step=1)
    assert int(np.argmin(s)) in (0, 1) and s.min() == pytest.approx(0.0, abs=1e-2 * s.max())
