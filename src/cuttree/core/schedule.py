"""Sparsity schedules, as pure functions of the training step."""

from __future__ import annotations


def polynomial_sparsity(
    step: int,
    initial_sparsity: float,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    frequency: int = 1,
    power: float = 3.0,
) -> float:
    """Sparsity at ``step``: Zhu & Gupta's schedule (power 3: cubic), updated every ``frequency``.

    >>> [round(polynomial_sparsity(s, 0.0, 0.8, 0, 100, 10), 4) for s in (0, 50, 100, 200)]
    [0.0, 0.7, 0.8, 0.8]
    """
    if step <= begin_step:
        return initial_sparsity
    if step >= end_step:
        return final_sparsity
    t = begin_step + (step - begin_step) // frequency * frequency
    frac = (t - begin_step) / (end_step - begin_step)
    return initial_sparsity + (final_sparsity - initial_sparsity) * (1 - (1 - frac) ** power)


def due(step: int, begin_step: int, end_step: int, frequency: int) -> bool:
    """Whether masks are recomputed at ``step``: every ``frequency`` steps from ``begin_step``, and at the end.

    >>> [s for s in range(12) if due(s, 2, 9, 3)]
    [2, 5, 8, 9]
    """
    return begin_step <= step <= end_step and ((step - begin_step) % frequency == 0 or step == end_step)
