"""Sensitivity allocation vs uniform and global-L2 on the pretrained CIFAR-10 ResNet-56, at half the MACs.

Three plans at ``macs_target: 0.5``, all ranking channels by L2 magnitude inside a group, differ
only in how the budget is split among groups:

- uniform: the same ratio in every group (``scope: local``);
- global L2: every channel of every group ranked together (``scope: global``);
- sensitivity: per-group ratios with the least predicted loss (``allocation: sensitivity``), from
  a sensitivity analysis on ``--val`` images of the *train* split (never the test split).

Each pruned model gets its BN recalibrated (256 train images), then top-1 on the 10,000 test
images; then the same short fine-tuning for each (``--ft-images`` train images, SGD, cosine, lr
0.01, distillation from the dense model) and top-1 again. Printed: MACs, parameters and top-1 of
each, and the analysis's own wall time.

    python bench/sensitivity_resnet56.py [--val 1000] [--ratios 0.25,0.5,0.75] [--ft-images 10000]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from typing import Any

import torch

import cuttree
from cuttree.datasets.images import cifar10, data_root
from cuttree.frontends.torch.measure import count_macs, count_params, evaluate
from cuttree.models import resnet56
from cuttree.recover.train import finetune, recalibrate_bn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--ratios", default="0.25,0.5,0.75")
    ap.add_argument("--ft-images", type=int, default=10000)
    ap.add_argument("--macs", type=float, default=0.5)
    ap.add_argument("--cache-dir", default=None, help="sensitivity cache (default: a fresh temporary folder)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = resnet56()
    cuttree.load_weights(model, data_root() / "weights" / "cifar10_resnet56.safetensors")
    model.eval()
    train, test = cifar10("train"), cifar10("test")
    x = (torch.zeros(1, 3, 32, 32),)
    base = {"criterion": "l2", "macs_target": a.macs, "min_samples": 64, "latency_runs": 0}
    ft = {"epochs": a.ft_images / len(train), "lr": 0.01, "batch_size": 128, "distill": 0.5, "checkpoint_every": 0}
    cfgs = {
        "uniform": cuttree.Config(**base, scope="local", finetune=ft),
        "global L2": cuttree.Config(**base, scope="global", finetune=ft),
        "sensitivity": cuttree.Config(**base, allocation="sensitivity", finetune=ft),
    }
    dense = evaluate(model, test)["top1"]
    print(f"ResNet-56 pretrained: top-1 {dense:.2f}% on the 10,000 JPEG test images, MACs {count_macs(model, x):,}")
    ratios = tuple(float(r) for r in a.ratios.split(","))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sens = cuttree.sensitivity(
            model, x, cfgs["sensitivity"], train, ratios=ratios, samples=a.val, cache_dir=a.cache_dir or tmp
        )
    took = time.perf_counter() - t0
    print(f"\nsensitivity analysis: {len(sens.groups)} groups × {len(ratios)} ratios on {sens.samples} train images, "
          f"{took:.0f} s (baseline {sens.baseline:.2f}%)")  # fmt: skip
    print(sens.table())
    rows = []
    ft_train = cifar10("train", augment=True)
    for name, cfg in cfgs.items():
        r = cuttree.prune(model, x, cfg, sensitivity=sens)
        m = r.model
        recalibrate_bn(m, train, cfg)
        after = evaluate(m, test)["top1"]
        t1 = time.perf_counter()
        finetune(m, ft_train, cfg, teacher=copy.deepcopy(model), log=lambda s: None)
        tuned = evaluate(m, test)["top1"]
        rows.append((name, r.after.macs, count_params(m), after, tuned, time.perf_counter() - t1, r.plan.budget))
        print(f"{name}: done", flush=True)
    print(f"\nmacs_target {a.macs}; L2 ranking inside each group; BN recalibrated on 256 train images; fine-tuning: "
          f"{a.ft_images:,} train images (augmented), SGD lr 0.01 cosine, distillation α 0.5 from the dense model\n")  # fmt: skip
    print("| plan | MACs | parameters | top-1 after pruning (BN recal.) | top-1 after fine-tuning | FT wall |")
    print("|---|---|---|---|---|---|")
    for name, macs, params, after, tuned, wall, _ in rows:
        print(f"| {name} | {macs:,} | {params:,} | {after:.2f}% | {tuned:.2f}% | {wall:.0f} s |")
    s = next(r for r in rows if r[0] == "sensitivity")
    others = [r for r in rows if r[0] != "sensitivity"]
    beats = all(s[3] > o[3] for o in others)
    print(f"\nsensitivity beats both right after pruning: {beats} "
          f"({s[3]:.2f}% vs {', '.join(f'{o[0]} {o[3]:.2f}%' for o in others)}); "
          f"after fine-tuning: {s[4]:.2f}% vs {', '.join(f'{o[0]} {o[4]:.2f}%' for o in others)}")  # fmt: skip
    budget: dict[str, Any] = s[6]
    print(f"predicted drop {budget['predicted_drop']:.2f} points; per-group ratios: "
          + ", ".join(f"{k} {v:g}" for k, v in budget["ratios"].items()))  # fmt: skip


if __name__ == "__main__":
    main()
