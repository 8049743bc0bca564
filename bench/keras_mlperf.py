"""The pretrained MLPerf-Tiny ResNet (Keras, ../shared/data): dense vs pruned to half its MACs,
both fine-tuned with the same CPU budget, through cuttree.keras on KERAS_BACKEND (torch default).

The budget is either ``--epochs`` passes over the CIFAR-10 JPEG train set (50,000) for both, or
``--budget-s`` seconds of this machine's time for each model, pruning and BN recalibration
included: a timed probe (the same fine-tuning, 20 and then 100 steps, weights restored after)
gives each model's seconds per step and its fixed start-up cost, and the model trains for as many
steps as fit; a model that runs faster trains for more steps. The recipe is the same for both:
batch 128, SGD with Nesterov momentum 0.9, cosine from ``--lr`` over the model's own steps, weight
decay 5e-4, random crop and flip, distillation α=0.5, T=4 from the unpruned pretrained model. The
pruned model: l1, local, ``macs_target: 0.5`` (``--criterion``, ``--scope`` to change), BN
recalibrated on 20 batches before fine-tuning. Printed for both: top-1 on the 10,000 test images,
MACs, ``.keras`` size, latency (batch 1, median of 50), the steps trained and the wall time
(which the budget bounds). Run it with nothing else on the machine: the probe's timing sets the
steps.

``--gradual F`` prunes the pruned model gradually inside its budget instead of at once: the
pretrained model is fine-tuned while, at ten evenly spaced steps over the first F of its steps,
a plan for a MACs target falling from 1 to 0.5 (cubic) is made on its current weights and the
planned channels are zeroed in every tensor they touch (again after every step); then the last
plan is cut out, which changes no output (the bench prints by how much it did).

    KERAS_BACKEND=torch python bench/keras_mlperf.py [--budget-s 1200 | --epochs 8] [--lr 0.005]
        [--only dense|pruned] [--gradual 0.4]
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

BATCH = 128


def config(args: argparse.Namespace, epochs: float) -> cuttree.Config:
    """The bench's config: half the MACs, and the fine-tuning recipe for ``epochs`` passes."""
    return cuttree.Config(
        macs_target=0.5,
        criterion=args.criterion,
        scope=args.scope,
        latency_runs=50,
        finetune={"epochs": epochs, "batch_size": BATCH, "lr": args.lr, "distill": 0.5, "temperature": 4.0},
    )


class Shrink(keras.callbacks.Callback):
    """Gradual structured pruning: at ``stages`` evenly spaced steps over the first ``until`` of
    ``steps``, plan a MACs target falling from 1 to ``target`` (cubic, as in Zhu & Gupta's
    schedule) on the student's current weights and zero the planned channels in every tensor
    they touch; after each step they are zeroed again. The last plan removes exactly the zeroed
    channels, so surgery afterwards changes no output."""

    def __init__(self, student: Any, steps: int, target: float, until: float, stages: int) -> None:
        super().__init__()
        self.student, self.target = student, target
        self.at = {round(steps * until * (k + 1) / stages): (k + 1) / stages for k in range(stages)}
        self.vars = {v.path: v for v in student.weights}
        self.masks: dict[str, Any] = {}
        self.plan: cuttree.PruningPlan | None = None

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if batch not in self.at:
            return
        macs = 1.0 - (1.0 - self.target) * (1.0 - (1.0 - self.at[batch]) ** 3)
        self.plan, _ = ck.make_plan(self.student, cuttree.Config(macs_target=macs, latency_runs=0))
        self.masks = {}
        for name, dims in self.plan.removed_positions().items():
            v = self.vars[name]
            if name.endswith(("moving_mean", "moving_variance")):
                continue
            mask = np.ones(v.shape, dtype="float32")
            for d, pos in dims.items():
                np.moveaxis(mask, d, 0)[pos] = 0.0  # a view: zeroes those positions along dim d
            self.masks[name] = keras.ops.convert_to_tensor(mask)
        self.on_train_batch_end(batch)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        for name, mask in self.masks.items():
            self.vars[name].assign(self.vars[name].value * mask)


def probe(model: Any, args: argparse.Namespace, x: np.ndarray, y: np.ndarray, teacher: Any) -> tuple[float, float]:
    """(seconds per step, fixed seconds per call) of ``model``'s fine-tuning, timed on 20 and on 100
    steps; the weights are restored afterwards."""
    saved = model.get_weights()
    times = []
    for steps in (20, 100):
        t0 = time.perf_counter()
        ck.finetune(model, config(args, steps * BATCH / len(x)), x, y, teacher=teacher)
        times.append(time.perf_counter() - t0)
    model.set_weights(saved)
    per_step = (times[1] - times[0]) / 80
    return per_step, max(times[0] - 20 * per_step, 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float, default=None, help="the same number of epochs for both")
    budget.add_argument("--budget-s", type=float, default=None, help="the same seconds for both (default 1200)")
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--scope", default="local", choices=["local", "global"])
    ap.add_argument("--only", choices=["dense", "pruned"], default=None, help="run one of the two")
    ap.add_argument(
        "--gradual",
        type=float,
        default=0.0,
        help="prune gradually instead of at once: zero planned channels over this share of the steps, then cut them",
    )
    args = ap.parse_args()
    if args.epochs is None and args.budget_s is None:
        args.budget_s = 1200.0
    warnings.simplefilter("ignore")
    weights = data_root() / "weights" / "cifar10_mlperf_tiny_resnet.h5"
    xt, yt = cifar10_arrays("test")
    xtr, ytr = cifar10_arrays("train")
    teacher = ck.load(weights)
    stated = f"{args.epochs} epochs × 50,000 images" if args.epochs else f"{args.budget_s:.0f} s per model"
    print(f"backend {keras.backend.backend()}; budget: {stated}, batch {BATCH}, lr {args.lr}")
    print(f"pretrained, as shipped: {ck.evaluate(teacher, xt, yt):.2f}% top-1 on the test set\n")
    rows = []
    for name in [args.only] if args.only else ["dense", "pruned"]:
        t0 = time.perf_counter()
        if name == "dense":
            model = ck.load(weights)
            note = ""
        elif args.gradual:
            model = ck.load(weights)
            note = f"gradual over {args.gradual:.0%} of the steps"
        else:
            cfg = config(args, 1.0)
            r = ck.prune(teacher, cfg, calib_data=(xtr[: cfg.calib_samples], ytr[: cfg.calib_samples]))
            model = r.model
            t_off = time.perf_counter()  # the evaluations below are not fine-tuning time
            note = f"right after pruning {ck.evaluate(model, xt, yt):.2f}%"
            t0 += time.perf_counter() - t_off
            ck.recalibrate_bn(model, xtr)
            t_off = time.perf_counter()
            note += f", BN recalibrated {ck.evaluate(model, xt, yt):.2f}%"
            t0 += time.perf_counter() - t_off
        if args.epochs:
            epochs = args.epochs
        else:
            t_off = time.perf_counter()
            per_step, fixed = probe(model, args, xtr, ytr, teacher)
            t0 += time.perf_counter() - t_off  # the probe is measurement, not budget
            left = args.budget_s - (time.perf_counter() - t0) - fixed
            epochs = max(left / per_step, 1.0) * BATCH / len(xtr)
            note = f"probe {per_step * 1e3:.0f} ms/step + {fixed:.1f} s" + (f"; {note}" if note else "")
        shrink = None
        if name == "pruned" and args.gradual:
            steps = round(epochs * (len(xtr) // BATCH))
            shrink = Shrink(model, steps, 0.5, args.gradual, stages=10)
        out = ck.finetune(model, config(args, epochs), xtr, ytr, teacher=teacher, callbacks=[shrink] if shrink else [])
        if shrink is not None:
            assert shrink.plan is not None
            probe_x = xt[:256].astype("float32")
            masked = keras.ops.convert_to_numpy(model(probe_x, training=False))
            model = ck.apply_plan(model, shrink.plan)
            diff = float(np.abs(keras.ops.convert_to_numpy(model(probe_x, training=False)) - masked).max())
            note += f"; surgery changed outputs by at most {diff:.1e}"
        wall = time.perf_counter() - t0
        acc = ck.evaluate(model, xt, yt)
        m = ck.measure(model, None, 50)
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / f"{name}.keras"
            ck.save(model, p)
            size = p.stat().st_size
        rows.append((name, acc, m.macs))
        print(
            f"{name:6s}  top-1 {acc:.2f}%  MACs {m.macs:,}  .keras {size / 1e3:.0f} kB  latency {m.latency_ms:.2f} ms  "
            f"{out['steps']:,} steps ({epochs:.2f} epochs)  wall {wall:.0f} s  {note}",
            flush=True,
        )
    if len(rows) < 2:
        return
    gap = rows[0][1] - rows[1][1]
    print(f"\ndense − pruned = {gap:.2f} points (target: within 1.0); MACs {rows[1][2] / rows[0][2]:.1%} of dense")


if __name__ == "__main__":
    main()
