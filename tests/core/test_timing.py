"""Before/after latency: timed interleaved in one loop, medians with a spread, honest labels."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import cuttree
from cuttree.core.results import Measurements, measurements_table, speed_change
from cuttree.core.timing import Timing, interleaved, verdict
from cuttree.frontends.torch.measure import compare


class Logged(nn.Module):
    """Appends its name to ``log`` on every call and sleeps ``ms`` milliseconds."""

    def __init__(self, name: str, log: list[str], ms: float = 0.0) -> None:
        super().__init__()
        self.name, self.log, self.ms = name, log, ms
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        if self.ms:
            time.sleep(self.ms / 1000)
        return self.lin(x)


def test_quartiles_are_the_inclusive_ones() -> None:
    assert Timing.of([1.0, 2.0, 3.0, 4.0]) == Timing(2.5, 1.75, 3.25, 4)
    assert Timing.of([7.0]) == Timing(7.0, 7.0, 7.0, 1)
    with pytest.raises(ValueError, match="latency_runs must be at least 1"):
        Timing.of([])


def test_models_are_timed_round_robin_after_the_same_warm_up() -> None:
    log: list[str] = []
    compare(Logged("dense", log), Logged("pruned", log), (torch.zeros(2, 4),), latency_runs=4)
    # count_macs runs each once first (dense, then pruned), then 3 warm-up rounds and 4 timed ones
    assert log == ["dense", "pruned"] + ["dense", "pruned"] * 7


def test_interleaved_calls_each_timer_runs_times() -> None:
    calls: list[int] = []
    out = interleaved([lambda: calls.append(0) or 1.0, lambda: calls.append(1) or 3.0], runs=2, warmup=1)
    assert calls == [0, 1] * 3
    assert [t.median_ms for t in out] == [1.0, 3.0]


def test_a_slower_model_is_called_slower() -> None:
    log: list[str] = []
    before, after = compare(Logged("a", log), Logged("b", log, ms=20), (torch.zeros(1, 4),), latency_runs=5)
    assert after.latency_ms is not None and before.latency_ms is not None
    assert after.latency_ms > before.latency_ms + 15
    assert speed_change(before, after).endswith("× slower")
    assert "faster" not in measurements_table(before, after).splitlines()[-1]


def test_overlapping_spreads_are_within_noise() -> None:
    assert verdict(10.0, 9.9, (9.0, 11.0), (9.5, 10.5)) == "within noise (1.01× faster)"
    assert verdict(10.0, 12.0, (9.9, 10.1), (11.9, 12.1)) == "1.20× slower"
    assert verdict(10.0, 5.0, (9.9, 10.1), (4.9, 5.1)) == "2.00× faster"


def test_figures_timed_apart_say_so() -> None:
    a = Measurements(10, 10, 10, 10.0, 1, 1, 9.9, 10.1, "alone")
    b = Measurements(5, 5, 5, 5.0, 1, 1, 4.9, 5.1, "alone")
    assert speed_change(a, b) == "2.00× faster, timed apart"
    old = Measurements(10, 10, 10, 10.0, 1, 1)  # a file written before latencies had a spread
    assert speed_change(old, b) == "2.00× faster, timed apart"


def test_prune_times_dense_and_pruned_side_by_side() -> None:
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))
    x = (torch.randn(1, 3, 16, 16),)
    r = cuttree.prune(net, x, cuttree.Config(ratio=0.5, latency_runs=5))
    assert (r.before.latency_timing, r.after.latency_timing) == ("interleaved", "interleaved")
    iqr = r.after.latency_iqr
    assert iqr is not None and iqr[0] <= r.after.latency_ms <= iqr[1]  # type: ignore[operator]
    assert r.before.params == 3 * 16 * 9 + 16 + 16 * 4 + 4
    assert r.after.params == 3 * 8 * 9 + 8 + 8 * 4 + 4
    inplace = cuttree.prune(net, x, cuttree.Config(ratio=0.5, latency_runs=3), inplace=True)
    assert (inplace.before.latency_timing, inplace.after.latency_timing) == ("alone", "alone")
    assert speed_change(inplace.before, inplace.after).endswith("timed apart")


def test_cuttree_measure_is_callable_after_its_module_was_imported() -> None:
    import subprocess
    import sys

    code = (
        "import torch, cuttree\n"
        "r = cuttree.prune(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)), (torch.zeros(1, 4),),"
        " cuttree.Config(ratio=0.5, latency_runs=0))\n"  # imports cuttree.measure, the module
        "print(cuttree.measure(r.model, (torch.zeros(1, 4),), 0).params)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(4 * 2 + 2 + 2 * 2 + 2)
