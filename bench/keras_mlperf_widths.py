"""Which widths recover best: the pretrained MLPerf-Tiny ResNet pruned to half its MACs with
different per-group widths, each fine-tuned for the same number of epochs (Keras, torch backend).

The exploration behind docs/keras.md's "what was tried" (tenth session). Start and teacher are
either the shipped model or a dense model fine-tuned first (``--init``/``--teacher``: a .keras
file, e.g. one written by ``--keep dense --save``), which is the data README's fair protocol of
adapting the dense model to the JPEG images before pruning. ``--keep`` is ``uniform`` (the
default plan for ``macs_target: 0.5``), ``sensitivity`` (``allocation: sensitivity`` from
``cuttree.keras.sensitivity`` on 2,000 training images), ``dense``, or the kept channels of the
six groups as ``a,b,c,d,e,f`` (stage-1 residual, stage-1 inner, stage-2 inner, stage-2
residual, stage-3 inner, stage-3 residual; 16/16/32/32/64/64 before). The recipe is the bench's
(bench/keras_mlperf.py): batch 128, SGD Nesterov, cosine from ``--lr``, weight decay 5e-4,
crop-and-flip, distillation α (``--alpha``), T = 4. Printed: top-1 on 2,000 test images after
every epoch, then on all 10,000, MACs, parameters and wall time.

    KERAS_BACKEND=torch python bench/keras_mlperf_widths.py --keep 8,8,32,16,64,64 --epochs 8 \\
        [--init adapted.keras --teacher adapted.keras] [--alpha 0.5] [--lr 0.005]
"""

from __future__ import annotations

import argparse
import os
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
from cuttree.datasets.images import cifar10_arrays, data_root

GROUPS = ("conv2d", "conv2d_1", "conv2d_3", "conv2d_4", "conv2d_6", "conv2d_7")
SIZES = (16, 16, 32, 32, 64, 64)
BATCH = 128


def pruned(start: Any, keep: str, xtr: np.ndarray, ytr: np.ndarray) -> Any:
    """``start`` pruned to half its MACs with the widths ``keep`` names, BN recalibrated."""
    calib = (xtr[:256], ytr[:256])
    if keep == "uniform":
        model = ck.prune(start, cuttree.Config(macs_target=0.5, latency_runs=0), calib_data=calib).model
    elif keep == "sensitivity":
        idx = np.random.default_rng(0).choice(len(xtr), 2000, replace=False)
        with tempfile.TemporaryDirectory() as d:
            s = ck.sensitivity(start, cuttree.Config(ratio=0.5), (xtr[idx], ytr[idx]), samples=2000, cache_dir=d)
        print(s.table(), flush=True)
        cfg = cuttree.Config(macs_target=0.5, allocation="sensitivity", latency_runs=0)
        model = ck.prune(start, cfg, calib_data=calib, sensitivity=s).model
    else:
        widths = [int(k) for k in keep.split(",")]
        layers = {g: {"ratio": 1 - k / n} for g, k, n in zip(GROUPS, widths, SIZES, strict=True)}
        cfg = cuttree.Config(ratio=0.0, round_to=1, latency_runs=0, layers=layers)
        model = ck.prune(start, cfg, calib_data=calib).model
    ck.recalibrate_bn(model, xtr)
    return model


class EveryEpoch(keras.callbacks.Callback):
    """Top-1 on every fifth test image at the end of each epoch."""

    def __init__(self, model: Any, x: np.ndarray, y: np.ndarray, per_epoch: int) -> None:
        super().__init__()
        self.student, self.x, self.y, self.per_epoch = model, x[::5], y[::5], per_epoch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if (batch + 1) % self.per_epoch == 0:
            acc = ck.evaluate(self.student, self.x, self.y)
            print(f"  epoch {(batch + 1) // self.per_epoch}: {acc:.2f}% on 2,000 test images", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", default=None, help="a .keras start (default: the shipped model)")
    ap.add_argument("--teacher", default=None, help="a .keras teacher (default: the shipped model)")
    ap.add_argument("--keep", default="uniform", help="uniform, sensitivity, dense, or six widths a,b,c,d,e,f")
    ap.add_argument("--epochs", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--save", default=None, help="write the fine-tuned model here (.keras)")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    shipped = data_root() / "weights" / "cifar10_mlperf_tiny_resnet.h5"
    xt, yt = cifar10_arrays("test")
    xtr, ytr = cifar10_arrays("train")
    start, teacher = ck.load(a.init or shipped), ck.load(a.teacher or shipped)
    model = start if a.keep == "dense" else pruned(start, a.keep, xtr, ytr)
    t0 = time.perf_counter()
    cfg = cuttree.Config(
        ratio=0.1,  # no pruning here: the config carries the fine-tuning recipe
        latency_runs=0,
        finetune={"epochs": a.epochs, "batch_size": BATCH, "lr": a.lr, "distill": a.alpha, "temperature": 4.0},
    )
    ck.finetune(model, cfg, xtr, ytr, teacher=teacher, callbacks=[EveryEpoch(model, xt, yt, len(xtr) // BATCH)])
    wall = time.perf_counter() - t0
    m = ck.measure(model, None, 0)
    print(
        f"keep {a.keep}: top-1 {ck.evaluate(model, xt, yt):.2f}% on 10,000 test images; MACs {m.macs:,}, "
        f"parameters {m.params:,}; {a.epochs:g} epochs, lr {a.lr}, alpha {a.alpha}, from {a.init or 'shipped'}, "
        f"teacher {a.teacher or 'shipped'}; fine-tuning wall {wall:.0f} s (evaluations included)",
        flush=True,
    )
    if a.save:
        ck.save(model, Path(a.save))


if __name__ == "__main__":
    main()
