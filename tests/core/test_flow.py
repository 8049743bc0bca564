"""One flow, two frontends: the same scenario through the torch and the Keras frontend, by the
:class:`~cuttree.core.frontend.Frontend` protocol alone.

The two models are one network written twice (the Keras kernels are the torch weights
transposed), so every decision must come out the same: the same channels kept, the same
parameter count, the same outputs on the same input.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

keras = pytest.importorskip("keras")

import cuttree  # noqa: E402
from cuttree.core import flow  # noqa: E402
from cuttree.core.frontend import FRONTENDS, Frontend, frontend_for, frontend_named  # noqa: E402
from cuttree.core.grouping import Group  # noqa: E402
from cuttree.core.importance import REGISTRY, criterion, per_position  # noqa: E402

X = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
Y = np.arange(16) % 3


def torch_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def keras_twin(net: nn.Module) -> Any:
    """The same network in Keras (channels last), holding ``net``'s weights."""
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c2")(h)
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    for name, (w, b) in {"c1": (net[0].weight, net[0].bias), "c2": (net[2].weight, net[2].bias)}.items():
        model.get_layer(name).set_weights([w.detach().permute(2, 3, 1, 0).numpy(), b.detach().numpy()])
    model.get_layer("head").set_weights([net[6].weight.detach().T.numpy(), net[6].bias.detach().numpy()])
    return model


@pytest.fixture
def twins() -> dict[str, tuple[Any, Any, Any, Any]]:
    """Frontend name → (model, example inputs, calibration data, the input to compare outputs on)."""
    net = torch_net()
    batches = [(torch.from_numpy(X[i : i + 8]), torch.from_numpy(Y[i : i + 8])) for i in (0, 8)]
    nhwc = X.transpose(0, 2, 3, 1)
    return {
        "torch": (net, (torch.from_numpy(X[:1]),), batches, torch.from_numpy(X)),
        "keras": (keras_twin(net), None, (nhwc, Y), nhwc),
    }


def output(model: Any, x: Any) -> np.ndarray:
    if isinstance(model, nn.Module):
        with torch.no_grad():
            return model.eval()(x).numpy()
    return np.asarray(keras.ops.convert_to_numpy(model(x)))


def test_both_frontends_are_registered_and_found_by_their_models(twins: dict[str, Any]) -> None:
    assert FRONTENDS.names() == ["keras", "torch"]
    for name, (model, *_) in twins.items():
        fe: Frontend = frontend_for(model)
        assert fe.name == name and fe is frontend_named(name)
    with pytest.raises(KeyError, match="unknown frontend 'jax'"):
        frontend_named("jax")


@pytest.mark.parametrize("criterion_name", ["l1", "taylor"])
def test_the_same_scenario_gives_the_same_decisions_on_both_frontends(
    twins: dict[str, Any], criterion_name: str
) -> None:
    cfg = cuttree.Config(ratio=0.5, criterion=criterion_name, min_samples=8, calib_samples=16, latency_runs=0)
    results = {}
    for name, (model, inputs, calib, x) in twins.items():
        fe = frontend_for(model)
        plan, _ = flow.make_plan(fe, model, cfg, inputs, calib)
        r = flow.prune(fe, model, cfg, inputs, calib)
        assert [g.keep for g in r.plan.groups] == [g.keep for g in plan.groups]  # planning alone = pruning's plan
        results[name] = (r, output(r.model, x))
    (rt, out_t), (rk, out_k) = results["torch"], results["keras"]
    assert [g.keep for g in rt.plan.groups] == [g.keep for g in rk.plan.groups]
    assert [len(g.keep) for g in rt.plan.groups] == [4, 3]
    assert rt.plan.framework == "torch" and rk.plan.framework == "keras"
    assert rt.after.params == rk.after.params == 4 * 27 + 4 + 3 * 36 + 3 + 3 * 3 + 3
    assert rt.after.macs == rk.after.macs
    np.testing.assert_allclose(out_t, out_k, rtol=1e-4, atol=1e-5)


def test_a_user_criterion_gets_what_it_needs_on_both_frontends(twins: dict[str, Any]) -> None:
    """A criterion registered with ``needs="gradients"`` is handed the loss gradients, whatever its
    name (on torch it once got nothing: the statistics were chosen by the criterion's name)."""
    seen: dict[str, dict[str, np.ndarray]] = {}

    @criterion("gradient_mass", needs="gradients")
    def gradient_mass(group: Group, weights: Any, extra: Any, seed: int) -> np.ndarray:
        seen[current] = dict(extra)
        scores = np.zeros(group.size)
        for m in group.members:
            if m.tensor in extra:
                np.add.at(scores, m.channels, per_position(extra[m.tensor], m.dim, "sum_abs")[m.positions])
        return scores

    try:
        cfg = cuttree.Config(ratio=0.5, criterion="gradient_mass", min_samples=8, latency_runs=0)
        for current, (model, inputs, calib, _) in twins.items():  # noqa: B007 (read by the criterion)
            flow.make_plan(frontend_for(model), model, cfg, inputs, calib)
        torch_grads, keras_grads = seen["torch"], seen["keras"]
        assert "0.weight" in torch_grads and "c1/kernel" in keras_grads
        assert np.abs(torch_grads["0.weight"]).sum() > 0
        # the same gradients, up to the scale of how each frontend batches its data (summed batch means)
        t, k = torch_grads["0.weight"].transpose(2, 3, 1, 0), keras_grads["c1/kernel"]
        np.testing.assert_allclose(t / np.abs(t).sum(), k / np.abs(k).sum(), rtol=1e-3, atol=1e-7)
    finally:
        REGISTRY.pop("gradient_mass")


@pytest.mark.filterwarnings("ignore:fine-tuning did not improve")  # 12 samples, one epoch: not the point here
def test_the_job_runs_the_same_scenario_on_both_frontends(twins: dict[str, Any], tmp_path: Any) -> None:
    """``run_job`` written once: prune, recalibrate, fine-tune, measure and save on each frontend,
    from the same decisions to reports of the same shape."""
    from cuttree.frontends.keras.recover import Arrays
    from cuttree.recover.job import run_job

    ft = {"epochs": 1, "batch_size": 4, "lr": 0.01, "distill": 0.5, "val_fraction": 0.25}
    cfg = cuttree.Config(ratio=0.5, criterion="taylor", min_samples=8, calib_samples=16, latency_runs=0, finetune=ft)
    data = {
        "torch": torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)),
        "keras": Arrays(X.transpose(0, 2, 3, 1), Y),
    }
    origin: dict[str, dict[str, Any]] = {"torch": {"arch": "test_flow:torch_net"}, "keras": {"source": "twin.keras"}}
    reports = {}
    for name, (model, inputs, _, _) in twins.items():
        out = tmp_path / name
        reports[name] = run_job(model, inputs, cfg, data[name], data[name], out, log=lambda m: None, **origin[name])
        saved = json.loads((out / "report.json").read_text())
        assert saved["framework"] == name and saved["origin"] == {
            **origin[name],
            **({"arch_kwargs": None} if name == "torch" else {}),
        }
        assert (out / saved["model"]).is_file() and (out / "config.yaml").is_file()
    rt, rk = reports["torch"], reports["keras"]
    assert list(rt["plan"].values()) == list(rk["plan"].values()) == [[8, 4, "channels"], [6, 3, "channels"]]
    for side in ("before", "after"):
        assert (rt[side]["params"], rt[side]["macs"]) == (rk[side]["params"], rk[side]["macs"])
    assert rt["before"]["metric"]["top1"] == rk["before"]["metric"]["top1"]  # one network, the same 16 samples
    (ht,), (hk,) = rt["history"], rk["history"]
    assert ht.keys() == hk.keys() and "metric_before_bn_recalibration" not in ht  # no batch norm to recalibrate
    assert ht["metric_after_pruning"]["top1"] == hk["metric_after_pruning"]["top1"]
    assert ht["finetune_steps"] == hk["finetune_steps"] == 3  # 12 of 16 samples trained on, batches of 4
