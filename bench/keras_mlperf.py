"""The pretrained MLPerf-Tiny ResNet (Keras, ../shared/data): dense vs pruned to half its MACs,
both fine-tuned with the same CPU budget, through cuttree.keras on KERAS_BACKEND (torch default).

Budget (the same for both): ``--epochs`` passes over the CIFAR-10 JPEG train set (50,000), batch
128, SGD with Nesterov momentum 0.9, cosine from ``--lr``, weight decay 5e-4, random crop and
flip, distillation α=0.5, T=4 from the unpruned pretrained model. The pruned model: l1, local,
``macs_target: 0.5`` (``--criterion``, ``--scope`` to change), BN recalibrated on 20 batches before fine-tuning. Printed for both:
top-1 on the 10,000 test images, MACs, ``.keras`` size, latency (batch 1, median of 50), wall time.

    KERAS_BACKEND=torch python bench/keras_mlperf.py [--epochs 8] [--lr 0.005]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import cuttree
import cuttree.keras as ck
from cuttree.data import cifar10_arrays, data_root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--scope", default="local", choices=["local", "global"])
    ap.add_argument("--only", choices=["dense", "pruned"], default=None, help="run one of the two")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    weights = data_root() / "weights" / "cifar10_mlperf_tiny_resnet.h5"
    xt, yt = cifar10_arrays("test")
    xtr, ytr = cifar10_arrays("train")
    teacher = ck.load(weights)
    cfg = cuttree.Config(
        macs_target=0.5,
        criterion=args.criterion,
        scope=args.scope,
        latency_runs=50,
        finetune={"epochs": args.epochs, "batch_size": 128, "lr": args.lr, "distill": 0.5, "temperature": 4.0},
    )
    print(
        f"backend {ck.keras.backend.backend()}; budget: {args.epochs} epochs × 50,000 images, batch 128, lr {args.lr}"
    )
    print(f"pretrained, as shipped: {ck.evaluate(teacher, xt, yt):.2f}% top-1 on the test set\n")
    rows = []
    for name in [args.only] if args.only else ["dense", "pruned"]:
        t0 = time.perf_counter()
        if name == "dense":
            model = ck.load(weights)
            note = ""
        else:
            r = ck.prune(teacher, cfg, calib_data=(xtr[: cfg.calib_samples], ytr[: cfg.calib_samples]))
            model = r.model
            note = f"right after pruning {ck.evaluate(model, xt, yt):.2f}%"
            ck.recalibrate_bn(model, xtr)
            note += f", BN recalibrated {ck.evaluate(model, xt, yt):.2f}%"
        ck.finetune(model, cfg, xtr, ytr, teacher=teacher)
        wall = time.perf_counter() - t0
        acc = ck.evaluate(model, xt, yt)
        m = ck.measure(model, None, cfg.latency_runs)
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / f"{name}.keras"
            ck.save(model, p)
            size = p.stat().st_size
        rows.append((name, acc, m.macs, size, m.latency_ms, wall, note))
        print(
            f"{name:6s}  top-1 {acc:.2f}%  MACs {m.macs:,}  .keras {size / 1e3:.0f} kB  latency {m.latency_ms:.2f} ms  "
            f"wall {wall:.0f} s  {note}",
            flush=True,
        )
    if len(rows) < 2:
        return
    gap = rows[0][1] - rows[1][1]
    print(f"\ndense − pruned = {gap:.2f} points (target: within 1.0); MACs {rows[1][2] / rows[0][2]:.1%} of dense")


if __name__ == "__main__":
    main()
