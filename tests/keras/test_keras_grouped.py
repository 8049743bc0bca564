"""Grouped Conv2D in the Keras frontend: the same two units as the torch frontend (whole groups,
and the same positions of the width inside every group). Oracles: the torch frontend's plan and
pruned model on the same weights, exact widths, and the original with the removed channels
zeroed. Runs on the backend in KERAS_BACKEND; torch is only the oracle's frontend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

from test_grouped_convs import tiny as tiny_torch  # noqa: E402  (the torch frontend's grouped-conv model)

import cuttree  # noqa: E402
import cuttree.keras as ck  # noqa: E402


def np_out(model: object, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))  # type: ignore[operator]


def tiny_keras(t: torch.nn.Sequential) -> object:
    """``t`` in Keras, channels last, with ``t``'s weights."""
    x = keras.Input((8, 8, 3))
    h = keras.layers.ReLU()(keras.layers.Conv2D(16, 3, padding="same", name="c0")(x))
    h = keras.layers.ReLU()(keras.layers.Conv2D(32, 3, padding="same", groups=4, name="c2")(h))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 1, name="c4")(h))
    model = keras.Model(x, keras.layers.Dense(3, name="fc")(h))
    for name, i in [("c0", 0), ("c2", 2), ("c4", 4)]:
        conv = t[i]
        model.get_layer(name).set_weights(
            [conv.weight.detach().permute(2, 3, 1, 0).numpy(), conv.bias.detach().numpy()]
        )
    model.get_layer("fc").set_weights([t[7].weight.detach().T.numpy(), t[7].bias.detach().numpy()])
    return model


@pytest.fixture
def pair() -> tuple[torch.nn.Sequential, object, torch.Tensor, np.ndarray]:
    torch.manual_seed(0)
    t = tiny_torch()
    x = torch.randn(2, 3, 8, 8)
    return t, tiny_keras(t), x, x.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("group_width", [True, False])
def test_grouped_conv_plan_and_model_equal_the_torch_frontends(pair: tuple, group_width: bool) -> None:
    t, k, x, xk = pair
    np.testing.assert_allclose(np_out(k, xk), t(x).detach().numpy(), atol=1e-5)
    cfg = cuttree.Config(ratio=0.5, group_width=group_width, latency_runs=0)
    rt = cuttree.prune(t, (x,), cfg.model_copy(update={"ignore": ("4",)}))
    rk = ck.prune(k, cfg.model_copy(update={"ignore": ("c4",)}))
    plans = [(g.unit, g.size, g.keep) for g in rk.plan]
    assert plans == [(g.unit, g.size, g.keep) for g in rt.plan]
    conv = rk.model.get_layer("c2")
    if group_width:
        assert [g.name for g in rk.plan] == ["c0", "c0:width", "c2:width"]
        assert plans == [("groups", 4, (0, 3)), ("width", 4, (0, 1)), ("width", 8, (0, 4, 5, 6))]
        assert (conv.groups, conv.filters, tuple(conv.kernel.shape)) == (2, 8, (3, 3, 2, 8))
        assert rk.plan.macs_after == rk.after.macs == 40_496 // 2  # torch's figure at batch 2
    else:
        assert plans == [("groups", 4, (0, 3))]
        assert (conv.groups, conv.filters, tuple(conv.kernel.shape)) == (2, 16, (3, 3, 4, 16))
    assert rk.model.get_layer("c0").filters == conv.groups * conv.kernel.shape[-2]
    np.testing.assert_allclose(np_out(rk.model, xk), rt.model(x).detach().numpy(), atol=1e-5)


def test_grouped_conv_pruned_equals_the_original_with_those_channels_zeroed(pair: tuple) -> None:
    _, k, _, xk = pair
    r = ck.prune(k, cuttree.Config(ratio=0.5, ignore=["c4"], latency_runs=0))
    groups, w_in, w_out = (g.keep for g in r.plan)
    kept_in = [j * 4 + c for j in groups for c in w_in]
    kept_out = [j * 8 + c for j in groups for c in w_out]
    masked = keras.models.clone_model(k)
    masked.set_weights(k.get_weights())
    c0, c4 = masked.get_layer("c0"), masked.get_layer("c4")
    kernel, bias = (keras.ops.convert_to_numpy(v) for v in c0.weights)
    gone_in = [c for c in range(16) if c not in kept_in]
    kernel[..., gone_in], bias[gone_in] = 0, 0
    c0.set_weights([kernel, bias])
    k4, b4 = (keras.ops.convert_to_numpy(v) for v in c4.weights)
    k4[:, :, [c for c in range(32) if c not in kept_out], :] = 0
    c4.set_weights([k4, b4])
    np.testing.assert_allclose(np_out(r.model, xk), np_out(masked, xk), atol=1e-5)
    kernel2 = keras.ops.convert_to_numpy(k.get_layer("c2").kernel)
    pruned2 = keras.ops.convert_to_numpy(r.model.get_layer("c2").kernel)
    np.testing.assert_array_equal(pruned2, kernel2[:, :, list(w_in), :][..., kept_out])


def resnext_block() -> object:
    """A ResNeXt-style bottleneck: 1×1, grouped 3×3 (8 groups), 1×1, batch norms, residual add."""
    x = keras.Input((8, 8, 16))
    h = keras.layers.Conv2D(32, 1, use_bias=False, name="reduce")(x)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(h))
    h = keras.layers.Conv2D(32, 3, padding="same", groups=8, use_bias=False, name="grouped")(h)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn2")(h))
    h = keras.layers.BatchNormalization(name="bn3")(keras.layers.Conv2D(16, 1, use_bias=False, name="expand")(h))
    h = keras.layers.ReLU()(keras.layers.Add()([x, h]))
    y = keras.layers.Dense(4, name="fc")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(x, y)


def test_resnext_block_ratio_zero_identical_and_pruned_round_trip(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = resnext_block()
    for layer in model.layers:  # non-trivial batch-norm statistics, so a wrong slice shows
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([np.random.default_rng(1).random(w.shape).astype("float32") + 0.5 for w in layer.weights])
    x = np.random.default_rng(0).random((2, 8, 8, 16), dtype=np.float32)
    same = ck.prune(model, cuttree.Config(ratio=0.0, latency_runs=0))
    assert {"groups", "width"} <= {g.unit for g in same.plan}
    assert np.array_equal(np_out(same.model, x), np_out(model, x))
    r = ck.prune(model, cuttree.Config(ratio=0.5, round_to=1, latency_runs=0))
    grouped = r.model.get_layer("grouped")
    # half the groups and half the width inside each: a quarter of the 32 channels (both units at 0.5)
    assert (grouped.groups, grouped.filters, tuple(grouped.kernel.shape)) == (4, 8, (3, 3, 2, 8))
    assert r.after.macs == r.plan.macs_after < r.before.macs and r.after.params < r.before.params
    assert r.model.get_layer("reduce").filters == 8
    assert r.model.get_layer("expand").filters == 16  # added to the model's input: a fixed width
    path = tmp_path / "small.keras"
    ck.save(r, path)
    np.testing.assert_array_equal(np_out(ck.load(path), x), np_out(r.model, x))


def test_cli_layers_lists_a_keras_files_groups_and_units(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cuttree.cli.main import main

    keras.utils.set_random_seed(0)
    path = tmp_path / "block.keras"
    resnext_block().save(path)
    assert main(["layers", "--model", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "3 prunable groups (16 channels):"
    assert [line.split()[:3] for line in lines[1:4]] == [
        ["reduce", "8", "groups"],
        ["reduce:width", "4", "width"],
        ["grouped:width", "4", "width"],
    ]
    assert lines[4:] == [
        "kept whole (why):",
        f"  {'expand':40s} fixed",  # added to the model's input
        f"  {'bn3':40s} fixed",
        f"  {'fc':40s} output",
        "layers: 12; layers without a rule (kept whole): none",
    ]
    assert main(["layers", "--model", str(path), "--arch", "torchvision.models:resnet18"]) == 2
    assert "not both" in capsys.readouterr().err
