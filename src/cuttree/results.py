"""What a pruning run returns, for every frontend: figures, the result, the before/after table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cuttree.core.plan import PruningPlan


@dataclass(frozen=True)
class Measurements:
    """One model's figures; ``latency_ms`` is ``None`` when it was not measured."""

    params: int
    macs: int
    size_bytes: int
    latency_ms: float | None
    batch_size: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PruneResult:
    """The pruned model, the plan that made it, and before/after measurements."""

    model: Any  #: a torch ``nn.Module``, or a Keras model from :mod:`cuttree.keras`
    plan: PruningPlan
    before: Measurements
    after: Measurements
    timings: dict[str, float] = field(default_factory=dict)
    unsupported_ops: dict[str, int] = field(default_factory=dict)

    def table(self) -> str:
        """Before/after figures as a small text table."""
        return measurements_table(self.before, self.after)


def measurements_table(before: Measurements, after: Measurements) -> str:
    """``metric  before  after  change`` rows for params, MACs, size and latency."""

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}× smaller" if a and b else "—"

    def lat(x: float | None) -> str:
        return f"{x:.2f} ms" if x is not None else "not measured"

    rows = [
        ("", "before", "after", "change"),
        ("parameters", f"{before.params:,}", f"{after.params:,}", ratio(before.params, after.params)),
        ("MACs", f"{before.macs:,}", f"{after.macs:,}", ratio(before.macs, after.macs)),
        (
            "size on disk",
            f"{before.size_bytes / 1e6:.2f} MB",
            f"{after.size_bytes / 1e6:.2f} MB",
            ratio(before.size_bytes, after.size_bytes),
        ),
        (
            "latency",
            lat(before.latency_ms),
            lat(after.latency_ms),
            ratio(before.latency_ms, after.latency_ms).replace("smaller", "faster"),
        ),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)
