"""Segmentation zoo: every torchvision segmentation model prunes at ratio 0.3 in segmentation mode.

Random weights, auxiliary heads on where the model has them, input 1×3×128×128. Each pruned
model must run, keep every output's shape and class count, and have fewer parameters.

    python bench/seg_zoo.py [--size 128]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torchvision

import cuttree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=128)
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    names = torchvision.models.list_models(module=torchvision.models.segmentation)
    ok = 0
    print(f"{'model':30s} {'ok':>3s} {'outputs (shape kept)':34s} {'params before':>14s} {'after':>12s} {'s':>6s}")
    for n in names:
        kw = {} if n.startswith("lraspp") else {"aux_loss": True}
        model = torchvision.models.get_model(n, weights=None, weights_backbone=None, **kw).eval()
        x = (torch.randn(1, 3, a.size, a.size),)
        t0 = time.perf_counter()
        r = cuttree.prune(model, x, cuttree.Config(mode="segmentation", ratio=0.3, latency_runs=0))
        with torch.no_grad():
            y0, y1 = model(*x), r.model.eval()(*x)
        same = y0.keys() == y1.keys() and all(y0[k].shape == y1[k].shape for k in y0)
        good = same and r.after.params < r.before.params
        ok += good
        outs = ", ".join(f"{k} {next(iter(v.shape[1:2]))}×{v.shape[2]}×{v.shape[3]}" for k, v in y1.items())
        print(
            f"{n:30s} {'yes' if good else 'NO':>3s} {outs:34s} {r.before.params:>14,} {r.after.params:>12,} "
            f"{time.perf_counter() - t0:6.1f}",
            flush=True,
        )
    print(
        f"\n{ok}/{len(names)} segmentation models pruned at ratio 0.3: run, every output's shape and classes kept, fewer parameters"
    )


if __name__ == "__main__":
    main()
