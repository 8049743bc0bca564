"""Sensitivity analysis, the allocation built on it, and the parameter budget."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import cuttree
from cuttree.core.sensitivity import Sensitivity
from cuttree.datasets.images import digits
from cuttree.errors import PlanError
from cuttree.frontends.torch import frontend as torch_frontend
from cuttree.frontends.torch import sensitivity as analysis
from cuttree.frontends.torch.measure import count_params, evaluate
from cuttree.recover.batching import Subset
from cuttree.recover.train import finetune, recalibrate_bn
from topologies import TOPOLOGIES


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Any]:
    data = digits("train")
    model = small_cnn()
    cfg = cuttree.Config(ratio=0.1, finetune={"epochs": 1, "lr": 0.05, "batch_size": 64, "checkpoint_every": 0})
    finetune(model, data, cfg, log=lambda m: None)
    return model.eval(), data


X = (torch.zeros(1, 3, 32, 32),)
CFG = cuttree.Config(ratio=0.5, min_samples=16, latency_runs=0, finetune={"batch_size": 64})


def test_each_entry_is_the_group_pruned_alone(trained: tuple[nn.Module, Any], tmp_path: Path) -> None:
    model, data = trained
    s = cuttree.sensitivity(model, X, CFG, data, ratios=(0.25, 0.5), samples=200, cache_dir=tmp_path, quiet=True)
    assert s.groups == {"0": 8, "4": 16} and s.ratios == (0.25, 0.5) and s.samples == 200 and s.complete
    subset = Subset(data, s_indices(data, 200))
    recalibrated = copy.deepcopy(model)  # the baseline: the unpruned model, BN recalibrated alike
    recalibrate_bn(recalibrated, subset, CFG)
    assert s.baseline == evaluate(recalibrated, subset, batch_size=64)["top1"]
    # the oracle: prune layer "4" alone at 0.5 through the public API, recalibrate, score
    cfg = cuttree.Config(**{**CFG.to_dict(), "ratio": 0.0, "layers": {"4": {"ratio": 0.5}}})
    alone = cuttree.prune(model, X, cfg).model
    recalibrate_bn(alone, subset, CFG)
    assert s.results["4"]["0.5"] == evaluate(alone, subset, batch_size=64)["top1"]
    assert s.macs["4"]["0.5"] < s.macs["4"]["0.25"] < cuttree.measure(model, X, 0).macs
    assert "drop in points" in s.table() and s.table().count("\n") == 3


def s_indices(data: Any, n: int) -> Any:
    import numpy as np

    return np.sort(np.random.default_rng(0).choice(len(data), size=n, replace=False))


def test_a_repeat_is_instant_and_an_interrupted_run_resumes(
    trained: tuple[nn.Module, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = trained
    full = cuttree.sensitivity(
        model, X, CFG, data, ratios=(0.25, 0.5), samples=100, cache_dir=tmp_path / "a", quiet=True
    )
    calls: list[str] = []
    real = torch_frontend.apply_plan

    def dies_on_the_third(model: Any, plan: Any, *a: Any) -> Any:
        calls.append(next(g.name for g in plan if len(g.keep) < g.size))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process is stopped while the third entry is measured
        return real(model, plan, *a)

    monkeypatch.setattr(torch_frontend, "apply_plan", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        cuttree.sensitivity(model, X, CFG, data, ratios=(0.25, 0.5), samples=100, cache_dir=tmp_path / "b", quiet=True)
    (cache,) = (tmp_path / "b" / "sensitivity").iterdir()
    assert sum(len(v) for v in Sensitivity.load(cache).results.values()) == 2  # the two entries measured are kept
    resumed = cuttree.sensitivity(
        model, X, CFG, data, ratios=(0.25, 0.5), samples=100, cache_dir=tmp_path / "b", quiet=True
    )
    assert len(calls) == 3 + 2  # only the two missing entries were measured on resuming
    assert resumed.results == full.results and resumed.baseline == full.baseline
    # a repeat reads the cache: not one model is evaluated
    monkeypatch.setattr(analysis, "evaluate", _fail)
    again = cuttree.sensitivity(
        model, X, CFG, data, ratios=(0.25, 0.5), samples=100, cache_dir=tmp_path / "a", quiet=True
    )
    assert again.results == full.results


def _fail(*a: Any, **k: Any) -> Any:
    raise AssertionError("a cached sensitivity analysis evaluated a model")


def test_other_weights_or_data_are_another_cache_entry(trained: tuple[nn.Module, Any], tmp_path: Path) -> None:
    model, data = trained
    a = cuttree.sensitivity(model, X, CFG, data, ratios=(0.5,), samples=50, cache_dir=tmp_path, quiet=True)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.mul_(1.01)
    b = cuttree.sensitivity(other, X, CFG, data, ratios=(0.5,), samples=50, cache_dir=tmp_path, quiet=True)
    c = cuttree.sensitivity(model, X, CFG, data, ratios=(0.5,), samples=60, cache_dir=tmp_path, quiet=True)
    assert len({a.key, b.key, c.key}) == 3 and len(list((tmp_path / "sensitivity").iterdir())) == 3


def test_sensitivity_allocation_prunes_where_it_costs_least(trained: tuple[nn.Module, Any]) -> None:
    model, _ = trained
    # group "0" costs nothing to prune, group "4" a lot: the allocation prunes "0" first, and
    # as far as the curve was measured, and meets the MACs budget
    s = Sensitivity("top1", 90.0, (0.25, 0.5, 0.75), 100, "k", {"0": 8, "4": 16})
    s.results = {"0": {"0.25": 90.0, "0.5": 90.0, "0.75": 89.9}, "4": {"0.25": 80.0, "0.5": 60.0, "0.75": 30.0}}
    cfg = cuttree.Config(macs_target=0.6, allocation="sensitivity", latency_runs=0)
    r = cuttree.prune(model, X, cfg, sensitivity=s)
    kept = {g.name: len(g.keep) for g in r.plan}
    assert kept["0"] < 8 and r.plan.macs_after <= 0.6 * r.plan.macs_before
    assert r.after.macs == r.plan.macs_after
    budget = r.plan.budget
    assert budget["allocation"] == "sensitivity" and budget["target"] == 0.6
    assert budget["ratios"]["0"] >= budget["ratios"]["4"]
    uniform = cuttree.prune(model, X, cuttree.Config(macs_target=0.6, latency_runs=0))
    assert len(uniform.plan.groups[0].keep) > kept["0"]  # uniform spreads the cut over both
    assert cuttree.PruningPlan.from_dict(r.plan.to_dict()).budget == budget


def test_sensitivity_allocation_needs_its_inputs(trained: tuple[nn.Module, Any]) -> None:
    model, _ = trained
    with pytest.raises(PlanError, match="allocation: sensitivity needs a sensitivity analysis"):
        cuttree.prune(model, X, cuttree.Config(macs_target=0.5, allocation="sensitivity"))
    s = Sensitivity("top1", 90.0, (0.5,), 100, "k", {"conv9": 8}, {"conv9": {"0.5": 80.0}})
    with pytest.raises(PlanError, match="names none of this model's 2 groups"):
        cuttree.prune(model, X, cuttree.Config(macs_target=0.5, allocation="sensitivity"), sensitivity=s)
    with pytest.raises(ValueError, match="ratio and macs_target are 2 budgets; set one of them"):
        cuttree.Config(ratio=0.5, macs_target=0.5)
    with pytest.raises(ValueError, match=r"strictly between 0 and 1"):
        cuttree.sensitivity(model, X, CFG, digits("test"), ratios=(0.5, 1.0))
    with pytest.raises(ValueError, match="at least min_samples=16 validation samples, got 8"):
        cuttree.sensitivity(model, X, CFG, digits("test"), samples=8)


@pytest.mark.parametrize("name", ["residual", "concat", "depthwise_grouped", "flatten_linear", "attention"])
def test_estimated_parameters_are_the_real_count(name: str) -> None:
    from cuttree.core.budget import estimate_params
    from cuttree.frontends.torch.groups import build_graph

    model, x = TOPOLOGIES[name]()
    r = cuttree.prune(model, x, cuttree.Config(ratio=0.5, latency_runs=0))
    graph = build_graph(model, x)
    import numpy as np

    keeps = [np.asarray(g.keep) for g in r.plan]
    params = {k for k, v in model.named_parameters()}
    assert estimate_params(graph, keeps, params, count_params(model)) == count_params(r.model)


def test_params_target_keeps_at_most_that_fraction() -> None:
    model, x = TOPOLOGIES["residual"]()
    r = cuttree.prune(model, x, cuttree.Config(params_target=0.5, latency_runs=0))
    assert r.after.params <= 0.5 * r.before.params
    looser = cuttree.prune(model, x, cuttree.Config(params_target=0.7, latency_runs=0))
    assert r.after.params < looser.after.params <= 0.7 * r.before.params
    with pytest.raises(PlanError, match=r"params_target=0.001 is unreachable: .* of the parameters"):
        cuttree.prune(model, x, cuttree.Config(params_target=0.001, latency_runs=0))


def test_plans_from_older_files_have_an_empty_budget() -> None:
    model, x = TOPOLOGIES["residual"]()
    d = cuttree.prune(model, x, cuttree.Config(ratio=0.5, latency_runs=0)).plan.to_dict()
    del d["budget"]
    assert cuttree.PruningPlan.from_dict(d).budget == {}
    assert dataclasses.replace(cuttree.PruningPlan.from_dict(d)).budget == {}


def test_cli_sensitivity_then_run_with_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from cuttree.cli.main import main

    model = ["--arch", "cuttree.models:resnet20", "--input-shape", "1,3,32,32", "--data", "digits"]
    sens = tmp_path / "r20.sens.json"
    assert main(["sensitivity", *model, "--samples", "64", "--ratios", "0.5", "--set", "min_samples=32",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(sens), "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    s = Sensitivity.load(sens)
    assert len(s.groups) == 10 and s.ratios == (0.5,) and s.complete and "drop in points" in out
    run = tmp_path / "run"
    assert main(["run", *model, "--set", "macs_target=0.6", "--set", "allocation=sensitivity", "--set", "min_samples=32",
                 "--set", "finetune.epochs=0.05", "--set", "latency_runs=0", "--sensitivity", str(sens),
                 "--out", str(run), "--quiet"]) == 0  # fmt: skip
    report = json.loads((run / "report.json").read_text())
    assert report["budget"]["allocation"] == "sensitivity" and report["after"]["macs"] <= 0.6 * report["before"]["macs"]
    assert Sensitivity.load(run / "sensitivity.json").key == s.key
    assert 'id="fig-sensitivity"' in (run / "report.html").read_text()
    code = main(["run", *model, "--set", "macs_target=0.6", "--set", "allocation=sensitivity", "--out", str(run)])
    assert code == 2 and "needs --sensitivity FILE" in capsys.readouterr().err
