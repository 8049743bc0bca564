"""Keep-masks without sorting (:func:`cuttree.core.masks.drop_lowest`, N:M by counting) against
the sort they replace, on scores with many ties (a 4-bit origin has few distinct magnitudes)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cuttree.core.allocate import outlier_ratio, owl_sparsities
from cuttree.core.masks import ascending, drop_lowest, nm_masks, tie_order


def sorted_drop(rows: np.ndarray, k: int, ties: np.ndarray | None) -> np.ndarray:
    """The oracle: each row sorted by (score, tie), its first ``k`` dropped."""
    drop = np.zeros(rows.shape, dtype=bool)
    np.put_along_axis(drop, ascending(rows, ties, axis=1)[:, :k], True, axis=1)
    return drop


def sorted_top(g: np.ndarray, n: int, ties: np.ndarray | None) -> np.ndarray:
    """The oracle for N:M: each group sorted by score, then by tie key (else by position),
    descending; its first ``n`` kept: the same order as :func:`sorted_drop`'s, reversed."""
    keep = np.zeros(g.shape, dtype=bool)
    for r in range(g.shape[0]):

        def key(j: int, r: int = r) -> tuple[float, int]:
            return -g[r, j], -(j if ties is None else int(ties[r, j]))

        keep[r, sorted(range(g.shape[1]), key=key)[:n]] = True
    return keep


scores = st.tuples(st.integers(1, 6), st.integers(1, 24), st.integers(1, 5), st.integers(0, 2**32))


@settings(max_examples=200, deadline=None)
@given(scores, st.sampled_from([None, 0, 7]), st.floats(0, 1))
def test_the_partition_drops_what_the_sort_drops(
    shape: tuple[int, int, int, int], seed: int | None, share: float
) -> None:
    r, c, levels, draw = shape
    rows = np.random.default_rng(draw).integers(0, levels, (r, c)).astype(np.float64)
    k = round(share * c)
    ties = tie_order((r, c), seed)
    assert np.array_equal(drop_lowest(rows, k, ties), sorted_drop(rows, k, ties))


@settings(max_examples=200, deadline=None)
@given(scores, st.sampled_from([None, 0, 7]), st.sampled_from([(1, 2), (2, 4), (3, 8)]))
def test_nm_keeps_what_the_sort_keeps(shape: tuple[int, int, int, int], seed: int | None, nm: tuple[int, int]) -> None:
    r, _, levels, draw = shape
    n, m = nm
    g = np.random.default_rng(draw).integers(0, levels, (r, 2 * m)).astype(np.float64)
    got = nm_masks({"w": g}, n, m, {"w": 1}, seed)["w"].reshape(-1, m)
    assert np.array_equal(got, sorted_top(g.reshape(-1, m), n, tie_order((g.size // m, m), seed)))


def test_without_a_seed_the_earlier_position_goes_first_in_every_mask() -> None:
    """As the reference implementations' stable sort: N:M and the partition agree."""
    flat = np.ones((1, 8))
    assert drop_lowest(flat, 4, None).tolist() == [[True] * 4 + [False] * 4]
    assert nm_masks({"w": flat}, 2, 4, {"w": 1}, None)["w"].tolist() == [[False, False, True, True] * 2]


def test_tie_keys_are_splitmix64_and_distinct() -> None:
    keys = tie_order((1000,), 0)
    assert keys is not None and len(set(keys.tolist())) == 1000
    assert [hex(int(k)) for k in keys[:2]] == ["0xe220a8397b1dcdaf", "0x6e789e6aa1b965f4"]  # SplitMix64 from 0


def test_owl_sparsities_keep_the_mean_and_favour_outliers() -> None:
    shares = [outlier_ratio([np.array([1.0] * (10 - o) + [50.0] * o)], 2.0) for o in (0, 1, 3, 2)]
    assert shares == [0.0, 0.1, 0.3, 0.2]
    got = owl_sparsities(shares, 0.5, 0.08)
    assert [round(s, 6) for s in got] == [0.58, 0.526667, 0.42, 0.473333]
    assert abs(float(np.mean(got)) - 0.5) < 1e-12
