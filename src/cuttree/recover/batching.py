"""Seeded, shuffled, optionally augmented training batches on numpy arrays (no framework).

The Keras frontend's fine-tuning feeds ``model.fit`` from these, and the side-by-side benchmark
feeds TFMOT the very same batches.

>>> order = shuffled_order(10, batch_size=4, steps=5, seed=0)
>>> len(order) >= 20, sorted(order[:8].tolist()) == sorted(set(order[:8].tolist()))
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np


def shuffled_order(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """Sample indices for ``steps`` batches: a fresh permutation of ``n`` for each pass."""
    rng = np.random.default_rng(seed)
    per_pass = max(n // batch_size, 1)
    return np.concatenate([rng.permutation(n) for _ in range(math.ceil(steps / per_pass))])


def held_out(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The indices that stay for training and those held out to validate on: ``fraction`` of
    ``n`` (rounded, at least one, never all), the same ones for the same seed; none when
    ``fraction`` is 0 or ``n`` < 2. Both sorted.

    >>> kept, out = held_out(10, 0.2, seed=0)
    >>> len(kept), len(out), sorted([*kept, *out]) == list(range(10))
    (8, 2, True)
    >>> [len(a) for a in held_out(1, 0.5, seed=0)]
    [1, 0]
    """
    if fraction <= 0 or n < 2:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    k = min(max(1, math.floor(fraction * n + 0.5)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


class Subset:
    """``data`` at ``indices``, with its ``generator`` (augmentation) and ``classes`` passed
    through, so that a checkpoint still captures the generator the training samples draw from.

    >>> s = Subset([(0, 0), (1, 1), (2, 0)], [2, 0])
    >>> len(s), s[0]
    (2, (2, 0))
    """

    def __init__(self, data: Any, indices: Sequence[int] | np.ndarray) -> None:
        self.data, self.indices = data, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.data[self.indices[i]]

    @property
    def generator(self) -> Any:  # a torch.Generator: what a checkpoint captures (cuttree.recover.rng)
        return getattr(self.data, "generator", None)

    @property
    def classes(self) -> list[str] | None:
        return getattr(self.data, "classes", None)


def batch_at(
    x: np.ndarray, y: np.ndarray, order: np.ndarray, i: int, batch_size: int, augment: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``i`` of ``order`` as float32; with ``augment``, images (N, H, W, C) get a random crop
    after zero padding 4 and a horizontal flip with probability ½ (seeded by ``i``)."""
    idx = order[i * batch_size : (i + 1) * batch_size]
    xb = x[idx].astype("float32")
    if augment and xb.ndim == 4:
        rng = np.random.default_rng([i, 7])
        pad = np.pad(xb, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="constant")
        h, w = xb.shape[1:3]
        out = np.empty_like(xb)
        for j in range(len(xb)):
            a, b = rng.integers(0, 9, 2)
            img = pad[j, a : a + h, b : b + w]
            out[j] = img[:, ::-1] if rng.random() < 0.5 else img
        xb = out
    return xb, y[idx]


def n_samples(x: Any) -> int:
    """Samples in a batch of inputs: an array or tensor, or a dict of them (keyword inputs)."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def first(x: Any, n: int) -> Any:
    """The first ``n`` samples of a batch of inputs (an array or tensor, or a dict of them)."""
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def forward(model: Callable[..., Any], x: Any) -> Any:
    """``model(x)``, or ``model(**x)`` for a batch of keyword inputs (a dict)."""
    return model(**x) if isinstance(x, dict) else model(x)


def capped(pairs: Iterable[tuple[Any, Any]], calib_samples: int, min_samples: int) -> Iterator[tuple[Any, Any]]:
    """``(x, y)`` batches cut to ``calib_samples`` samples in all; at the end, at least
    ``min_samples`` must have come (any sliceable arrays or tensors; ``y`` may be ``None``).

    >>> [len(x) for x, _ in capped([(np.zeros(4), None)] * 3, 6, 2)]
    [4, 2]
    """
    seen = 0
    for x, y in pairs:
        take = min(n_samples(x), calib_samples - seen)
        yield first(x, take), (y[:take] if y is not None else None)
        seen += take
        if seen >= calib_samples:
            break
    if seen < min_samples:
        raise ValueError(
            f"calibration data has {seen} samples; min_samples={min_samples} requires at least that many; "
            "pass more data or lower min_samples"
        )
