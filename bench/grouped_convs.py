"""Grouped convolutions side by side: cuttree (its default, whole groups and the width inside
them, and whole groups alone: ``group_width: false``) vs Torch-Pruning (its default for grouped
convs), ratio 0.3, L1 magnitude, local, classifier kept, random weights, 224×224.

Prints parameters and MACs kept, engine time and whether the pruned model runs, for
torchvision ``resnext50_32x4d`` and ``regnet_y_400mf`` and timm ``resnext50_32x4d``.

    python bench/grouped_convs.py
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import torch
from torch import nn

import cuttree
from cuttree.frontends.torch.measure import count_macs

RATIO = 0.3
MODELS = ["torchvision:resnext50_32x4d", "torchvision:regnet_y_400mf", "timm:resnext50_32x4d"]


def build(spec: str) -> nn.Module:
    lib, name = spec.split(":")
    torch.manual_seed(0)
    if lib == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None).eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


def with_cuttree(model: nn.Module, x: torch.Tensor) -> nn.Module:
    return cuttree.prune(model, (x,), cuttree.Config(ratio=RATIO, latency_runs=0)).model


def with_cuttree_groups_only(model: nn.Module, x: torch.Tensor) -> nn.Module:
    return cuttree.prune(model, (x,), cuttree.Config(ratio=RATIO, group_width=False, latency_runs=0)).model


def with_torch_pruning(model: nn.Module, x: torch.Tensor) -> nn.Module:
    import torch_pruning as tp

    work: Any = copy.deepcopy(model)
    last = [m for m in work.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(
        work, x, importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=RATIO, ignored_layers=[last]
    )
    pruner.step()
    return work  # type: ignore[no-any-return]


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def main() -> None:
    torch.set_num_threads(2)
    x = torch.randn(1, 3, 224, 224)
    print(f"ratio {RATIO}, L1, local, classifier kept; 224×224, batch 1, {torch.get_num_threads()} threads\n")
    print("| model | tool | parameters kept | MACs kept | engine time | runs |")
    print("|---|---|---|---|---|---|")
    for spec in MODELS:
        model = build(spec)
        with torch.no_grad():
            model(x)  # warm-up, for both tools
        p0, m0 = params(model), count_macs(model, (x,))
        tools = [
            ("cuttree", with_cuttree),
            ("cuttree, group_width: false", with_cuttree_groups_only),
            ("Torch-Pruning 1.6.1", with_torch_pruning),
        ]
        for tool, fn in tools:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = time.perf_counter()
                pruned = fn(model, x)
                dt = time.perf_counter() - t
            with torch.no_grad():
                runs = pruned(x).shape == (1, 1000)
            p, m = params(pruned), count_macs(pruned, (x,))
            print(
                f"| {spec} | {tool} | {p:,} ({p / p0:.1%}) | {m:,} ({m / m0:.1%}) | {dt:.2f} s | {runs} |", flush=True
            )


if __name__ == "__main__":
    main()
