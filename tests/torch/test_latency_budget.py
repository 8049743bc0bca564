"""The latency budget's search, on a clock that is a known function of MACs (timing itself is a bench's job)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

import cuttree
from cuttree.core.timing import Timing, interleaved
from cuttree.errors import PlanError
from cuttree.frontends.torch import latency_budget
from cuttree.frontends.torch.measure import count_macs


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
    assert goal * 0.975 <= b["measured_ms"] <= goal  # in the upper half of the 5% window below the budget
    assert b["margin"] == pytest.approx((goal - b["measured_ms"]) / goal, abs=1e-4)
    assert 1 <= len(b["rounds"]) <= latency_budget.ROUNDS
    # what was measured is the pruned model's own clock reading
    assert b["measured_ms"] == round(1.0 + count_macs(r.model, (torch.randn(8, *x[0].shape[1:]),)) / 1e6 * 0.05, 3)
    assert cuttree.PruningPlan.from_dict(r.plan.to_dict()).budget["measured_ms"] == b["measured_ms"]


def test_a_fraction_budget_holds_on_a_machine_whose_speed_drifts_between_loops(
    model: tuple[nn.Module, tuple[torch.Tensor, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every timing loop runs on a machine 0.7–1.4× as fast as the last one: each model's
    milliseconds jump, but pruned ÷ dense in one loop does not, and that is what is judged."""
    m, x = model
    speed = [1.0]
    rng = iter([1.4, 0.7, 1.3, 0.8, 1.2, 0.75, 1.35, 0.9, 1.1, 1.25] * 3)
    clean = fake_timers(0.05, overhead=1.0)

    def drifting(
        models: Sequence[nn.Module], inputs: Sequence[torch.Tensor], runtime: str
    ) -> list[Callable[[], float]]:
        return [lambda t=t: t() * speed[0] for t in clean(models, inputs, runtime)]

    def loop(ts: Sequence[Callable[[], float]], runs: int, warmup: int = 3) -> list[Timing]:
        speed[0] = next(rng)
        return interleaved(ts, runs, warmup)

    monkeypatch.setattr(latency_budget, "timers", drifting)
    monkeypatch.setattr(latency_budget, "interleaved", loop)
    r = cuttree.prune(m, x, cuttree.Config(latency_target={"fraction": 0.6, "batch": 8}, latency_runs=0))
    b = r.plan.budget
    xb = (torch.randn(8, *x[0].shape[1:]),)
    truth = clean([r.model], xb, "eager")[0]() / clean([m], xb, "eager")[0]()
    assert b["latency_target_fraction"] == 0.6
    assert 0.57 <= truth <= 0.6 and b["latency_fraction"] == round(truth, 4)
    assert b["margin"] == pytest.approx((0.6 - truth) / 0.6, abs=1e-4)
    assert len({h["dense_ms"] for h in b["rounds"]}) == len(b["rounds"])  # the dense clock really moved
    with pytest.raises(ValueError, match=r"latency_target needs ms .* or fraction .*got both: keep one"):
        cuttree.Config(latency_target={"ms": 5, "fraction": 0.5})


def test_the_search_runs_on_rounded_widths_where_they_are_faster_per_mac(
    model: tuple[nn.Module, tuple[torch.Tensor, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock whose kernels run 1.5× slower on any width that is not a multiple of 8; a plain
    CNN whose groups (64–256 channels) ``round_to: auto`` rounds, and whose widths differ enough
    for steps of 8 to come close to the MACs asked for."""
    _, x = model
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for cin, cout in [(3, 64), (64, 120), (120, 200), (200, 256)]:
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    m = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)).eval()

    def odd(models: Sequence[nn.Module], inputs: Sequence[torch.Tensor], runtime: str) -> list[Callable[[], float]]:
        out = []
        for net in models:
            widths = [c.out_channels for c in net.modules() if isinstance(c, nn.Conv2d)]
            ms = count_macs(net, tuple(inputs)) / 1e6 * 0.05 * (1.5 if any(w % 8 for w in widths) else 1.0)
            out.append(lambda ms=ms: ms)
        return out

    monkeypatch.setattr(latency_budget, "timers", odd)
    r = cuttree.prune(m, x, cuttree.Config(latency_target={"fraction": 0.6, "batch": 8}, latency_runs=0))
    b = r.plan.budget
    assert b["rounding"]["kept"] and b["rounding"]["time_per_mac"] < 0.97
    assert all(c.out_channels % 8 == 0 for c in r.model.modules() if isinstance(c, nn.Conv2d))
    assert 0.57 <= b["latency_fraction"] <= 0.6
    # the same clock without the penalty: rounding buys nothing per MAC, the widths stay free
    monkeypatch.setattr(latency_budget, "timers", fake_timers(0.05, overhead=0.0))
    r = cuttree.prune(m, x, cuttree.Config(latency_target={"fraction": 0.6, "batch": 8}, latency_runs=0))
    assert not r.plan.budget["rounding"]["kept"] and 0.57 <= r.plan.budget["latency_fraction"] <= 0.6
    # resnet20's 16- and 32-channel groups stay free under auto: the penalty hits both ways alike
    monkeypatch.setattr(latency_budget, "timers", odd)
    r = cuttree.prune(model[0], x, cuttree.Config(latency_target={"fraction": 0.6, "batch": 8}, latency_runs=0))
    assert not r.plan.budget["rounding"]["kept"]
    # an explicit round_to is what the user asked for: no trial
    r = cuttree.prune(m, x, cuttree.Config(latency_target={"fraction": 0.6, "batch": 8}, round_to=1, latency_runs=0))
    assert "rounding" not in r.plan.budget


def test_an_unreachable_or_already_met_budget_is_one_line(
    model: tuple[nn.Module, tuple[torch.Tensor, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    m, x = model
    monkeypatch.setattr(latency_budget, "timers", fake_timers(0.05, overhead=50.0))  # mostly fixed cost
    with pytest.raises(
        PlanError,
        match=r"latency_target 52 ms was not reached in 7 rounds \(last: [0-9.]+ ms, 0\.8[0-9]* of the dense latency, at 0\.[0-9]+ of the MACs\); set a higher budget",
    ):
        cuttree.prune(m, x, cuttree.Config(latency_target={"ms": 52, "batch": 8}, latency_runs=0))
    with pytest.raises(PlanError, match=r"latency_target 1e\+06 ms is already met: the dense model takes"):
        cuttree.prune(m, x, cuttree.Config(latency_target={"ms": 1e6, "batch": 8}, latency_runs=0))
    with pytest.raises(ValueError, match="ratio and latency_target are 2 budgets"):
        cuttree.Config(ratio=0.5, latency_target={"ms": 5})
    with pytest.raises(PlanError, match="latency_target is met by measuring"):
        cuttree.make_plan(m, x, cuttree.Config(latency_target={"ms": 5}))
