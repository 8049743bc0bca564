"""A latency budget met on this machine: ``latency_target: {fraction: 0.6, batch: 32}``.

For the CIFAR-shaped VGG-16-BN (32×32) and torchvision resnet50 (224×224), random weights, in
torch eager and in ONNX Runtime (the exported deploy form), 2 threads: the budget is
``--fraction`` of the dense latency at batch 32, and ``cuttree.prune`` searches the MACs that
meet it by measuring candidates. Then, independently of the search, the dense and the pruned
model are timed again interleaved (``--runs``) and the result is compared with the budget:
met within 5% means the pruned model's median is within 5% of ``fraction`` × the dense median
of that same loop. (Milliseconds measured at different moments are not compared: this shared
machine's speed moves by more than 5% between loops.) Printed per model and runtime: dense and
pruned milliseconds, the fraction reached, the plan's own figure, MACs kept, rounds of the
search, wall time.

    python bench/latency_target.py [--fraction 0.6] [--runs 9] [--models vgg16_bn_cifar,resnet50]
"""

from __future__ import annotations

import argparse
import time

import torch

import cuttree
from _build import build
from cuttree.core.timing import interleaved
from cuttree.deploy import keep_freed_memory
from cuttree.frontends.torch.latency_budget import timers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fraction", type=float, default=0.6)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--models", default="vgg16_bn_cifar,resnet50")
    ap.add_argument("--runtimes", default="eager,onnxruntime")
    a = ap.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()
    rows = []
    for name in a.models.split(","):
        for runtime in a.runtimes.split(","):
            model, size = build(name)
            x1 = (torch.randn(1, 3, size, size),)
            xb = [torch.randn(32, 3, size, size)]
            cfg = cuttree.Config(
                latency_target={"fraction": a.fraction, "batch": 32, "runtime": runtime}, latency_runs=a.runs
            )
            t0 = time.perf_counter()
            r = cuttree.prune(model, x1, cfg)
            wall = time.perf_counter() - t0
            d, p = interleaved(timers([model, r.model], xb, runtime), a.runs, warmup=2)
            b = r.plan.budget
            got = p.median_ms / d.median_ms
            met = abs(got / a.fraction - 1) <= 0.05
            rows.append((name, runtime, d.median_ms, p.median_ms, got, b["latency_fraction"], r.after.macs / r.before.macs,
                         len(b["rounds"]), b.get("rounding", {}).get("kept", False), wall, met, got / a.fraction - 1))  # fmt: skip
            print(f"{name} {runtime}: done in {wall:.0f} s", flush=True)
    print(f"\nbatch 32, 2 threads, budget {a.fraction:g} × the dense latency; re-measured after the search, "
          f"interleaved with the dense model, median of {a.runs}\n")  # fmt: skip
    print(
        "| model | runtime | dense | pruned | pruned ÷ dense | plan's figure | vs budget | MACs kept | rounds | rounded (auto) | search wall | met within 5% |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, rt, dms, pms, got, pf, mk, rounds, r8, wall, met, off in rows:
        print(f"| {n} | {rt} | {dms:.1f} ms | {pms:.1f} ms | {got:.3f} | {pf:.3f} | {off:+.1%} | {mk:.1%} | {rounds} | "
              f"{'yes' if r8 else 'no'} | {wall:.0f} s | {'yes' if met else 'NO'} |")  # fmt: skip


if __name__ == "__main__":
    main()
