"""The Keras 3 frontend: the original design's VGG16, layer rules with an oracle, MACs against
torch's flop counter, files, errors, and parity with the torch frontend (plans, masks).

Runs on the backend in KERAS_BACKEND (torch by default, see conftest.py; `make test-keras-tf`
runs it on TensorFlow). Tests that need torch's flop counter are skipped on other backends.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import cuttree  # noqa: E402
import cuttree.keras as ck  # noqa: E402
from cuttree.frontends.keras.graph import trace  # noqa: E402
from cuttree.frontends.keras.tracer import macs_of  # noqa: E402

TORCH_BACKEND = keras.backend.backend() == "torch"
ORIGINAL = {"mode": "classification", "threshold": 0.5, "min_samples": 2}


def np_out(model: object, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))  # type: ignore[operator]


def original_design(include_top_classes: int = 10) -> object:
    """The original design's model, as written: VGG16 base on 32×32, nested, with a 10-class head."""
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    x = base(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(include_top_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_original_design_vgg16_nested(tmp_path: object) -> None:
    keras.utils.set_random_seed(0)
    model = original_design()
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    # the design's config as written: threshold 0.5 alone; on glorot init no channel scores below
    # half its layer's best, so nothing goes, and the result says so with the weakest score
    with pytest.warns(UserWarning, match=r"nothing pruned: threshold=0.5 selects no channel, the weakest channel"):
        r = ck.prune(model, cuttree.Config(**ORIGINAL, latency_runs=0))
    assert r.after.params == r.before.params and r.table().startswith("nothing pruned: threshold=0.5")
    # beside a ratio, a channel goes if either selects it: the ratio's 30% go
    r = ck.prune(model, cuttree.Config(**ORIGINAL, ratio=0.3, latency_runs=0))
    conv = r.model.get_layer("vgg16").get_layer("block1_conv1")
    assert conv.filters == 48  # 64 − ⌊0.3 · 64⌋ = 45 kept, rounded up to a multiple of 8 (round_to: auto)
    assert not r.table().startswith("nothing pruned")
    free = ck.prune(model, cuttree.Config(ratio=0.3, round_to=1, latency_runs=0))
    assert free.model.get_layer("vgg16").get_layer("block1_conv1").filters == 64 - 19
    assert np_out(r.model, x).shape == (2, 10)
    assert r.after.params < r.before.params and r.after.macs < r.before.macs
    assert r.plan.framework == "keras" and r.plan.macs_after == r.after.macs
    assert model.get_layer("vgg16").get_layer("block1_conv1").filters == 64  # the original is untouched
    path = tmp_path / "small.keras"  # type: ignore[operator]
    ck.save(r, path)
    again = ck.load(path)
    assert np.array_equal(np_out(again, x), np_out(r.model, x))
    assert again.count_params() == r.after.params
    assert ck.read_metadata(path)["plan"]["framework"] == "keras"


def test_the_shipped_vgg16_recipe_is_the_original_design() -> None:
    from pathlib import Path

    cfg = cuttree.Config.from_yaml(Path(__file__).resolve().parents[2] / "recipes" / "keras_vgg16.yaml")
    assert (cfg.mode, cfg.threshold) == (ORIGINAL["mode"], ORIGINAL["threshold"])
    keras.utils.set_random_seed(0)
    with pytest.warns(UserWarning, match="nothing pruned: threshold=0.5"):  # glorot init: none below half
        r = ck.prune(original_design(), cfg.model_copy(update={"latency_runs": 0}))
    assert r.after.params == r.before.params
    r = ck.prune(original_design(), cfg.model_copy(update={"ratio": 0.3, "latency_runs": 0}))
    assert r.after.params < r.before.params


def test_ratio_zero_gives_identical_outputs() -> None:
    keras.utils.set_random_seed(0)
    model = original_design()
    x = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    r = ck.prune(model, cuttree.Config(ratio=0.0, latency_runs=0))
    assert np.array_equal(np_out(r.model, x), np_out(model, x))


def branchy() -> object:
    """Residual add, concat, depthwise (multiplier 2), separable, transposed conv, SE, Flatten→Dense, no BN."""
    inp = keras.Input((12, 12, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inp)
    b = keras.layers.Conv2D(8, 3, padding="same", name="b")(a)
    s = keras.layers.Add(name="res")([a, b])
    d = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(s)
    e = keras.layers.Conv2D(6, 1, name="e")(d)
    f = keras.layers.SeparableConv2D(5, 3, padding="same", name="sep")(s)
    c = keras.layers.Concatenate(name="cat")([e, f])
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(c)
    se = keras.layers.Conv2D(4, 1, activation="relu", name="se_reduce")(se)
    se = keras.layers.Conv2D(11, 1, activation="sigmoid", name="se_expand")(se)
    c = keras.layers.Multiply(name="se_mul")([c, se])
    t = keras.layers.Conv2DTranspose(7, 3, strides=2, name="up")(c)
    p = keras.layers.MaxPooling2D(4)(t)
    h = keras.layers.Dense(9, activation="relu", name="hidden")(keras.layers.Flatten()(p))
    out = keras.layers.Dense(3, name="head")(h)
    return keras.Model(inp, out)


def _masked_original(
    model: object, plan: cuttree.PruningPlan, input_shapes: list[tuple[int, ...]] | None = None
) -> object:
    """The oracle: the original with every removed channel's producer outputs zeroed."""
    from cuttree.frontends.keras.sparsity import copy_model

    oracle = copy_model(model)
    weights = {}
    from cuttree.frontends.keras.graph import trace as tr_fn

    tr = tr_fn(oracle, [(1, *s) for s in input_shapes or [(12, 12, 3)]])
    for path, layer in tr.layers.items():
        for name, v in zip(tr.layer_weights[path], getattr(layer, "weights", []), strict=True):  # operations: none
            weights[name] = v
    for g in plan.groups:
        dead = np.zeros(g.size, dtype=bool)
        dead[g.removed] = True
        for m in g.members:
            role = tr.roles[m.tensor]
            if role.out_dim == m.dim:  # the layer's own outputs (kernel out, bias): zero them
                a = keras.ops.convert_to_numpy(weights[m.tensor].value).copy()
                idx = [slice(None)] * a.ndim
                idx[m.dim] = m.positions[dead[m.channels]]
                a[tuple(idx)] = 0
                weights[m.tensor].assign(a)
    return oracle


def test_branchy_model_equals_masked_original() -> None:
    keras.utils.set_random_seed(0)
    model = branchy()
    x = np.random.default_rng(2).random((3, 12, 12, 3), dtype=np.float32)
    r = ck.prune(model, cuttree.Config(ratio=0.5, latency_runs=0))
    names = {g.name for g in r.plan.groups}
    assert names == {"a", "e", "sep", "se_reduce", "up", "hidden"}, names  # a, b, res and dw are one stream
    assert r.model.get_layer("a").filters == 4 and r.model.get_layer("hidden").units == 5
    assert r.model.get_layer("se_expand").filters == 6  # coupled to the concat: 3 of e's + 3 of sep's
    assert r.model.get_layer("head").units == 3  # the output layer keeps its classes
    oracle = _masked_original(model, r.plan)
    np.testing.assert_allclose(np_out(r.model, x), np_out(oracle, x), rtol=1e-4, atol=1e-5)


def test_operations_named_like_layers_survive_the_rebuild() -> None:
    """MobileNetV3's hard swish is written with operations (``x + 3.0`` is the operation ``Add``);
    with an ``Add`` layer in the same model, the rebuild once took one for the other and failed."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", name="a")(inp)
    a = a * (keras.layers.ReLU(6.0)(a + 3.0) * (1.0 / 6.0))
    b = keras.layers.Conv2D(8, 3, padding="same", name="b")(a)
    s = keras.layers.Add(name="res")([a, b])
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(s))
    model = keras.Model(inp, out)
    x = np.random.default_rng(2).random((3, 12, 12, 3), dtype=np.float32)
    r = ck.prune(model, cuttree.Config(ratio=0.5, latency_runs=0))
    assert r.model.get_layer("a").filters == 4 and r.model.get_layer("b").filters == 4
    np.testing.assert_allclose(np_out(r.model, x), np_out(_masked_original(model, r.plan), x), rtol=1e-4, atol=1e-5)
    sparse = ck.sparsify(model, cuttree.Config(method="unstructured", ratio=0.5))  # copies the model the same way
    assert sparse.sparsity == pytest.approx(0.5, abs=0.01)


def transformer_block(kind: str) -> object:
    """embed → x + attention(x) → x + MLP(x) → pool → head. ``self``: MultiHeadAttention, 4 heads;
    ``cross``: key/value from a second input, passed by name with an attention mask (a third
    input), no biases, an explicit ``output_shape``; ``gqa``: GroupedQueryAttention, 4 query heads
    on 2 key/value heads; ``mqa``: the same on one key/value head."""
    inp = keras.Input((5, 16))
    x = keras.layers.Dense(16, name="embed")(inp)
    inputs = [inp]
    if kind == "cross":
        mem, mask = keras.Input((7, 12)), keras.Input((5, 7))
        inputs += [mem, mask]
        kv = keras.layers.Dense(12, name="mem")(mem)
        # JAX's dot_product_attention needs equal key and value widths (Keras's own layer fails there)
        value_dim = 4 if keras.backend.backend() == "jax" else 6
        mha = keras.layers.MultiHeadAttention(4, 4, value_dim=value_dim, use_bias=False, output_shape=16, name="mha")
        x = keras.layers.Add()([x, mha(query=x, value=kv, key=kv, attention_mask=mask)])
    elif kind in ("gqa", "mqa"):
        kv_heads = 2 if kind == "gqa" else 1
        gqa = keras.layers.GroupQueryAttention(head_dim=4, num_query_heads=4, num_key_value_heads=kv_heads, name="mha")
        x = keras.layers.Add()([x, gqa(x, x)])
    else:
        x = keras.layers.Add()([x, keras.layers.MultiHeadAttention(4, 4, name="mha")(x, x)])
    h = keras.layers.Dense(32, activation="relu", name="ff1")(x)
    x = keras.layers.Add()([x, keras.layers.Dense(16, name="ff2")(h)])
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs if len(inputs) > 1 else inp, out)


@pytest.mark.parametrize("kind", ["self", "cross", "gqa", "mqa"])
def test_attention_loses_whole_heads(kind: str, tmp_path: object) -> None:
    """The pruned model equals the original with the removed channels' producers zeroed and the
    removed heads' rows of the output projection zeroed; the file reloads to the same outputs.
    Grouped-query attention loses a key/value head with its query heads, and the same query heads
    of every key/value head; multi-query attention loses query heads and keeps its key/value head."""
    keras.utils.set_random_seed(0)
    model = transformer_block(kind)
    rng = np.random.default_rng(2)
    x = [rng.random((3, 5, 16), dtype=np.float32)]
    if kind == "cross":
        x += [rng.random((3, 7, 12), dtype=np.float32), (rng.random((3, 5, 7)) > 0.3).astype(np.float32)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing kept whole
        # grouped-query attention: the two units share one head budget; 0.75 of 2 × 2 heads keeps 1 × 1
        r = ck.prune(model, cuttree.Config(ratio=0.5, head_ratio=0.75 if kind == "gqa" else None, latency_runs=0))
    [heads] = [g for g in r.plan if g.unit == "heads"]
    layer = r.model.get_layer("mha")
    if kind == "gqa":  # 2 key/value heads, each with its 2 query heads: 1 kv head with 1 of its query heads
        [per_kv] = [g for g in r.plan if g.unit == "query heads"]
        assert (per_kv.name, per_kv.size, len(per_kv.keep)) == ("mha:query_heads", 2, 1)
        assert (heads.size, len(heads.keep), layer.num_query_heads, layer.num_key_value_heads) == (2, 1, 1, 1)
        gone = sorted(set(range(4)) - {2 * g + p for g in heads.keep for p in per_kv.keep})
    elif kind == "mqa":  # query heads go, the one key/value head stays
        assert (heads.size, len(heads.keep), layer.num_query_heads, layer.num_key_value_heads) == (4, 2, 2, 1)
        gone = sorted(set(range(4)) - set(heads.keep))
    else:
        assert (heads.size, len(heads.keep), layer.num_heads, layer.key_dim) == (4, 2, 2, 4)
        gone = sorted(set(range(4)) - set(heads.keep))
    assert heads.name == "mha" and r.model.get_layer("embed").units == 8
    oracle = _masked_original(model, r.plan, [s.shape[1:] for s in x])
    out_kernel = oracle.get_layer("mha")._output_dense.kernel
    k = keras.ops.convert_to_numpy(out_kernel.value).copy()
    k[gone] = 0  # the removed (query) heads contribute nothing
    out_kernel.assign(k)
    feed = x if len(x) > 1 else x[0]
    assert not np.allclose(np_out(r.model, feed), np_out(model, feed), atol=1e-3)
    np.testing.assert_allclose(np_out(r.model, feed), np_out(oracle, feed), rtol=1e-4, atol=1e-5)
    assert r.plan.macs_after == r.after.macs
    ck.save(r, tmp_path / "small.keras")  # type: ignore[operator]
    np.testing.assert_array_equal(np_out(ck.load(tmp_path / "small.keras"), feed), np_out(r.model, feed))  # type: ignore[operator]


def test_inception_resnet_scaled_residual_is_a_merge() -> None:
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inp)
    b = keras.layers.Conv2D(8, 1, name="b")(a)
    x = CustomScaleLayer(0.17, name="scaled")([a, b])
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # it has a rule now
        r = ck.prune(model, cuttree.Config(ratio=0.5, latency_runs=0))
    assert [(g.name, g.size, len(g.keep)) for g in r.plan] == [("a", 8, 4)]  # a and b: one stream
    x = np.random.default_rng(2).random((3, 12, 12, 3), dtype=np.float32)
    np.testing.assert_allclose(np_out(r.model, x), np_out(_masked_original(model, r.plan), x), rtol=1e-4, atol=1e-5)


def test_plan_macs_match_the_pruned_graph() -> None:
    model = branchy()
    r = ck.prune(model, cuttree.Config(ratio=0.5, latency_runs=0))
    assert r.plan.macs_after == macs_of(trace(r.model, [(1, 12, 12, 3)]))


@pytest.mark.skipif(not TORCH_BACKEND, reason="torch's flop counter needs the torch backend")
@pytest.mark.parametrize("builder", ["branchy", "norms", "conv1d3d"])
def test_macs_equal_torch_flop_counter(builder: str) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = {"branchy": branchy, "norms": norms, "conv1d3d": conv1d3d}[builder]()
    shape = (1, *model.inputs[0].shape[1:])
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        model(np.zeros(shape, dtype="float32"), training=False)
    assert macs_of(trace(model, [shape])) == c.get_total_flops() // 2


def norms() -> object:
    inp = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(8, 1, name="c2")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.Conv2D(8, 1, name="c3")(x)
    x = keras.layers.GroupNormalization(groups=4, name="gn")(x)  # 2 channels per group: whole groups go
    x = keras.layers.Conv2D(6, 1, name="c4")(x)
    x = keras.layers.GroupNormalization(groups=6, name="gn_per_channel")(x)
    x = keras.layers.Reshape((-1, 6))(x)
    return keras.Model(inp, keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling1D()(x)))


def test_norm_rules() -> None:
    keras.utils.set_random_seed(0)
    model = norms()
    r = ck.prune(model, cuttree.Config(ratio=0.5, latency_runs=0))
    units = {g.name: (g.unit, g.size, len(g.keep)) for g in r.plan.groups}
    assert units == {
        "c1": ("channels", 8, 4),
        "c2": ("channels", 8, 4),
        "c3": ("groups", 4, 2),  # c3 feeds a 2-channels-per-group norm: it loses whole groups
        "c4": ("channels", 6, 3),
    }
    assert r.model.get_layer("gn").groups == 2 and r.model.get_layer("c3").filters == 4
    assert r.model.get_layer("gn_per_channel").groups == 3
    assert np_out(r.model, np.ones((2, 8, 8, 4), dtype="float32")).shape == (2, 2)


def test_group_norm_loses_whole_groups_exactly_as_in_torch() -> None:
    """The torch frontend's group-norm test model, in Keras with the same weights: the same plan,
    and the pruned model equals the original with the removed groups zeroed."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="c1")(inp)
    x = keras.layers.GroupNormalization(groups=4, name="gn")(x)
    x = keras.layers.ReLU()(x)
    model = keras.Model(inp, keras.layers.Conv2D(5, 1, name="c2")(x))
    k = keras.ops.convert_to_numpy(model.get_layer("c1").kernel.value)
    model.get_layer("c1").kernel.assign(k * np.repeat(np.array([1.0, 3.0, 0.5, 2.0], dtype=np.float32), 4))
    r = ck.prune(model, cuttree.Config(ratio=0.5, latency_runs=0))
    [g] = r.plan.groups
    assert (g.unit, g.size, g.keep) == ("groups", 4, (1, 3))  # as tests/torch/test_fold.py's torch model
    assert (r.model.get_layer("gn").groups, r.model.get_layer("c1").filters) == (2, 8)
    x = np.random.default_rng(0).random((2, 4, 4, 3), dtype=np.float32)
    oracle = _masked_original(model, r.plan, [(4, 4, 3)])
    np.testing.assert_allclose(np_out(r.model, x), np_out(oracle, x), rtol=1e-5, atol=1e-5)


def conv1d3d() -> object:
    inp = keras.Input((4, 6, 6, 2))
    x = keras.layers.Conv3D(6, 3, padding="same", name="c3d")(inp)
    x = keras.layers.Reshape((4 * 36, 6))(x)
    x = keras.layers.Conv1D(5, 3, name="c1d")(x)
    x = keras.layers.Dense(4, name="dense")(x)
    return keras.Model(inp, keras.layers.GlobalMaxPooling1D()(x))


def test_reshape_keeping_channels_last_prunes_through() -> None:
    r = ck.prune(conv1d3d(), cuttree.Config(ratio=0.5, latency_runs=0))
    assert r.model.get_layer("c3d").filters == 3 and r.model.get_layer("c1d").filters == 3


def test_sequential_and_unknown_layer_pins_with_a_warning() -> None:
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(8, 3, name="c1"),
            keras.layers.Conv2D(8, 1, name="c2"),
            keras.layers.Identity(name="ident"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="head"),
        ]
    )
    r = ck.prune(model, cuttree.Config(ratio=0.5, latency_runs=0))
    assert r.model.get_layer("c1").filters == 4 and r.model.get_layer("c2").filters == 4
    inp = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, name="c1")(inp)
    x = keras.layers.Conv2D(8, 1, name="c2")(x)
    x = keras.layers.UnitNormalization(name="unit")(x)  # L2 over channels: they are coupled, kept whole
    x = keras.layers.MultiHeadAttention(2, 4, name="mha")(
        keras.layers.Reshape((16, 8))(x), keras.layers.Reshape((16, 8))(x)
    )
    out = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling1D()(x))
    r = ck.prune(keras.Model(inp, out), cuttree.Config(ratio=0.5, latency_runs=0))
    assert r.model.get_layer("c1").filters == 4 and r.model.get_layer("c2").filters == 8
    assert r.model.get_layer("mha").num_heads == 1
    # attention over two axes of a 4-d input: a configuration the rule does not read, kept whole
    inp = keras.Input((4, 4, 8))
    x = keras.layers.Conv2D(8, 1, name="c1")(inp)
    x = keras.layers.MultiHeadAttention(2, 4, attention_axes=(1, 2), name="mha")(x, x)
    out = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    with pytest.warns(UserWarning, match=r"kept 1 attention layer\(s\) whole, .*: mha \(MultiHeadAttention\);"):
        r = ck.prune(keras.Model(inp, out), cuttree.Config(ratio=0.5, latency_runs=0))
    assert r.model.get_layer("c1").filters == 8 and r.model.get_layer("mha").num_heads == 2


class Custom(keras.layers.Layer):
    def call(self, x: object) -> object:
        return x * 2.0


def test_layer_without_a_rule_is_kept_whole_with_a_warning() -> None:
    inp = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, name="c1")(inp)
    x = Custom(name="mystery")(x)
    x = keras.layers.Conv2D(8, 1, name="c2")(x)
    out = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    with pytest.warns(UserWarning, match=r"no layer rule for mystery \(Custom\)"):
        r = ck.prune(keras.Model(inp, out), cuttree.Config(ratio=0.5, latency_runs=0))
    assert r.model.get_layer("c1").filters == 8 and r.model.get_layer("c2").filters == 4


def test_ignore_and_layers_by_keras_name_and_glob() -> None:
    model = original_design()
    cfg = cuttree.Config(
        ratio=0.5, ignore=("block1_*",), layers={"vgg16/block2_conv1": {"ratio": 0.25}}, latency_runs=0
    )
    plan, _ = ck.make_plan(model, cfg)
    keep = {g.name: len(g.keep) for g in plan.groups}
    assert "vgg16/block1_conv1" not in keep and keep["vgg16/block2_conv1"] == 96 and keep["vgg16/block2_conv2"] == 64
    with pytest.raises(ValueError, match="unknown layer 'block9_conv1' — did you mean"):
        ck.make_plan(model, cuttree.Config(ratio=0.5, ignore=("block9_conv1",)))


def test_subclassed_model_and_torch_api_errors() -> None:
    class Sub(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x: object) -> object:
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 3), dtype="float32"))
    with pytest.raises(cuttree.TraceError, match="subclassed Sub without a layer graph"):
        ck.prune(sub, cuttree.Config(ratio=0.5))
    if TORCH_BACKEND:
        import torch

        with pytest.raises(TypeError, match=r"is a Keras model; .* use cuttree\.keras\.prune"):
            cuttree.prune(branchy(), (torch.zeros(1, 12, 12, 3),), cuttree.Config(ratio=0.5))


def test_lambda_file_is_refused_in_safe_mode(tmp_path: object) -> None:
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2)(inp))
    path = tmp_path / "lam.keras"  # type: ignore[operator]
    model.save(path)
    with pytest.raises(cuttree.FileFormatError, match="holds a Lambda layer"):
        ck.load(path)


def test_data_driven_criteria_need_min_samples() -> None:
    keras.utils.set_random_seed(0)
    model = branchy()
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 12, 12, 3), dtype=np.float32), rng.integers(0, 3, 16)
    for crit in ("activation", "taylor", "bn_scale"):
        r = ck.prune(model, cuttree.Config(ratio=0.5, criterion=crit, min_samples=8, latency_runs=0), calib_data=(x, y))
        assert r.model.get_layer("a").filters == 4
    with pytest.raises(ValueError, match="calibration data has 4 samples; min_samples=8"):
        ck.prune(model, cuttree.Config(ratio=0.5, criterion="activation", min_samples=8), calib_data=(x[:4], y[:4]))


@pytest.mark.skipif(not TORCH_BACKEND, reason="compares with the torch frontend on the same weights")
def test_one_config_drives_torch_and_keras_with_one_plan_format(tmp_path: object) -> None:
    import torch

    cfg_file = tmp_path / "cut.yaml"  # type: ignore[operator]
    cfg_file.write_text("mode: classification\nthreshold: 0.5\nmin_samples: 2\nratio: 0.25\nlatency_runs: 0\n")
    cfg = cuttree.Config.from_yaml(cfg_file)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    tp, _ = cuttree.make_plan(net, (torch.randn(1, 3, 8, 8),), cfg)
    inp = keras.Input((8, 8, 3))
    kp, _ = ck.make_plan(keras.Model(inp, keras.layers.Conv2D(4, 1)(keras.layers.Conv2D(8, 3)(inp))), cfg)
    td, kd = tp.to_dict(), kp.to_dict()
    assert td.keys() == kd.keys() and td["groups"][0].keys() == kd["groups"][0].keys()
    assert (td["framework"], kd["framework"], kd["layout"]) == ("torch", "keras", "keras")
    assert td["config"] == kd["config"]


@pytest.mark.skipif(not TORCH_BACKEND, reason="compares with the torch frontend on the same weights")
@pytest.mark.parametrize("scope", ["local", "global"])
def test_unstructured_masks_equal_the_torch_frontends(scope: str) -> None:
    import torch

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    k1 = keras.layers.Conv2D(6, 3, name="c1")
    k2 = keras.layers.Conv2D(5, 3, name="c2")
    k3 = keras.layers.Dense(4, name="d")
    kmodel = keras.Model(inp, k3(keras.layers.Flatten()(k2(k1(inp)))))
    tmodel = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3), torch.nn.Conv2d(6, 5, 3), torch.nn.Flatten(), torch.nn.Linear(80, 4)
    )
    with torch.no_grad():  # the same weights in each framework's layout
        tmodel[0].weight.copy_(torch.from_numpy(keras.ops.convert_to_numpy(k1.kernel.value)).permute(3, 2, 0, 1))
        tmodel[1].weight.copy_(torch.from_numpy(keras.ops.convert_to_numpy(k2.kernel.value)).permute(3, 2, 0, 1))
    cfg = cuttree.Config(method="unstructured", ratio=0.6, scope=scope)
    km = ck.sparsify(kmodel, cfg).masks
    tm = cuttree.sparsify(tmodel, cfg).masks
    assert np.array_equal(km["c1"], tm["0"].permute(2, 3, 1, 0).numpy())
    assert np.array_equal(km["c2"], tm["1"].permute(2, 3, 1, 0).numpy())
    nm = ck.sparsify(kmodel, cuttree.Config(method="unstructured", nm="2:3")).masks
    assert nm["c2"].sum(axis=2).tolist() == np.full((3, 3, 5), 4).tolist()  # 2 of every 3 inputs, 6 inputs


def test_gradual_pruning_callback_reaches_the_final_sparsity() -> None:
    keras.utils.set_random_seed(0)
    model = branchy()
    cfg = cuttree.Config(
        method="unstructured",
        schedule={"initial_sparsity": 0.0, "final_sparsity": 0.8, "begin_step": 0, "end_step": 4, "frequency": 2},
    )
    rng = np.random.default_rng(0)
    x, y = rng.random((24, 12, 12, 3), dtype=np.float32), rng.integers(0, 3, 24)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = ck.GradualPruning(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, batch_size=4, epochs=1, callbacks=[cb], verbose=0)
    from cuttree.frontends.keras.sparsity import prunable_layers, sparsity

    ck.strip(model, cb.masks)
    assert sparsity(prunable_layers(model)) == pytest.approx(0.8, abs=0.01)


def test_cli_prunes_and_inspects_a_keras_file(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from cuttree.cli.main import main

    src = tmp_path / "my.keras"  # type: ignore[operator]
    branchy().save(src)
    cfg = tmp_path / "cut.yaml"  # type: ignore[operator]
    cfg.write_text("mode: classification\nthreshold: 0.5\nmin_samples: 2\nratio: 0.5\nlatency_runs: 0\n")
    threshold_only = tmp_path / "small.keras"  # type: ignore[operator]
    assert (
        main(
            [
                "prune",
                "--model",
                str(src),
                "--config",
                str(cfg),
                "--set",
                "threshold=null",
                "--out",
                str(threshold_only),
            ]
        )
        == 0
    )
    assert ck.load(threshold_only).get_layer("a").filters == 4
    assert main(["inspect", str(threshold_only)]) == 0
    out = capsys.readouterr().out
    assert "saved on the" in out and "parameters" in out
    bad = tmp_path / "bad.cuttree"  # type: ignore[operator]
    assert main(["prune", "--model", str(src), "--config", str(cfg), "--out", str(bad)]) == 2
    assert main(["eval", str(threshold_only), "--data", "digits"]) == 2  # 12×12 model, 32×32 digits
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "must end in .keras" in err[0] and err[1].startswith("cuttree: error: ")
    # the failed eval wrote no report; the successful prune wrote its report beside the model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.yaml", "my.keras", "small.keras", "small.report.json"]  # type: ignore[attr-defined]


def test_cli_run_finetune_eval_on_a_keras_file(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from cuttree.cli.main import main

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="c2")(x)
    out = keras.layers.Dense(10, name="head")(keras.layers.Flatten()(x))
    src = tmp_path / "digits.keras"  # type: ignore[operator]
    keras.Model(inp, out).save(src)
    run_dir = tmp_path / "run"  # type: ignore[operator]
    sets = [
        "--set",
        "ratio=0.5",
        "--set",
        "finetune.epochs=2",
        "--set",
        "finetune.batch_size=32",
        "--set",
        "finetune.lr=0.05",
    ]
    assert (
        main(
            [
                "run",
                "--model",
                str(src),
                "--data",
                "digits",
                *sets,
                "--set",
                "finetune.distill=0",
                "--out",
                str(run_dir),
                "--quiet",
            ]
        )
        == 0
    )
    report = __import__("json").loads((run_dir / "report.json").read_text())
    assert (
        report["command"] == "run"
        and report["after"]["metric"]["top1"] > 40.0
        and report["after"]["params"] < report["before"]["params"]
    )
    assert ck.load(run_dir / "model.keras").get_layer("c1").filters == 8
    ft_dir = tmp_path / "ft"  # type: ignore[operator]
    args = [
        "finetune",
        str(run_dir / "model.keras"),
        "--data",
        "digits",
        *sets,
        "--teacher",
        str(src),
        "--out",
        str(ft_dir),
        "--quiet",
    ]
    assert main(args) == 0
    assert (ft_dir / "model.keras").is_file() and (ft_dir / "report.json").is_file()
    capsys.readouterr()
    assert main(["eval", str(ft_dir / "model.keras"), "--data", "digits"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("top-1 ") and printed[0].endswith("on digits test (451 samples)"), printed
    assert printed[1] == f"wrote {ft_dir / 'model.eval.json'}"
    report = __import__("json").loads((ft_dir / "model.eval.json").read_text())
    assert f"top-1 {report['after']['metric']['top1']:.2f} " in printed[0] and report["samples"] == 451


@pytest.mark.parametrize(
    "name", ["ResNet50", "MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "DenseNet121", "ConvNeXtTiny", "Xception"]
)
def test_keras_applications_prune_at_ratio_03(name: str) -> None:
    keras.utils.set_random_seed(0)
    size = 71 if name == "Xception" else 64
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    r = ck.prune(model, cuttree.Config(ratio=0.3, latency_runs=0))
    x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
    assert np_out(r.model, x).shape == (1, 1000)
    assert r.after.params < r.before.params and r.after.macs < r.before.macs
    assert r.plan.macs_after == r.after.macs
    if TORCH_BACKEND:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as c:
            r.model(x, training=False)
        assert r.after.macs == c.get_total_flops() // 2


def test_evaluate_top1_and_mean_iou_exactly() -> None:
    inp = keras.Input((3,))
    lin = keras.layers.Dense(3, use_bias=False, name="eye")
    model = keras.Model(inp, lin(inp))
    lin.kernel.assign(np.eye(3, dtype="float32"))
    x = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 3], [5, 0, 0]], dtype="float32")
    assert ck.evaluate(model, x, np.array([0, 1, 0, 1])) == 50.0
    seg_in = keras.Input((2, 2, 2))
    seg = keras.Model(seg_in, keras.layers.Identity()(seg_in))
    logits = np.zeros((1, 2, 2, 2), dtype="float32")
    logits[0, :, :, 0] = [[1, 1], [0, 0]]  # predicted class 0 on the top row, class 1 below
    logits[0, :, :, 1] = [[0, 0], [1, 1]]
    target = np.array([[[0, 1], [1, 255]]])  # one void pixel, ignored
    # class 0: inter 1, union 2; class 1: inter 1, union 2 → mean IoU 50%
    assert ck.evaluate(seg, logits, target, mode="segmentation") == 50.0


def test_recalibrate_bn_is_the_exact_average() -> None:
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.BatchNormalization(name="bn")(inp))
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(32, 4)).astype("float32")
    assert ck.recalibrate_bn(model, x, batches=3, batch_size=32) == 1
    bn = model.get_layer("bn")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean.value), x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance.value), x.var(0), rtol=1e-4)
    assert bn.momentum == 0.99  # restored


def test_finetune_learns_and_distillation_leaves_the_teacher_alone() -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")

    def mlp() -> object:
        inp = keras.Input((8,))
        return keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dense(16, activation="relu")(inp)))

    student, teacher = mlp(), mlp()
    before = [w.copy() for w in teacher.get_weights()]
    cfg = cuttree.Config(ratio=0.0, finetune={"epochs": 8, "batch_size": 32, "lr": 0.1, "distill": 0.3})
    acc0 = ck.evaluate(student, x, y)
    out = ck.finetune(student, cfg, x, y, teacher=teacher, augment=False)
    assert out["steps"] == 56 and ck.evaluate(student, x, y) > max(acc0, 85.0)  # 26 of 256 held out: 230 train
    v = out["validation"]
    assert (v["source"], v["samples"], v["metric"]) == ("held out", 26, "top1") and len(v["history"]) == 9
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights(), strict=True))
    assert teacher.trainable
    with pytest.raises(ValueError, match="needs the unpruned model"):
        ck.finetune(student, cfg, x, y)


def test_a_fine_tuning_that_hurts_warns_and_keeps_the_weights_it_started_with() -> None:
    """lr 10 wrecks a trained model: Keras fine-tuning warns and ends with the weights it started
    with (finetune.keep_best), as the torch frontend does; without keep_best it says it kept worse."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    inp = keras.Input((8,))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dense(16, activation="relu")(inp)))
    ck.finetune(
        model, cuttree.Config(ratio=0.0, finetune={"epochs": 8, "batch_size": 32, "lr": 0.1}), x, y, augment=False
    )
    trained = [w.copy() for w in model.get_weights()]
    broken = cuttree.Config(ratio=0.0, finetune={"epochs": 2, "batch_size": 32, "lr": 10.0, "momentum": 0.9})
    with pytest.warns(UserWarning, match=r"fine-tuning did not improve the model \(validation top1 .*kept the weights"):
        out = ck.finetune(model, broken, x, y, augment=False)
    assert out["validation"]["kept"] == "best" and out["validation"]["best_step"] == 0
    assert all(np.array_equal(a, b) for a, b in zip(trained, model.get_weights(), strict=True))
    keep_last = broken.model_copy(update={"finetune": broken.finetune.model_copy(update={"keep_best": False})})
    with pytest.warns(UserWarning, match=r"made the model worse .* kept the last weights"):
        ck.finetune(model, keep_last, x, y, augment=False)


def test_torch_only_keys_are_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match="'reconstruct' = True is not available for Keras"):
        ck.prune(branchy(), cuttree.Config(ratio=0.5, reconstruct=True))
    with pytest.raises(ValueError, match="'steps' = 3 is not available for Keras"):
        ck.make_plan(branchy(), cuttree.Config(ratio=0.5, steps=3))
    with pytest.raises(ValueError, match="criterion 'wanda' is not available for Keras"):
        ck.sparsify(branchy(), cuttree.Config(method="unstructured", ratio=0.5, criterion="wanda"))


def test_segmentation_class_maps_keep_their_channels() -> None:
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    e = keras.layers.Conv2D(12, 3, strides=2, padding="same", activation="relu", name="enc")(inp)
    e = keras.layers.BatchNormalization(name="enc_bn")(e)
    d = keras.layers.Conv2DTranspose(8, 3, strides=2, padding="same", name="dec")(e)
    skip = keras.layers.Concatenate(name="skip")([d, keras.layers.Conv2D(4, 1, name="side")(inp)])
    classes = keras.layers.Conv2D(5, 1, name="classes")(skip)
    model = keras.Model(inp, classes)
    r = ck.prune(model, cuttree.Config(mode="segmentation", ratio=0.5, latency_runs=0))
    assert r.model.get_layer("classes").filters == 5  # the class map is an output: never pruned
    assert (r.model.get_layer("enc").filters, r.model.get_layer("dec").filters, r.model.get_layer("side").filters) == (
        6,
        4,
        2,
    )
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    assert np_out(r.model, x).shape == (2, 16, 16, 5)
    y = np.random.default_rng(1).integers(0, 5, (2, 16, 16))
    assert 0.0 <= ck.evaluate(r.model, x, y, mode="segmentation") <= 100.0


def test_macs_target_global_scope_round_to_and_min_channels() -> None:
    keras.utils.set_random_seed(0)
    model = original_design()
    r = ck.prune(model, cuttree.Config(macs_target=0.5, scope="global", round_to=8, min_channels=16, latency_runs=0))
    assert r.after.macs <= 0.5 * r.before.macs and r.after.macs == r.plan.macs_after
    kept = [len(g.keep) for g in r.plan.groups]
    assert all(k % 8 == 0 and k >= 16 for k in kept), kept
    assert len(set(kept)) > 1  # global: layers lose different fractions


def test_two_inputs_two_outputs() -> None:
    a, b = keras.Input((6, 6, 3), name="img"), keras.Input((4,), name="meta")
    x = keras.layers.Conv2D(8, 3, name="conv")(a)
    x = keras.layers.GlobalAveragePooling2D()(x)
    m = keras.layers.Dense(6, name="meta_dense")(b)
    h = keras.layers.Concatenate(name="joint")([x, m])
    h = keras.layers.Dense(10, activation="relu", name="hidden")(h)
    model = keras.Model([a, b], [keras.layers.Dense(3, name="cls")(h), keras.layers.Dense(1, name="reg")(h)])
    r = ck.prune(model, cuttree.Config(ratio=0.5, latency_runs=0))
    assert (
        r.model.get_layer("conv").filters,
        r.model.get_layer("meta_dense").units,
        r.model.get_layer("hidden").units,
    ) == (4, 3, 5)
    outs = r.model([np.ones((2, 6, 6, 3), "float32"), np.ones((2, 4), "float32")])
    assert [tuple(o.shape) for o in outs] == [(2, 3), (2, 1)]


def small_dense_net() -> object:
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(32, 3, name="c1")(inp)  # 864 weights: too few to store sparse
    x = keras.layers.Flatten()(keras.layers.Conv2D(32, 3, name="c2")(x))  # 9,216
    x = keras.layers.Dense(16, name="d")(x)  # 8,192
    return keras.Model(inp, keras.layers.Dense(3, name="head")(x))  # the output layer stays dense


def test_sparse_storage_round_trips_exactly_and_plain_keras_refuses_it(tmp_path: object) -> None:
    keras.utils.set_random_seed(0)
    r = ck.prune(small_dense_net(), cuttree.Config(method="unstructured", ratio=0.9, latency_runs=0))
    plain, packed = tmp_path / "plain.keras", tmp_path / "packed.keras"  # type: ignore[operator]
    ck.save(r, plain)
    ck.save(r, packed, sparse_storage=True)
    meta = ck.read_metadata(packed)
    assert sorted(info["shape"] for info in meta["sparse"].values()) == [[3, 3, 32, 32], [512, 16]]
    assert packed.stat().st_size < plain.stat().st_size
    again = ck.load(packed)
    for a, b in zip(r.model.weights, again.weights, strict=True):  # bit for bit, zeros included
        assert a.path == b.path
        assert np.array_equal(keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value))
    with pytest.raises(ValueError, match=r"model\.weights\.h5"):  # Keras alone never loads zeros in their place
        keras.saving.load_model(packed, compile=False)
    assert ck.read_metadata(plain).get("sparse") is None
    ck.load(plain)  # the default file stays one Keras reads by itself
    keras.saving.load_model(plain, compile=False)

    from cuttree.cli.main import main

    src, out = tmp_path / "dense.keras", tmp_path / "cli.keras"  # type: ignore[operator]
    small_dense_net().save(src)
    args = [
        "prune",
        "--model",
        str(src),
        "--set",
        "method=unstructured",
        "--set",
        "ratio=0.9",
        "--set",
        "threshold=null",
    ]
    assert main([*args, "--set", "latency_runs=0", "--sparse-storage", "--out", str(out)]) == 0
    assert len(ck.read_metadata(out)["sparse"]) == 2


def test_corrupt_sparse_storage_is_refused(tmp_path: object) -> None:
    import json
    import zipfile

    from cuttree.frontends.keras.files import sealed_zip

    keras.utils.set_random_seed(0)
    r = ck.prune(small_dense_net(), cuttree.Config(method="unstructured", ratio=0.9, latency_runs=0))
    good = ck.save(r, tmp_path / "good.keras", sparse_storage=True)  # type: ignore[operator]
    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["cuttree.json"])
    name = next(iter(meta["sparse"]))
    for key, value, message in [
        ("nnz", meta["sparse"][name]["nnz"] + 1, "does not match"),
        ("dtype", "<i4", "invalid"),
    ]:
        broken = json.loads(members["cuttree.json"])
        broken["sparse"][name][key] = value
        bad = tmp_path / f"bad_{key}.keras"  # type: ignore[operator]
        # a hostile file can carry a valid seal: the header itself is checked too
        bad.write_bytes(sealed_zip({**members, "cuttree.json": json.dumps(broken).encode()}, zipfile.ZIP_DEFLATED))
        with pytest.raises(cuttree.FileFormatError, match=message):
            ck.load(bad)
    (tmp_path / "junk.keras").write_bytes(b"not a zip")  # type: ignore[operator]
    with pytest.raises(cuttree.FileFormatError, match=r"not a readable \.keras file"):
        ck.load(tmp_path / "junk.keras")  # type: ignore[operator]


def test_a_keras_model_with_nothing_prunable_says_so() -> None:
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(inputs))
    with pytest.warns(UserWarning, match=r"nothing in this model can be pruned, .*\(logits: a model output\)") as w:
        r = ck.prune(model, cuttree.Config(ratio=0.5, latency_runs=0))
    assert {m.filename for m in w if str(m.message).startswith("nothing")} == {__file__}  # the user's line
    assert r.after.params == r.before.params == 21


def test_torch_only_settings_are_refused_for_keras_models() -> None:
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8)(inputs)))
    settings = (("reconstruct", True), ("steps", 2), ("fold_computed_weights", True), ("units", ("layers",)))
    for key, value in settings:
        with pytest.raises(
            ValueError, match=rf"^config key '{key}' = {re.escape(repr(value))} is not available for Keras"
        ):
            ck.prune(model, cuttree.Config(ratio=0.5, latency_runs=0, **{key: value}))


def test_the_cli_prints_a_warning_on_one_line(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from cuttree.cli.main import main

    inputs = keras.Input((6,))
    src = tmp_path / "one.keras"  # type: ignore[operator]
    keras.Model(inputs, keras.layers.Dense(3, name="logits")(inputs)).save(src)
    out = tmp_path / "small.keras"  # type: ignore[operator]
    args = ["prune", "--model", str(src), "--set", "ratio=0.5", "--set", "latency_runs=0", "--out", str(out)]
    assert main([*args, "--allow-noop"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "nothing" in line]
    assert said == [
        "cuttree: warning: nothing in this model can be pruned, so it is returned unchanged: every layer's output "
        "channels are pinned (logits: a model output); the model has no channels besides its outputs'"
    ]


def test_a_file_with_an_unregistered_custom_layer_names_it_and_the_fix(
    tmp_path: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "corrupt": the CLI names the class and the fix, and with --trust MODULE (which
    registers it) the model prunes, the custom layer kept whole with the usual warning."""
    import sys
    from pathlib import Path

    from cuttree.cli.main import main

    folder = Path(str(tmp_path))
    (folder / "mylayers.py").write_text(
        "import keras\n\n\n@keras.saving.register_keras_serializable(package='mylayers')\n"
        "class Scale(keras.layers.Layer):\n    def call(self, x):\n        return x * 2.0\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    import mylayers  # type: ignore[import-not-found]

    i = keras.Input((4,))
    keras.Model(i, keras.layers.Dense(3)(mylayers.Scale()(keras.layers.Dense(8)(i)))).save(folder / "custom.keras")
    keras.saving.get_custom_objects().pop("mylayers>Scale")
    monkeypatch.delitem(sys.modules, "mylayers")
    args = ["prune", "--model", str(folder / "custom.keras"), "--set", "ratio=0.5", "--set", "latency_runs=0"]
    args += ["--out", str(folder / "small.keras")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "uses the custom class 'Scale', which is not registered" in err and "--trust MODULE" in err
    assert "corrupt" not in err and not (folder / "small.keras").exists()
    assert main([*args, "--trust", "mylayers", "--allow-noop"]) == 0
    assert "Scale" in capsys.readouterr().err  # the layer without a rule: kept whole, with the warning
    keras.saving.get_custom_objects().pop("mylayers>Scale", None)


def test_the_keras_verbs_raise_no_warning_but_cuttrees_own(tmp_path: object) -> None:
    """A model built with ``inputs=[...]`` (as legacy .h5 files are), pruned, evaluated, recalibrated,
    fine-tuned, saved and loaded: Keras's note that the input structures differ and numpy's note
    on the torch backend's ``__array__`` are the user's business no more; cuttree's own remain."""
    from pathlib import Path

    from cuttree.errors import CuttreeWarning

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(16, 3, padding="same")(inp))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x))
    model = keras.Model([inp], keras.layers.Dense(3, activation="softmax")(x))
    rng = np.random.default_rng(0)
    xs, ys = rng.random((64, 8, 8, 3), dtype=np.float32), rng.integers(0, 3, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = ck.prune(model, cuttree.Config(ratio=0.5, latency_runs=2))
        ck.evaluate(r.model, xs, ys)
        ck.recalibrate_bn(r.model, xs)
        cfg = cuttree.Config(ratio=0.5, finetune={"epochs": 1, "batch_size": 16, "distill": 0.5})
        ck.finetune(r.model, cfg, xs, ys, teacher=model, augment=False)
        path = Path(str(tmp_path)) / "small.keras"
        ck.save(r, path)
        ck.load(path)
    others = [
        f"{w.category.__name__}: {str(w.message)[:80]}" for w in caught if not issubclass(w.category, CuttreeWarning)
    ]
    assert others == []


def test_rms_norm_scale_is_rescaled_so_the_pruned_model_equals_the_zeroed_one() -> None:
    """Dense(16) → RMSNormalization → Dense(4) at ratio 0.5 keeps 8 channels; the norm's scale is
    the kept entries × √(16/8), so the pruned model equals the original with the first Dense's
    removed units zeroed (as the torch frontend's ``nn.RMSNorm``)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    x = keras.layers.Dense(16, name="d1")(inp)
    x = keras.layers.RMSNormalization(epsilon=1e-12, name="rms")(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="d2")(x))
    scale = np.linspace(0.5, 2.0, 16).astype("float32")
    model.get_layer("rms").scale.assign(scale)
    r = ck.prune(model, cuttree.Config(ratio=0.5, criterion="random", latency_runs=0))
    (g,) = r.plan.groups
    gone = sorted(set(range(16)) - set(g.keep))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(r.model.get_layer("rms").scale.value), scale[list(g.keep)] * 2**0.5, rtol=1e-6
    )
    k, b = (keras.ops.convert_to_numpy(v.value) for v in model.get_layer("d1").weights)
    k[:, gone], b[gone] = 0, 0
    model.get_layer("d1").set_weights([k, b])
    x = np.random.default_rng(0).standard_normal((3, 4)).astype("float32")
    np.testing.assert_allclose(np_out(r.model, x), np_out(model, x), rtol=1e-5, atol=1e-6)
