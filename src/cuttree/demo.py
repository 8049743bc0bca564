"""The main job behind ``make demo``: prune the CIFAR-shaped VGG-16-BN and report before/after.

Writes a run folder: the resolved config, ``report.json`` and the ``.cuttree`` model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from cuttree import io
from cuttree.api import prune
from cuttree.config import Config, parse_set

DEMO_CONFIG = {"mode": "classification", "ratio": 0.5, "criterion": "l1", "min_samples": 8, "latency_runs": 20}


def run_demo(args: argparse.Namespace) -> int:
    from cuttree.models import vgg16_bn_cifar

    cfg = Config(**{**DEMO_CONFIG, **parse_set(args.set or [])})
    out = Path(args.out_dir)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = vgg16_bn_cifar().eval()
    x = (torch.randn(32, 3, 32, 32),)
    print(
        f"cuttree demo: VGG-16-BN (32×32, 10 classes), {cfg.criterion} criterion, ratio {cfg.ratio}, batch 32, "
        f"{torch.get_num_threads()} threads\n"
    )
    r = prune(model, x, cfg)
    print(r.plan.table())
    print()
    print(r.table())
    io.save(r, out / "model.cuttree", arch="cuttree.models:vgg16_bn_cifar")
    report = {
        "config": cfg.to_dict(),
        "before": r.before.to_dict(),
        "after": r.after.to_dict(),
        "timings": r.timings,
    }
    io.atomic_write(out / "report.json", lambda p: p.write_text(json.dumps(report, indent=1)))
    io.atomic_write(out / "config.yaml", lambda p: p.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
    print(f"\nwrote {out}/model.cuttree, report.json, config.yaml")
    return 0
