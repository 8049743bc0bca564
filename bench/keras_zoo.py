"""Keras 3 frontend figures, measured in one run on the backend in KERAS_BACKEND (torch default).

1. keras.applications models with weights=None (VGG16 as the original design builds it: 32×32,
   include_top=False, nested, 10-class head; the others at 224×224 with their own heads) pruned
   at ratio 0.3 (l1, local): parameters and MACs before/after, MACs checked against
   torch.utils.flop_counter (torch backend), ratio 0 identical outputs, the saved .keras file
   reloading to identical outputs, engine seconds (plan + surgery).
2. Engine speed side by side: Keras ResNet50 (cuttree.keras make_plan + apply_plan) against the
   torch frontend on torchvision's resnet50 (plan_and_apply), ratio 0.5, batch-1 224×224,
   interleaved, median of ``--repeats``.
3. Unstructured: the original design's VGG16 at 90% sparsity, .keras size against the dense file.

    KERAS_BACKEND=torch python bench/keras_zoo.py [--repeats 5] [--models VGG16,ResNet50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

import cuttree
import cuttree.keras as ck

MODELS = ["VGG16", "ResNet50", "MobileNetV2", "EfficientNetB0", "DenseNet121", "ConvNeXtTiny", "Xception"]


def original_design() -> Any:
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Flatten()(base(inputs))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def build(name: str) -> Any:
    keras.utils.set_random_seed(0)
    if name == "VGG16":
        return original_design()
    return getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))


def flop_counter_macs(model: Any, shape: tuple[int, ...]) -> int | None:
    if keras.backend.backend() != "torch":
        return None
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as c:
        model(np.zeros(shape, dtype="float32"), training=False)
    return int(c.get_total_flops()) // 2


def out(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


def zoo(names: list[str]) -> None:
    print(f"## keras.applications at ratio 0.3 (backend {keras.backend.backend()}, keras {keras.__version__})\n")
    print(
        "| model | input | params before → after | MACs before → after | MACs = flop counter | ratio 0 identical | reload identical | engine s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        model = build(name)
        shape = (1, *model.inputs[0].shape[1:])
        x = np.random.default_rng(0).random((2, *shape[1:]), dtype=np.float32)
        r = ck.prune(model, cuttree.Config(ratio=0.3, latency_runs=0))
        fc_before, fc_after = flop_counter_macs(model, shape), flop_counter_macs(r.model, shape)
        fc = "n/a" if fc_before is None else str(fc_before == r.before.macs and fc_after == r.after.macs)
        same0 = np.array_equal(out(ck.prune(model, cuttree.Config(ratio=0.0, latency_runs=0)).model, x), out(model, x))
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "small.keras"
            ck.save(r, p)
            reload = np.array_equal(out(ck.load(p), x), out(r.model, x))
        assert out(r.model, x).shape == out(model, x).shape
        print(
            f"| {name} | {shape[1]}×{shape[2]} | {r.before.params:,} → {r.after.params:,} ({r.after.params / r.before.params:.1%}) "
            f"| {r.before.macs:,} → {r.after.macs:,} ({r.after.macs / r.before.macs:.1%}) | {fc} | {same0} | {reload} "
            f"| {r.timings['engine_s']:.2f} |"
        )


def engine(repeats: int) -> None:
    import torch
    import torchvision

    from cuttree.api import plan_and_apply

    torch.set_num_threads(2)
    kmodel = build("ResNet50")
    torch.manual_seed(0)
    tmodel = torchvision.models.resnet50(weights=None).eval()
    tx = (torch.randn(1, 3, 224, 224),)
    cfg = cuttree.Config(ratio=0.5, latency_runs=0)
    kt, tt = [], []
    for _ in range(repeats):  # interleaved: keras, torch, keras, torch, …
        t = time.perf_counter()
        plan, _ = ck.make_plan(kmodel, cfg)
        ck.apply_plan(kmodel, plan)
        kt.append(time.perf_counter() - t)
        t = time.perf_counter()
        plan_and_apply(tmodel, tx, cfg)
        tt.append(time.perf_counter() - t)
    k, tm = statistics.median(kt), statistics.median(tt)
    print(f"\n## engine, ratio 0.5, 224×224, median of {repeats} interleaved\n")
    print(f"Keras ResNet50 (cuttree.keras): {k:.3f} s (min {min(kt):.3f}, max {max(kt):.3f})")
    print(f"torchvision resnet50 (torch frontend): {tm:.3f} s (min {min(tt):.3f}, max {max(tt):.3f})")
    print(f"Keras / torch = {k / tm:.2f} (target: below 3)")


def sparse() -> None:
    model = original_design()
    with tempfile.TemporaryDirectory() as d:
        dense_plain, dense = Path(d) / "dense_plain.keras", Path(d) / "dense.keras"
        sp, packed = Path(d) / "sparse.keras", Path(d) / "sparse_packed.keras"
        model.save(dense_plain)
        ck.save(model, dense)
        r = ck.prune(model, cuttree.Config(method="unstructured", ratio=0.9, latency_runs=0))
        ck.save(r, sp)
        t = time.perf_counter()
        ck.save(r, packed, sparse_storage=True)
        t_save = time.perf_counter() - t
        t = time.perf_counter()
        again = ck.load(packed)
        t_load = time.perf_counter() - t
        exact = all(
            np.array_equal(keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value))
            for a, b in zip(r.model.weights, again.weights, strict=True)
        )
        a, b, c, e = (f.stat().st_size for f in (dense_plain, dense, sp, packed))
    print("\n## unstructured 90% (l1, local, output layer dense), original design VGG16\n")
    print(f"dense model.save: {a / 1e6:.2f} MB; dense cuttree.keras.save: {b / 1e6:.2f} MB")
    print(f"90% sparse cuttree.keras.save (Keras reads it alone): {c / 1e6:.2f} MB = {c / a:.1%} of the dense .keras")
    print(
        f"90% sparse cuttree.keras.save(sparse_storage=True): {e / 1e6:.2f} MB = {e / a:.1%} of the dense .keras "
        f"(target ≤ 12%); save {t_save:.2f} s, load {t_load:.2f} s, reloads bit-exact: {exact}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--only", default="zoo,engine,sparse", help="which parts to run, comma-separated")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if "zoo" in args.only:
        zoo(args.models.split(","))
    if "engine" in args.only:
        engine(args.repeats)
    if "sparse" in args.only:
        sparse()


if __name__ == "__main__":
    main()
