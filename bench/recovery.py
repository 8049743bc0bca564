"""Recovery benchmark: cuttree vs Torch-Pruning, same budget, on the pretrained CIFAR-10 ResNets.

For ResNet-20 and ResNet-56 (pretrained, ../shared/data/weights), in one process and with the
same budget for every arm (the same criterion and ranking scope, SGD + cosine, same epochs, batch,
learning rate and seed, same data order):

- dense: the unpruned model fine-tuned on the JPEG CIFAR-10 train split (the fair baseline:
  this copy of CIFAR-10 is JPEG re-encoded and fine-tuning alone adapts the model to it);
- cuttree: pruned to half the MACs (``macs_target: 0.5``; by default L2 magnitude ranked globally,
  ``--criterion``/``--scope``), BN recalibrated, fine-tuned with distillation from the dense
  pretrained model;
- Torch-Pruning 1.6.1: pruned by its MetaPruner with the same magnitude importance and the same
  scope (``global_pruning``) to the same MACs (its ratio searched until its MACs are at most
  cuttree's), then the same fine-tuning.

Prints top-1 on the JPEG test split before pruning, right after, after fine-tuning, MACs and
latency (batch 256, 2 threads) for every arm.

    python bench/recovery.py [--models resnet20,resnet56] [--epochs 1] [--train-limit 50000]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import time
from typing import Any

import torch

import cuttree
from cuttree.datasets.images import cifar10
from cuttree.frontends.torch.measure import count_macs, evaluate, latency_ms
from cuttree.models import resnet20, resnet56
from cuttree.recover.train import finetune, recalibrate_bn

BUILD = {"resnet20": resnet20, "resnet56": resnet56}


def tp_prune(
    model: torch.nn.Module, x: torch.Tensor, target_macs: int, p: int, global_pruning: bool
) -> tuple[torch.nn.Module, str]:
    """Torch-Pruning's MetaPruner (Lp magnitude) at the ratio whose MACs first fall to ``target_macs``.

    Its generic use breaks these ResNets (the zero-padded shortcut: the pruned model no longer
    runs), so if that happens it is retried with every residual-stream conv ignored, i.e. pruning
    only the inner width of each block, which is what it can do on them.
    """
    import torch_pruning as tp

    def ignored(m: torch.nn.Module, inner_only: bool) -> list[torch.nn.Module]:
        layers = [m.get_submodule("linear")]
        if inner_only:
            layers += [m.get_submodule("conv1")] + [
                b.get_submodule("conv2") for b in m.modules() if hasattr(b, "conv2")
            ]
        return layers

    for variant in ("generic", "inner-only"):
        lo, hi, best = 0.0, 0.95, None
        try:
            for _ in range(12):
                mid = (lo + hi) / 2
                m = copy.deepcopy(model)
                pruner = tp.pruner.MetaPruner(
                    m,
                    x,
                    importance=tp.importance.MagnitudeImportance(p=p),
                    pruning_ratio=mid,
                    global_pruning=global_pruning,
                    ignored_layers=ignored(m, variant == "inner-only"),
                )
                pruner.step()
                if count_macs(m, (x,)) <= target_macs:
                    hi, best = mid, m
                else:
                    lo = mid
        except (RuntimeError, cuttree.CuttreeError) as e:
            print(f"torch-pruning ({variant}) gives a model that does not run: {str(e).splitlines()[0][:90]}")
            continue
        if best is not None:
            return best, variant
    raise RuntimeError("torch-pruning reached the MACs target in neither variant")


def finish(
    arms: dict[str, dict[str, Any]], name: str, arm: str, pruned: float, model: torch.nn.Module, since: float, test: Any
) -> None:
    """Record one arm (accuracy after pruning and after fine-tuning, the model, seconds) and print it."""
    arms[arm] = {"pruned": pruned, "tuned": evaluate(model, test)["top1"], "model": model}
    arms[arm]["seconds"] = time.perf_counter() - since
    print(f"{name} {arm}: {pruned:.2f}% -> {arms[arm]['tuned']:.2f}% in {arms[arm]['seconds']:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--train-limit", type=int, default=50000)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--distill", type=float, default=0.5)
    ap.add_argument("--criterion", choices=["l1", "l2"], default="l2")
    ap.add_argument("--scope", choices=["local", "global"], default="global")
    ap.add_argument("--arms", default="dense,cuttree,tp", help="which arms to run (a longer budget may skip tp)")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    run = set(a.arms.split(","))
    if unknown := sorted(run - {"dense", "cuttree", "tp"}):
        ap.error(f"--arms {unknown[0]!r} is not an arm; the arms are dense, cuttree and tp")
    if "tp" in run and importlib.util.find_spec("torch_pruning") is None:
        # fail before an hour of fine-tuning, not after it
        ap.error("the tp arm needs torch-pruning 1.6.1: pip install -e '.[bench]' (or drop tp from --arms)")
    torch.set_num_threads(2)
    train = cifar10("train", limit=a.train_limit, augment=True)
    test = cifar10("test")
    ft = {"epochs": a.epochs, "lr": a.lr, "batch_size": a.batch_size, "checkpoint_every": 0}
    x1 = torch.randn(1, 3, 32, 32)
    xb = (torch.randn(256, 3, 32, 32),)
    rows = []
    for name in a.models.split(","):
        dense0 = BUILD[name]()
        cuttree.load_weights(dense0, _weights(name))
        base = evaluate(dense0, test)["top1"]
        arms: dict[str, dict[str, Any]] = {}
        t0 = time.perf_counter()
        cfg = cuttree.Config(
            macs_target=0.5, criterion=a.criterion, scope=a.scope, latency_runs=0, finetune={**ft, "distill": 0.0}
        )

        if "dense" in run:
            t = time.perf_counter()
            dense = copy.deepcopy(dense0)
            finetune(dense, train, cfg, log=lambda m: None)
            finish(arms, name, "dense fine-tuned", base, dense, t, test)
        r = cuttree.prune(dense0, (x1,), cfg)
        kd = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"distill": a.distill})})
        if "cuttree" in run:
            t = time.perf_counter()
            cm = r.model
            recalibrate_bn(cm, train, cfg)
            after = evaluate(cm, test)["top1"]
            finetune(cm, train, kd, teacher=dense0, log=lambda m: None)
            finish(arms, name, "cuttree", after, cm, t, test)
        if "tp" in run:
            t = time.perf_counter()
            tm, variant = tp_prune(dense0, x1, r.after.macs, int(a.criterion[1]), a.scope == "global")
            recalibrate_bn(tm, train, cfg)
            after = evaluate(tm, test)["top1"]
            finetune(tm, train, kd, teacher=dense0, log=lambda m: None)
            finish(arms, name, f"torch-pruning ({variant})", after, tm, t, test)
        print(f"\n{name}: pretrained top-1 on the JPEG test split {base:.2f}%  ({time.perf_counter() - t0:.0f} s)")
        print(f"{'arm':18s} {'after pruning':>13s} {'fine-tuned':>10s} {'MACs':>13s} {'latency':>9s} {'time':>7s}")
        for arm, v in arms.items():
            m = v.pop("model")
            macs = count_macs(m, (x1,))
            lat = latency_ms(m, xb, runs=5)
            rows.append({"model": name, "arm": arm, **v, "macs": macs, "latency_ms": lat})
            print(
                f"{arm:18s} {v['pruned']:12.2f}% {v['tuned']:9.2f}% {macs:13,} {lat:7.1f}ms {v['seconds']:6.0f}s",
                flush=True,
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)


def _weights(name: str):  # type: ignore[no-untyped-def]
    from cuttree.datasets.images import data_root

    return data_root() / "weights" / f"cifar10_{name}.safetensors"


if __name__ == "__main__":
    main()
