"""Gradual magnitude pruning side by side: TFMOT's ``prune_low_magnitude`` (legacy Keras 2,
``tf_keras``) and ``cuttree.keras`` (Keras 3 on the TensorFlow backend), same model, same schedule,
same fine-tuning, each in its own process.

Model: the pretrained MLPerf-Tiny ResNet (../shared/data). Schedule: polynomial (cubic) from 0
to ``--sparsity`` between step 0 and 70% of the run, masks updated every 50 steps. Fine-tuning:
``--epochs`` over the CIFAR-10 JPEG train set, batch 128, SGD Nesterov momentum 0.9, cosine from
lr 0.005, the same seeded batch order with crop-and-flip augmentation, no distillation (TFMOT has
none). Printed per tool: sparsity reached over the layers it pruned, top-1 on the test set, the
saved file's size (TFMOT: stripped .h5, and zipped as its guide does; cuttree: .keras), wall time.

Differences that stay: TFMOT prunes every Conv/Dense kernel including the 10-class output
layer; cuttree keeps the output layer dense (as its torch frontend does).

    python bench/keras_tfmot.py [--epochs 2] [--sparsity 0.8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

BATCH, LR, FREQ = 128, 0.005, 50


def batches(x: np.ndarray, y: np.ndarray, steps: int, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The seeded order and augmentation cuttree.keras.finetune uses (cuttree.recover.batching), as a generator."""
    from cuttree.recover.batching import batch_at, shuffled_order

    order = shuffled_order(len(x), BATCH, steps, seed)
    for i in range(steps):
        yield batch_at(x, y, order, i, BATCH, augment=True)


def load_arrays(path: str) -> tuple[np.ndarray, ...]:
    """The CIFAR-10 arrays the parent process decoded (workers import neither torch nor the loaders:
    TensorFlow and torch in one process crash on import here)."""
    with np.load(path) as d:
        return d["xt"], d["yt"], d["xtr"], d["ytr"]


def schedule_steps(epochs: float, n: int) -> tuple[int, int]:
    steps = max(round(epochs * (n // BATCH)), 1)
    return steps, max(int(0.7 * steps) // FREQ * FREQ, FREQ)  # a multiple of FREQ: TFMOT prunes only on those


def tfmot_worker(epochs: float, final: float, data: str, weights: str) -> dict[str, Any]:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    xt, yt, xtr, ytr = load_arrays(data)
    steps, end = schedule_steps(epochs, len(xtr))
    model = tf_keras.models.load_model(weights, compile=False)
    sched = tfmot.sparsity.keras.PolynomialDecay(0.0, final, begin_step=0, end_step=end, power=3, frequency=FREQ)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=sched)
    lr = tf_keras.optimizers.schedules.CosineDecay(LR, decay_steps=steps)
    opt = tf_keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    pruned.compile(opt, loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=False))
    t0 = time.perf_counter()
    data = tf.data.Dataset.from_generator(
        lambda: batches(xtr, ytr, steps),
        output_signature=(tf.TensorSpec((None, 32, 32, 3), tf.float32), tf.TensorSpec((None,), tf.int64)),
    )
    pruned.fit(data, epochs=1, steps_per_epoch=steps, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], verbose=0)
    wall = time.perf_counter() - t0
    final_model = tfmot.sparsity.keras.strip_pruning(pruned)
    acc = float((final_model.predict(xt.astype("float32"), batch_size=256, verbose=0).argmax(-1) == yt).mean() * 100)
    kernels = [layer.kernel.numpy() for layer in final_model.layers if hasattr(layer, "kernel")]
    sparsity = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    with tempfile.TemporaryDirectory() as d:
        h5 = Path(d) / "pruned.h5"
        tf_keras.models.save_model(final_model, h5, include_optimizer=False)
        z = Path(d) / "pruned.h5.zip"
        with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
            f.write(h5, "pruned.h5")
        sizes = {"h5": h5.stat().st_size, "h5_zipped": z.stat().st_size}
    return {
        "tool": "TFMOT 0.8 (tf_keras)",
        "top1": acc,
        "sparsity": sparsity,
        "layers": len(kernels),
        "wall_s": wall,
        **sizes,
    }


def cuttree_worker(epochs: float, final: float, data: str, weights: str) -> dict[str, Any]:
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import cuttree
    import cuttree.keras as ck
    from cuttree.frontends.keras.sparsity import prunable_layers, sparsity

    xt, yt, xtr, ytr = load_arrays(data)
    _, end = schedule_steps(epochs, len(xtr))
    model = ck.load(weights)
    cfg = cuttree.Config(
        method="unstructured",
        schedule={
            "initial_sparsity": 0.0,
            "final_sparsity": final,
            "begin_step": 0,
            "end_step": end,
            "frequency": FREQ,
        },
        finetune={"epochs": epochs, "batch_size": BATCH, "lr": LR, "distill": 0.0},
    )
    cb = ck.GradualPruning(cfg)
    t0 = time.perf_counter()
    ck.finetune(model, cfg, xtr, ytr, callbacks=[cb])
    wall = time.perf_counter() - t0
    ck.strip(model, cb.masks)
    layers = prunable_layers(model)
    with tempfile.TemporaryDirectory() as d:
        p = ck.save(model, Path(d) / "pruned.keras")
        size = p.stat().st_size
    return {
        "tool": "cuttree.keras (Keras 3, TF backend)",
        "top1": ck.evaluate(model, xt, yt),
        "sparsity": sparsity(layers),
        "layers": len(layers),
        "wall_s": wall,
        "keras": size,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=["tfmot", "cuttree"])
    ap.add_argument("--arrays", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        fn = tfmot_worker if args.worker == "tfmot" else cuttree_worker
        print("RESULT " + json.dumps(fn(args.epochs, args.sparsity, args.arrays, args.weights)))
        return
    from cuttree.datasets.images import cifar10_arrays, data_root

    tmp = tempfile.TemporaryDirectory()
    arrays = str(Path(tmp.name) / "cifar10.npz")
    (xt, yt), (xtr, ytr) = cifar10_arrays("test"), cifar10_arrays("train")
    np.savez(arrays, xt=xt, yt=yt, xtr=xtr, ytr=ytr)
    args.weights = str(data_root() / "weights" / "cifar10_mlperf_tiny_resnet.h5")
    print(
        f"schedule 0 → {args.sparsity} (cubic, every {FREQ} steps, to 70% of the run); {args.epochs} epochs, batch {BATCH}"
    )
    for worker in ("tfmot", "cuttree"):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            worker,
            "--epochs",
            str(args.epochs),
            "--sparsity",
            str(args.sparsity),
            "--arrays",
            arrays,
            "--weights",
            args.weights,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{worker}: failed\n{out.stderr[-3000:]}")
            continue
        r = json.loads(line[7:])
        files = (
            f".h5 {r['h5'] / 1e3:.0f} kB, zipped {r['h5_zipped'] / 1e3:.0f} kB"
            if "h5" in r
            else f".keras {r['keras'] / 1e3:.0f} kB"
        )
        print(
            f"{r['tool']}: sparsity {r['sparsity']:.1%} over {r['layers']} layers, top-1 {r['top1']:.2f}%, {files}, "
            f"fine-tuning wall {r['wall_s']:.0f} s",
            flush=True,
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
