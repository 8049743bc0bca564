"""Real speed: does the MAC reduction turn into CPU latency?

Prunes the CIFAR-shaped VGG-16-BN (32×32) and resnet50 (224×224) to 50% of their channels
(ratio 0.5, L1, local), then times dense and pruned forward passes at batch 32 in torch eager
mode with 2 threads, interleaved (dense, pruned, dense, …) so both see the same machine state;
prints the median latencies, the speed-up, the MAC reduction and their ratio (target ≥ 0.9),
for two forms of both models: as they are ("plain") and in inference form ("deploy": batch norm
folded into the convs and channels-last layout, ``cuttree.deploy.for_inference``, applied to the
dense and the pruned model alike), and the same with oneDNN layout ("onednn": weights pre-packed
once, activations kept in oneDNN's blocked format from input to output, still eager;
``for_inference(..., layout="onednn")``). Unless ``--default-allocator`` is given, glibc is first told to
keep freed memory (``cuttree.deploy.keep_freed_memory``: no fresh, page-faulted ``mmap`` for every
large activation), which makes both models faster and the timings far steadier.

    python bench/latency.py [--runs 7] [--round-to 1] [--models vgg16_bn_cifar,resnet50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torchvision

import cuttree
from cuttree.deploy import for_inference, keep_freed_memory
from cuttree.models import vgg16_bn_cifar


def build(name: str) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    if name == "vgg16_bn_cifar":
        return vgg16_bn_cifar().eval(), 32
    return torchvision.models.get_model(name, weights=None).eval(), 224


def timed(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(x)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--round-to", type=int, default=1)
    ap.add_argument("--models", default="vgg16_bn_cifar,resnet50")
    ap.add_argument("--default-allocator", action="store_true", help="leave glibc's malloc settings alone")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kept = False if a.default_allocator else keep_freed_memory()
    rows = []
    print(
        f"torch {torch.__version__}, {a.threads} threads, batch {a.batch}, eager, round_to {a.round_to}, "
        f"allocator: {'freed memory kept' if kept else 'default'}"
    )
    print(f"{'model':16s} {'form':7s} {'dense ms':>9s} {'pruned ms':>9s} {'speed-up':>8s} {'MACs ÷':>7s} {'ratio':>6s}")
    for name in a.models.split(","):
        model, size = build(name)
        cfg = cuttree.Config(ratio=0.5, round_to=a.round_to, latency_runs=0)
        r = cuttree.prune(model, (torch.randn(1, 3, size, size),), cfg)
        x = torch.randn(a.batch, 3, size, size)
        x1 = (torch.randn(1, 3, size, size),)
        forms = {
            "plain": (model, r.model.eval(), x),
            "deploy": (for_inference(model, x1), for_inference(r.model, x1), x.to(memory_format=torch.channels_last)),
            "onednn": (for_inference(model, x1, "onednn"), for_inference(r.model, x1, "onednn"), x),
        }
        for form, (dense, pruned, xx) in forms.items():
            for _ in range(a.warmup):
                timed(dense, xx), timed(pruned, xx)
            dense_t, pruned_t = [], []
            for _ in range(a.runs):
                dense_t.append(timed(dense, xx))
                pruned_t.append(timed(pruned, xx))
            d, p = statistics.median(dense_t) * 1e3, statistics.median(pruned_t) * 1e3
            speedup, mac_red = d / p, r.before.macs / r.after.macs
            rows.append(
                {
                    "model": name,
                    "form": form,
                    "dense_ms": d,
                    "pruned_ms": p,
                    "speedup": speedup,
                    "mac_reduction": mac_red,
                    "ratio": speedup / mac_red,
                }
            )
            print(
                f"{name:16s} {form:7s} {d:9.1f} {p:9.1f} {speedup:7.2f}× {mac_red:6.2f}× {speedup / mac_red:6.2f}",
                flush=True,
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
