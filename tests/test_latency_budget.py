"""The latency budget's search, on a clock that is a known function of MACs (timing itself is a bench's job)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

import cuttree
from cuttree import latency_budget
from cuttree.errors import PlanError
from cuttree.measure import count_macs


def fake_timers(ms_per_mmac: float, overhead: float) -> Callable[..., list[Callable[[], float]]]:
    """Timers whose 'milliseconds' are overhead + MACs at batch B × a rate: a machine with no noise."""

    def make(models: Sequence[nn.Module], inputs: Sequence[torch.Tensor], runtime: str) -> list[Callable[[], float]]:
        out = []
        for m in models:
            ms = overhead + count_macs(m, tuple(inputs)) / 1e6 * ms_per_mmac
            out.append(lambda ms=ms: ms)
        return out

    return make


@pytest.fixture
def model() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from cuttree.models import resnet20

    torch.manual_seed(0)
    return resnet20().eval(), (torch.randn(1, 3, 32, 32),)


def test_the_budget_is_met_within_tolerance_and_recorded(
    model: tuple[nn.Module, tuple[torch.Tensor, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    m, x = model
    monkeypatch.setattr(latency_budget, "timers", fake_timers(0.05, overhead=1.0))
    dense_ms = 1.0 + count_macs(m, (torch.randn(8, *x[0].shape[1:]),)) / 1e6 * 0.05
    goal = 0.6 * dense_ms
    cfg = cuttree.Config(latency_target={"ms": goal, "batch": 8}, latency_runs=0)
    r = cuttree.prune(m, x, cfg)
    b = r.plan.budget
    assert b["latency_target_ms"] == goal and b["batch"] == 8 and b["runtime"] == "eager"
    assert b["dense_ms"] == round(dense_ms, 3)
    assert goal * 0.95 <= b["measured_ms"] <= goal  # within 5% below the budget
    assert b["margin"] == pytest.approx((goal - b["measured_ms"]) / goal, abs=1e-4)
    assert 1 <= len(b["rounds"]) <= latency_budget.ROUNDS
    # what was measured is the pruned model's own clock reading
    assert b["measured_ms"] == round(1.0 + count_macs(r.model, (torch.randn(8, *x[0].shape[1:]),)) / 1e6 * 0.05, 3)
    assert cuttree.PruningPlan.from_dict(r.plan.to_dict()).budget["measured_ms"] == b["measured_ms"]


def test_an_unreachable_or_already_met_budget_is_one_line(
    model: tuple[nn.Module, tuple[torch.Tensor, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    m, x = model
    monkeypatch.setattr(latency_budget, "timers", fake_timers(0.05, overhead=50.0))  # mostly fixed cost
    with pytest.raises(PlanError, match=r"latency_target 52 ms was not reached in 7 rounds"):
        cuttree.prune(m, x, cuttree.Config(latency_target={"ms": 52, "batch": 8}, latency_runs=0))
    with pytest.raises(PlanError, match=r"latency_target 1e\+06 ms is already met: the dense model takes"):
        cuttree.prune(m, x, cuttree.Config(latency_target={"ms": 1e6, "batch": 8}, latency_runs=0))
    with pytest.raises(ValueError, match="ratio and latency_target are 2 budgets"):
        cuttree.Config(ratio=0.5, latency_target={"ms": 5})
    with pytest.raises(PlanError, match="latency_target is met by measuring"):
        cuttree.make_plan(m, x, cuttree.Config(latency_target={"ms": 5}))
