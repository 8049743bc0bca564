"""What a pruning run returns, for every frontend: figures, the result, the before/after table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cuttree.config import Config
from cuttree.core.plan import PruningPlan
from cuttree.core.timing import Timing, verdict


@dataclass(frozen=True)
class Measurements:
    """One model's figures; ``latency_ms`` is ``None`` when it was not measured.

    ``latency_ms`` is a median; ``latency_q1_ms``/``latency_q3_ms`` the interquartile range of the
    same runs; ``latency_timing`` says whether the model was timed ``"interleaved"`` with the one
    it is compared with (one loop, the same warm-up) or ``"alone"``.
    """

    params: int
    macs: int
    size_bytes: int
    latency_ms: float | None
    batch_size: int
    threads: int
    latency_q1_ms: float | None = None
    latency_q3_ms: float | None = None
    latency_timing: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurements:
        """The figures in ``d`` (a report's ``before``/``after`` entry; other keys ignored)."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def latency_iqr(self) -> tuple[float, float] | None:
        if self.latency_q1_ms is None or self.latency_q3_ms is None:
            return None
        return (self.latency_q1_ms, self.latency_q3_ms)

    def with_timing(self, t: Timing, how: str) -> Measurements:
        """These figures with the latency of ``t``, timed ``how`` ("interleaved" or "alone")."""
        return replace(self, latency_ms=t.median_ms, latency_q1_ms=t.q1_ms, latency_q3_ms=t.q3_ms, latency_timing=how)

    def latency_text(self) -> str:
        """``12.30 ms (12.10–12.60)``: the median and the interquartile range, or "not measured"."""
        if self.latency_ms is None:
            return "not measured"
        iqr = self.latency_iqr
        return f"{self.latency_ms:.2f} ms" + (f" ({iqr[0]:.2f}–{iqr[1]:.2f})" if iqr else "")


@dataclass(frozen=True)
class Tuned:
    """What fine-tuning did, for every frontend: the optimizer steps it ran, the last training
    loss (``None`` when no step ran here, as when a finished run is resumed) and the validation
    record (where it scored, which weights it kept)."""

    steps: int
    final_loss: float | None
    validation: dict[str, Any]


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
        """Before/after figures as a small text table, under a "nothing pruned" line when a
        structured plan kept every channel."""
        table = measurements_table(self.before, self.after)
        if self.plan.config.get("method", "structured") == "structured" and self.plan.removes_nothing:
            why = self.plan.budget.get("shortfall", "nothing pruned: the plan keeps every channel")
            return f"{why}\n{table}"
        return table


def measurements_table(before: Measurements, after: Measurements) -> str:
    """``metric  before  after  change`` rows for params, MACs, size and latency."""

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}× smaller" if a and b else "—"

    rows = [
        ("", "before", "after", "change"),
        ("parameters", f"{before.params:,}", f"{after.params:,}", ratio(before.params, after.params)),
        ("MACs (counted)", f"{before.macs:,}", f"{after.macs:,}", ratio(before.macs, after.macs)),
        (
            "size on disk",
            f"{before.size_bytes / 1e6:.2f} MB",
            f"{after.size_bytes / 1e6:.2f} MB",
            ratio(before.size_bytes, after.size_bytes),
        ),
        (
            "latency",
            before.latency_text(),
            after.latency_text(),
            speed_change(before, after),
        ),
    ]
    return aligned(rows)


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as text columns: the first left-aligned, the others right-aligned.

    >>> print(aligned([("", "before", "after"), ("MACs", "10", "5")]))
          before  after
    MACs      10      5
    """
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def speed_change(before: Measurements, after: Measurements) -> str:
    """ "N× faster", "N× slower" or "within noise", and "timed apart" when the two were not
    timed in one interleaved loop (their ratio then also measures what else the machine did)."""
    text = verdict(before.latency_ms, after.latency_ms, before.latency_iqr, after.latency_iqr)
    if text != "—" and not (before.latency_timing == after.latency_timing == "interleaved"):
        text += ", timed apart"
    return text


@dataclass
class SparsifyResult:
    """A model with masked weights (a torch model keeps its masks as parametrizations, a Keras model
    is a copy with zeroed kernels), the keep-masks by layer name, and the sparsity reached."""

    model: Any
    masks: dict[str, Any]  #: torch tensors or numpy arrays, in the framework's weight layout
    sparsity: float


def metric_name(config: Config) -> str:
    """The task metric of ``config.mode``: ``"miou"`` for segmentation, ``"top1"`` for classification."""
    return "miou" if config.mode == "segmentation" else "top1"


@dataclass(frozen=True)
class Metric:
    """How a task metric reads: its label, its direction, whether it is a percentage."""

    label: str
    higher_is_better: bool = True
    percent: bool = True


METRICS = {
    "top1": Metric("top-1 (%)"),
    "miou": Metric("mean IoU (%)"),
    "spearman": Metric("Spearman ×100", percent=False),
    "perplexity": Metric("perplexity", higher_is_better=False, percent=False),
}


def metric_key(metric: dict[str, Any]) -> str | None:
    """The task metric among an evaluation's figures (the first :data:`METRICS` names), else ``None``.

    >>> metric_key({"top5": 99.0, "top1": 91.5}), metric_key({"perplexity": 22.7}), metric_key({})
    ('top1', 'perplexity', None)
    """
    return next((k for k in METRICS if k in metric), None)


def metric_change(key: str, before: float, after: float) -> str:
    """The change of a metric as read: points for a percentage or a score, a factor for perplexity.

    >>> metric_change("top1", 91.5, 90.25), metric_change("perplexity", 20.0, 25.0)
    ('-1.25 points', '1.25×')
    """
    if METRICS[key].higher_is_better:
        return f"{after - before:+.2f} points"
    return f"{after / before:.2f}×" if before else "—"


def is_worse(key: str, before: float, after: float) -> bool:
    """Whether ``after`` is worse than ``before`` for metric ``key``.

    >>> is_worse("top1", 80.0, 75.5), is_worse("perplexity", 20.0, 19.0)
    (True, False)
    """
    return after < before if METRICS[key].higher_is_better else after > before
