"""Memory checks before big allocations, framework-free (every frontend uses them).

A job that cannot fit is refused before it starts, naming the size it needs, instead of being
killed by the kernel halfway through or leaving the machine swapping.
"""

from __future__ import annotations

from cuttree.errors import ResourceError


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(need: int, what: str, fix: str) -> None:
    """Refuse early, naming the size needed, if ``need`` bytes exceed what the machine has free.

    >>> check_memory(1, "a byte", "nothing")  # fine on any machine
    """
    have = available_memory()
    if have is not None and need > have:
        raise ResourceError(
            f"{what} needs about {_size(need)} of memory; this machine has {_size(have)} available; {fix}"
        )


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
