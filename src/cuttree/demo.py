"""The main job behind ``make demo``: train, prune, recover, report — on data shipped by a package.

Default: scikit-learn's bundled digits (1,797 8×8 images, upscaled to 32×32 RGB), the seed's
VGG-16-BN trained briefly from scratch, pruned to 40% of its MACs, fine-tuned with distillation
from the unpruned model. ``--data cifar10`` runs the same job on CIFAR-10 from the shared data
folder (``--limit`` images per split keep it short on a CPU).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from cuttree.config import Config, merge, parse_set
from cuttree.recover.job import report_table, run_job
from cuttree.recover.train import finetune

DEMO = {
    "mode": "classification",
    "macs_target": 0.4,
    "criterion": "l1",
    "min_samples": 64,
    "latency_runs": 20,
    "finetune": {"epochs": 3, "lr": 0.005, "batch_size": 64, "distill": 0.5, "temperature": 4.0, "checkpoint_every": 0},
}
PRETRAIN = {"epochs": 4, "lr": 0.01, "batch_size": 64, "checkpoint_every": 0, "distill": 0.0}


def run_demo(args: argparse.Namespace) -> int:
    from cuttree.datasets.images import load_dataset
    from cuttree.models import vgg16_bn_cifar

    torch.manual_seed(0)
    sets = parse_set(args.set or [])
    cfg = Config(**merge(DEMO, sets))
    kw = {"limit": args.limit} if args.limit else {}
    train: Any = load_dataset(args.data, "train", **kw)
    test: Any = load_dataset(args.data, "test", **kw)
    out = Path(args.out_dir or default_out_dir(args.data))
    print(
        f"cuttree demo: VGG-16-BN on {args.data} ({len(train)} train / {len(test)} test images, 32×32), "
        f"{torch.get_num_threads()} threads"
    )
    model = vgg16_bn_cifar(num_classes=10)
    pre = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update=PRETRAIN)})
    print(f"1/2 training the dense model from scratch: {PRETRAIN['epochs']} epochs", flush=True)
    finetune(model, train, pre, log=_quiet(args), progress=not args.quiet)
    print(
        f"2/2 pruning to {cfg.macs_target:.0%} of the MACs ({cfg.criterion}), recovering with {cfg.finetune.epochs:g} "
        f"epochs of fine-tuning with distillation (α {cfg.finetune.distill}, T {cfg.finetune.temperature:g}), "
        "measuring both models",
        flush=True,
    )
    x = (torch.randn(32, 3, 32, 32),)
    report = run_job(
        model,
        x,
        cfg,
        train,
        test,
        out,
        arch="cuttree.models:vgg16_bn_cifar",
        log=_quiet(args),
        data_name=args.data,
        progress=not args.quiet,
    )
    from cuttree.reports.report import write_report

    html_path, md_path = write_report(out)
    print()
    print(report_table(report))
    print(
        f"\n(latency: batch 32, median and interquartile range of {cfg.latency_runs} runs, dense and pruned timed "
        f"interleaved; run folder {out}/: model.cuttree, report.json, {html_path.name} (open it in a browser), "
        f"{md_path.name}, config.yaml)"
    )
    return 0


def default_out_dir(data: str) -> str:
    """The demo's run folder: ``runs/demo`` on the default data, ``runs/demo-DATA`` on other data,
    so a run on CIFAR-10 never overwrites the default one.

    >>> default_out_dir("digits"), default_out_dir("cifar10")
    ('runs/demo', 'runs/demo-cifar10')
    """
    return "runs/demo" if data == "digits" else f"runs/demo-{data.replace(':', '-').replace('/', '-')}"


def _quiet(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    if args.quiet:
        return lambda msg: None
    return lambda msg: print("   " + msg, flush=True)
