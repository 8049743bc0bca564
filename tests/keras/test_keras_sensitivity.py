"""The Keras sensitivity analysis and ``allocation: sensitivity`` for Keras models: each entry
against the group pruned alone through the public API (the oracle), the cache, resuming, and
the allocation it feeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import cuttree  # noqa: E402
import cuttree.keras as ck  # noqa: E402
from cuttree.errors import PlanError  # noqa: E402
from cuttree.frontends.keras import sensitivity as keras_sensitivity  # noqa: E402
from cuttree.frontends.keras import surgery as keras_surgery  # noqa: E402

CFG = cuttree.Config(ratio=0.5, min_samples=16, latency_runs=0, round_to=1, finetune={"batch_size": 32})


def small_cnn() -> Any:
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(x))
    x = keras.layers.Conv2D(16, 3, padding="same", name="c2")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn2")(x))
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def trained() -> tuple[Any, np.ndarray, np.ndarray]:
    """A small CNN trained a little on a task it can learn: which colour channel is brightest."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(384, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=384)
    x[np.arange(384), :, :, y] += 1.0
    model = small_cnn()
    cfg = cuttree.Config(ratio=0.1, finetune={"epochs": 3, "batch_size": 32, "lr": 0.05})
    ck.finetune(model, cfg, x, y, augment=False)
    return model, x, y


def test_each_entry_is_the_group_pruned_alone(
    trained: tuple[Any, np.ndarray, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x, y = trained
    before = [w.copy() for w in model.get_weights()]
    recals: list[tuple[Any, ...]] = []
    real = keras_sensitivity.recalibrate_bn

    def recorded(m: Any, xb: np.ndarray, **kw: Any) -> int:
        recals.append((xb, kw))
        return real(m, xb, **kw)

    monkeypatch.setattr(keras_sensitivity, "recalibrate_bn", recorded)
    s = ck.sensitivity(model, CFG, (x, y), ratios=(0.25, 0.5), samples=200, cache_dir=tmp_path, quiet=True)
    assert s.groups == {"c1": 8, "c2": 16} and s.ratios == (0.25, 0.5) and s.samples == 200 and s.complete
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))  # untouched
    idx = np.sort(np.random.default_rng(CFG.seed).choice(len(x), size=200, replace=False))
    xs, ys = x[idx], y[idx]
    assert len(recals) == 5  # the baseline and four entries, each on the subset, as below
    assert all(np.array_equal(xb, xs) and kw == {"batches": 7, "batch_size": 32, "seed": 0} for xb, kw in recals)

    def recalibrated(m: Any) -> float:  # 256 calibration samples (calib_samples) in batches of 32
        ck.recalibrate_bn(m, xs, batches=7, batch_size=32, seed=CFG.seed)
        return ck.evaluate(m, xs, ys, batch_size=32)

    # the oracle: c2 pruned alone at 0.5 through the public API, recalibrated, scored
    alone = ck.prune(model, cuttree.Config(**{**CFG.to_dict(), "ratio": 0.0, "layers": {"c2": {"ratio": 0.5}}}))
    assert alone.model.get_layer("c2").filters == 8 and alone.model.get_layer("c1").filters == 8
    assert s.results["c2"]["0.5"] == recalibrated(alone.model)
    whole = ck.prune(model, cuttree.Config(**{**CFG.to_dict(), "ratio": 0.0}))
    assert s.baseline == recalibrated(whole.model)
    assert s.macs["c2"]["0.5"] == alone.after.macs < s.macs["c2"]["0.25"] < whole.after.macs
    assert "drop in points" in s.table() and s.table().count("\n") == 3


def test_a_repeat_is_instant_and_an_interrupted_run_resumes(
    trained: tuple[Any, np.ndarray, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x, y = trained
    full = ck.sensitivity(model, CFG, (x, y), ratios=(0.25, 0.5), samples=100, cache_dir=tmp_path / "a", quiet=True)
    real = keras_surgery.apply_plan
    calls: list[int] = []

    def dies_on_the_third(*a: Any) -> Any:  # each entry rebuilds the model (the baseline is a copy)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(keras_surgery, "apply_plan", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        ck.sensitivity(model, CFG, (x, y), ratios=(0.25, 0.5), samples=100, cache_dir=tmp_path / "b", quiet=True)
    (cache,) = (tmp_path / "b" / "sensitivity").glob("*.json")
    partial = json.loads(cache.read_text())
    assert sum(len(v) for v in partial["results"].values()) == 2  # two entries saved before the kill
    calls.clear()
    monkeypatch.setattr(keras_surgery, "apply_plan", lambda *a: calls.append(1) or real(*a))
    resumed = ck.sensitivity(model, CFG, (x, y), ratios=(0.25, 0.5), samples=100, cache_dir=tmp_path / "b", quiet=True)
    assert len(calls) == 2 and resumed.results == full.results and resumed.baseline == full.baseline
    calls.clear()
    again = ck.sensitivity(model, CFG, (x, y), ratios=(0.25, 0.5), samples=100, cache_dir=tmp_path / "b", quiet=True)
    assert calls == [] and again.results == full.results  # complete in the cache: nothing re-measured


def test_the_cache_key_follows_weights_data_and_settings(
    trained: tuple[Any, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model, x, y = trained

    def key(m: Any = model, cfg: cuttree.Config = CFG, data: Any = (x, y)) -> str:
        return ck.sensitivity(m, cfg, data, ratios=(0.5,), samples=50, cache_dir=tmp_path, quiet=True).key

    first = key()
    assert key() == first
    other = keras.models.clone_model(model)
    other.set_weights([w + 1e-3 for w in model.get_weights()])
    assert key(m=other) != first
    assert key(cfg=CFG.model_copy(update={"criterion": "l2"})) != first
    assert key(data=(x[::-1].copy(), y[::-1].copy())) != first


def test_sensitivity_allocation_meets_the_budget_and_records_it(
    trained: tuple[Any, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model, x, y = trained
    s = ck.sensitivity(model, CFG, (x, y), ratios=(0.25, 0.5, 0.75), samples=200, cache_dir=tmp_path, quiet=True)
    cfg = cuttree.Config(macs_target=0.5, allocation="sensitivity", round_to=1, latency_runs=0)
    r = ck.prune(model, cfg, sensitivity=s)
    assert r.after.macs <= 0.5 * r.before.macs and r.plan.budget["allocation"] == "sensitivity"
    assert set(r.plan.budget["ratios"]) == {"c1", "c2"} and r.plan.framework == "keras"
    assert ck.make_plan(model, cfg, sensitivity=s)[0].to_dict() == r.plan.to_dict()
    with pytest.raises(PlanError, match="needs a sensitivity analysis of this model"):
        ck.prune(model, cfg)


def test_bad_arguments_are_one_line_errors(trained: tuple[Any, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    model, x, y = trained
    for ratios in [(0.0, 0.5), (1.0,), ()]:
        with pytest.raises(ValueError, match=r"must each lie strictly between 0 and 1") as e:
            ck.sensitivity(model, CFG, (x, y), ratios=ratios, cache_dir=tmp_path, quiet=True)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="at least min_samples=16 validation samples, got 8"):
        ck.sensitivity(model, CFG, (x[:8], y[:8]), cache_dir=tmp_path, quiet=True)
    with pytest.raises(ValueError, match=r"an \(x, y\) pair of validation arrays"):
        ck.sensitivity(model, CFG, x, cache_dir=tmp_path, quiet=True)
    with pytest.raises(ValueError, match="384 inputs and 10 labels"):
        ck.sensitivity(model, CFG, (x, y[:10]), cache_dir=tmp_path, quiet=True)


def test_cli_sensitivity_then_run_with_the_allocation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cuttree.cli.main import main

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, name="c1")(inp)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(x))
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="c2")(x)
    out = keras.layers.Dense(10, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    src = tmp_path / "digits.keras"
    keras.Model(inp, out).save(src)
    sens = tmp_path / "sens.json"
    common = ["--model", str(src), "--data", "digits", "--set", "round_to=1", "--set", "finetune.batch_size=32"]
    args = ["sensitivity", *common, "--samples", "64", "--ratios", "0.25,0.5", "--cache-dir", str(tmp_path / "c")]
    assert main([*args, "--out", str(sens), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "drop in points after pruning one group alone" in printed and f"wrote {sens} (2 groups × 2 ratios" in printed
    s = cuttree.Sensitivity.load(sens)
    assert s.groups == {"c1": 16, "c2": 16} and s.samples == 64 and s.complete
    run = ["run", *common, "--set", "macs_target=0.6", "--set", "allocation=sensitivity"]
    run += ["--set", "finetune.epochs=0.1", "--set", "finetune.distill=0", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(run) == 2  # a one-line error, exit status 2 (a bad value)
    assert "allocation: sensitivity needs --sensitivity FILE" in capsys.readouterr().err
    assert main([*run, "--sensitivity", str(sens)]) == 0
    plan = ck.plan_of(tmp_path / "run" / "model.keras")
    assert plan.budget["allocation"] == "sensitivity" and plan.macs_after <= 0.6 * plan.macs_before
