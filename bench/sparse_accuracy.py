"""Unstructured sparsity that keeps accuracy: pretrained CIFAR-10 ResNet-56 at 80% sparsity.

Three arms, same fine-tuning budget (SGD + cosine, same epochs, batch, lr, seed and data order)
on the JPEG CIFAR-10 train split, evaluated on its test split:

- dense: the unpruned model fine-tuned (the fair baseline on this JPEG copy of CIFAR-10);
- cuttree: magnitude masks grown by the cubic schedule (Zhu & Gupta) from 0 to 80% over the
  first ``--end-fraction`` (default 70%) of the steps, during the fine-tuning, then stripped;
- torch.nn.utils.prune: global L1 to 80% in one shot, then the same fine-tuning.

    python bench/sparse_accuracy.py [--epochs 1] [--train-limit 50000] [--arms dense,cuttree,torch]

Each arm's result and wall time are printed as soon as it finishes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch
import torch.nn.utils.prune as tprune

import cuttree
from cuttree.datasets.images import cifar10, data_root
from cuttree.frontends.torch.measure import evaluate
from cuttree.frontends.torch.sparsity import gradual, prunable_layers, sparsity
from cuttree.models import resnet56
from cuttree.recover.train import finetune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--train-limit", type=int, default=50000)
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--end-fraction", type=float, default=0.7, help="the schedule reaches its final sparsity here")
    ap.add_argument("--arms", default="dense,cuttree,torch", help="which arms to run, comma-separated")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    arms = a.arms.split(",")
    if unknown := sorted(set(arms) - {"dense", "cuttree", "torch"}):
        ap.error(f"--arms {unknown[0]!r} is not an arm; the arms are dense, cuttree and torch")
    torch.set_num_threads(2)
    train, test = cifar10("train", limit=a.train_limit, augment=True), cifar10("test")
    base = resnet56()
    cuttree.load_weights(base, data_root() / "weights" / "cifar10_resnet56.safetensors")
    ft = {"epochs": a.epochs, "lr": a.lr, "batch_size": 128, "checkpoint_every": 0}
    steps = math.ceil(a.epochs * (len(train) // 128))
    sched = {
        "initial_sparsity": 0.0,
        "final_sparsity": a.sparsity,
        "begin_step": 0,
        "end_step": max(1, int(a.end_fraction * steps)),
        "frequency": max(1, steps // 50),
        "power": 3,
    }
    cfg = cuttree.Config(method="unstructured", schedule=sched, scope="global", finetune=ft)
    rows = {"pretrained": evaluate(base, test)["top1"]}
    seconds: dict[str, float] = {}
    measured: dict[str, float] = {}

    def done(arm: str, row: str, since: float) -> None:
        seconds[arm] = time.perf_counter() - since
        print(f"{row}: {rows[row]:.2f}% in {seconds[arm]:.0f} s", flush=True)

    if "dense" in arms:
        t = time.perf_counter()
        dense = copy.deepcopy(base)
        finetune(dense, train, cfg, log=lambda m: None)
        rows["dense fine-tuned"] = evaluate(dense, test)["top1"]
        done("dense", "dense fine-tuned", t)

    if "cuttree" in arms:
        t = time.perf_counter()
        r = cuttree.sparsify(base, cfg, sparsity_now=0.0)
        finetune(r.model, train, cfg, on_step=gradual(r.model, cfg), log=lambda m: None)
        cm = cuttree.strip(r.model)
        rows["cuttree cubic schedule"] = evaluate(cm, test)["top1"]
        measured["cuttree"] = sparsity(cm, prunable_layers(cm))
        done("cuttree", "cuttree cubic schedule", t)

    if "torch" in arms:
        t = time.perf_counter()
        tm = copy.deepcopy(base)
        layers = prunable_layers(tm)
        tprune.global_unstructured([(m, "weight") for m in layers.values()], tprune.L1Unstructured, amount=a.sparsity)
        rows["torch prune one-shot, before fine-tuning"] = evaluate(tm, test)["top1"]
        finetune(
            tm,
            train,
            cfg.model_copy(update={"method": "structured", "schedule": None, "ratio": 0.0}),
            log=lambda m: None,
        )
        for m in layers.values():
            tprune.remove(m, "weight")
        rows["torch prune one-shot + fine-tuning"] = evaluate(tm, test)["top1"]
        measured["torch prune"] = sparsity(tm, prunable_layers(tm))
        done("torch", "torch prune one-shot + fine-tuning", t)

    print(
        f"ResNet-56, {a.sparsity:.0%} sparsity of Conv weights (output layer dense), {a.epochs:g} epoch(s) on "
        f"{len(train)} JPEG CIFAR-10 train images, top-1 on the 10,000 test images"
    )
    for k, v in rows.items():
        print(f"  {k:42s} {v:6.2f}%")
    print("  measured sparsity: " + ", ".join(f"{k} {v:.4f}" for k, v in measured.items()))
    print("  wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "top1": rows, "sparsity": measured, "seconds": seconds}, f, indent=1)


if __name__ == "__main__":
    main()
