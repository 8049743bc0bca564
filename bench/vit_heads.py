"""Attention heads side by side: cuttree (heads found from the trace) vs Torch-Pruning (given
``num_heads`` by hand, attributes patched by hand), on torchvision ``vit_b_16`` and timm
``vit_base_patch16_224``, random weights, ratio 0.5 on every width (heads, embedding, MLP),
L1 magnitude, local, classifier kept.

Prints parameters, MACs (cuttree's counter: torch's FLOP counter with attention products) and
engine time (trace + plan + apply; model construction not timed) per tool; then the real speed
of vit_b_16 dense vs each pruned model at batch 32, 2 threads, eager, interleaved, median of
``--repeats``: speed-up ÷ MAC reduction (target ≥ 0.9).

    python bench/vit_heads.py [--repeats 5] [--skip-speed]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import cuttree
from cuttree.frontends.torch.measure import count_macs

RATIO = 0.5


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "vit_b_16":
        import torchvision

        return torchvision.models.vit_b_16().eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


def with_cuttree(model: nn.Module, x: torch.Tensor) -> nn.Module:
    return cuttree.prune(model, (x,), cuttree.Config(ratio=RATIO, latency_runs=0)).model


def with_torch_pruning(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Torch-Pruning's documented recipe: num_heads by hand, then the attributes by hand."""
    import torch_pruning as tp

    work: Any = copy.deepcopy(model)  # third-party attributes, set by hand below
    timm_model = hasattr(work, "blocks")
    if timm_model:
        heads = {m.qkv: m.num_heads for m in work.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")}
        last = work.head
    else:
        heads = {m: m.num_heads for m in work.modules() if isinstance(m, nn.MultiheadAttention)}
        last = work.heads.head
    pruner = tp.pruner.MetaPruner(
        work,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=RATIO,
        ignored_layers=[last],
        num_heads=heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=RATIO,
    )
    pruner.step()
    if timm_model:  # what TP's timm example does by hand
        for m in work.modules():
            if hasattr(m, "qkv") and hasattr(m, "num_heads"):
                m.num_heads = pruner.num_heads[m.qkv]
                m.head_dim = m.qkv.out_features // (3 * m.num_heads)
                if hasattr(m, "attn_dim"):
                    m.attn_dim = m.num_heads * m.head_dim
    else:  # what TP's torchvision example does by hand
        work.hidden_dim = work.conv_proj.out_channels
    return work  # type: ignore[no-any-return]


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def timed(
    fn: Callable[[nn.Module, torch.Tensor], nn.Module], model: nn.Module, x: torch.Tensor
) -> tuple[nn.Module, float]:
    t = time.perf_counter()
    out = fn(model, x)
    return out, time.perf_counter() - t


def compare(name: str) -> dict[str, nn.Module]:
    model = build(name)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        model(x)  # warm-up, for both tools
    p0, m0 = params(model), count_macs(model, (x,))
    print(f"\n## {name}: {p0:,} parameters, {m0:,} MACs (dense)\n")
    print("| tool | parameters kept | MACs kept | engine time | runs |")
    print("|---|---|---|---|---|")
    out: dict[str, nn.Module] = {"dense": model}
    for tool, fn in [("cuttree", with_cuttree), ("Torch-Pruning 1.6.1", with_torch_pruning)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruned, dt = timed(fn, model, x)
        with torch.no_grad():
            runs = pruned(x).shape == (1, 1000)
        p, m = params(pruned), count_macs(pruned, (x,))
        print(f"| {tool} | {p:,} ({p / p0:.1%}) | {m:,} ({m / m0:.1%}) | {dt:.2f} s | {runs} |")
        out[tool] = pruned
    return out


def speed(models: dict[str, nn.Module], repeats: int) -> None:
    x = torch.randn(32, 3, 224, 224)
    macs = {k: count_macs(m, (x[:1],)) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m(x)  # warm-up
        for _ in range(repeats):  # interleaved: each round times every model once
            for k, m in models.items():
                t = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - t)
    dense = statistics.median(times["dense"])
    print(f"\n## vit_b_16 real speed: batch 32, {torch.get_num_threads()} threads, eager, median of {repeats}\n")
    print("| model | latency | speed-up | MAC reduction | speed-up ÷ MAC reduction |")
    print("|---|---|---|---|---|")
    for k in models:
        t = statistics.median(times[k])
        red = macs["dense"] / macs[k]
        print(f"| {k} | {t:.2f} s | {dense / t:.2f}× | {red:.2f}× | {dense / t / red:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--models", default="vit_b_16,vit_base_patch16_224")
    args = ap.parse_args()
    torch.set_num_threads(2)
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        results[name] = compare(name)
    if not args.skip_speed and "vit_b_16" in results:
        speed(results["vit_b_16"], args.repeats)


if __name__ == "__main__":
    main()
