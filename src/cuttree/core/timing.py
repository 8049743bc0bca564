"""Latency figures that can be compared: two models timed interleaved, medians with a spread.

Timing the dense model at one moment and the pruned one at another compares two machines: a
busy minute in between makes a model look 12× faster or 2× slower. So before/after figures come
from one loop after the same warm-up (dense, pruned, dense, pruned, …), each reported as the
median and the interquartile range of its runs, and a change whose ranges overlap is called
"within noise". Framework-neutral: a frontend hands in callables that time one forward pass.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Median and interquartile range (milliseconds) of ``runs`` timed calls.

    >>> Timing.of([4.0, 1.0, 3.0, 2.0, 5.0])
    Timing(median_ms=3.0, q1_ms=2.0, q3_ms=4.0, runs=5)
    """

    median_ms: float
    q1_ms: float
    q3_ms: float
    runs: int

    @classmethod
    def of(cls, times_ms: Sequence[float]) -> Timing:
        xs = sorted(times_ms)
        if not xs:
            raise ValueError("no timed runs: latency_runs must be at least 1 to time a model")
        if len(xs) == 1:
            return cls(xs[0], xs[0], xs[0], 1)
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        return cls(statistics.median(xs), q1, q3, len(xs))


def interleaved(timers: Sequence[Callable[[], float]], runs: int, warmup: int = 3) -> list[Timing]:
    """Time each of ``timers`` (a call that runs one forward pass and returns its milliseconds)
    ``runs`` times, round-robin, after ``warmup`` untimed rounds of all of them.

    >>> a, b = interleaved([lambda: 2.0, lambda: 1.0], runs=3)
    >>> (a.median_ms, b.median_ms, a.runs)
    (2.0, 1.0, 3)
    """
    for _ in range(warmup):
        for t in timers:
            t()
    times: list[list[float]] = [[] for _ in timers]
    for _ in range(runs):
        for out, t in zip(times, timers, strict=True):
            out.append(t())
    return [Timing.of(ts) for ts in times]


def verdict(
    before_ms: float | None,
    after_ms: float | None,
    before_iqr: tuple[float, float] | None = None,
    after_iqr: tuple[float, float] | None = None,
) -> str:
    """How ``after`` compares with ``before``: "N× faster", "N× slower", or "within noise" when
    the two interquartile ranges overlap (a difference the runs' own spread can explain).

    >>> verdict(10.0, 5.0, (9.5, 10.5), (4.8, 5.2))
    '2.00× faster'
    >>> verdict(10.0, 12.5)
    '1.25× slower'
    >>> verdict(10.0, 9.8, (9.0, 11.0), (9.5, 10.2))
    'within noise (1.02× faster)'
    >>> verdict(None, 3.0)
    '—'
    """
    if not before_ms or not after_ms:
        return "—"
    ratio = before_ms / after_ms
    word = f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"
    if before_iqr and after_iqr and before_iqr[0] <= after_iqr[1] and after_iqr[0] <= before_iqr[1]:
        return f"within noise ({word})"
    return word
