"""ENet on CamVid: fine-tune the weak checkpoint, prune to half its MACs, fine-tune again, compare.

1. dense: the checkpoint (``../shared/data/weights/camvid_enet.safetensors``) fine-tuned on the
   CamVid train split at ``--size`` (H×W, nearest resize, random flips) for ``--epochs``;
2. pruned: that model pruned to ``--macs`` of its MACs (L1, segmentation mode: the 12 class maps
   are never pruned), BN recalibrated, fine-tuned with the same budget and distillation from the
   dense model.
Prints mean IoU (void = 11 ignored), pixel accuracy and per-class IoU on the test split, MACs and
latency at that resolution for the checkpoint, the dense and the pruned model.

    python bench/camvid_enet.py [--size 176,240] [--epochs 20] [--macs 0.5]   (H and W multiples of 8)
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import cuttree
from cuttree.datasets.images import data_root
from cuttree.datasets.segmentation import CAMVID_CLASSES, camvid
from cuttree.frontends.torch.measure import count_macs, evaluate, latency_ms
from cuttree.models import enet
from cuttree.recover.train import finetune, recalibrate_bn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="176,240")
    ap.add_argument("--epochs", type=float, default=20)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--macs", type=float, default=0.5)
    ap.add_argument("--limit", type=int, default=None, help="images per split (smoke tests)")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    torch.set_num_threads(2)
    size = tuple(int(v) for v in a.size.split(","))
    train = camvid("train", size=size, flip=True, limit=a.limit)  # type: ignore[arg-type]
    test = camvid("test", size=size, limit=a.limit)  # type: ignore[arg-type]
    ft = {
        "epochs": a.epochs,
        "lr": a.lr,
        "optimizer": "adamw",
        "weight_decay": 2e-4,
        "batch_size": a.batch_size,
        "checkpoint_every": 0,
        "ignore_index": 11,
    }
    cfg = cuttree.Config(mode="segmentation", macs_target=a.macs, min_samples=16, latency_runs=0, finetune=ft)
    x1 = (torch.randn(1, 3, *size) * 255,)
    model = enet()
    cuttree.load_weights(model, data_root() / "weights" / "camvid_enet.safetensors")
    rows = {}

    def report(name: str, m: torch.nn.Module, seconds: float) -> None:
        ev = evaluate(m, test, "segmentation", batch_size=8, ignore_index=11)
        rows[name] = {**ev, "macs": count_macs(m, x1), "latency_ms": latency_ms(m, x1, runs=10), "seconds": seconds}
        print(
            f"{name:12s} mIoU {ev['miou']:6.2f}%  pixel acc {ev['pixel_acc']:6.2f}%  MACs {rows[name]['macs']:,}  "
            f"latency {rows[name]['latency_ms']:.1f} ms  ({seconds:.0f} s)",
            flush=True,
        )

    report("checkpoint", model, 0.0)
    t0 = time.perf_counter()
    dense = copy.deepcopy(model)
    finetune(dense, train, cfg, log=lambda m: None)
    report("dense", dense, time.perf_counter() - t0)
    t0 = time.perf_counter()
    r = cuttree.prune(dense, x1, cfg)
    pruned = r.model
    recalibrate_bn(pruned, train, cfg)
    kd = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"distill": 0.5, "temperature": 2.0})})
    finetune(pruned, train, kd, teacher=dense, log=lambda m: None)
    report("pruned", pruned, time.perf_counter() - t0)
    print(f"\nper-class IoU at {size[0]}×{size[1]} (test split):")
    print(f"{'class':12s} " + " ".join(f"{n:>11s}" for n in rows))
    for i, c in enumerate(CAMVID_CLASSES):
        print(f"{c:12s} " + " ".join(f"{rows[n][f'iou_{i}']:10.2f}%" for n in rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
