"""Engine speed and memory: cuttree vs Torch-Pruning, side by side, each run in a fresh process.

Times trace + plan + apply at ratio 0.5 (L1 magnitude, local, classifier kept) for the
CIFAR-shaped VGG-16-BN, resnet18, resnet50, mobilenet_v2 and vit_b_16 (batch-1 example input),
the median of ``--repeats`` fresh processes per tool and model; and the peak resident-memory
growth during that call, as a multiple of the model's weight bytes (RSS sampled every 0.5 ms).
Model construction and one warm-up forward pass (done for both tools) are not timed.

    python bench/engine_speed.py [--repeats 7] [--models resnet18,vit_b_16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

MODELS = ["vgg16_bn_cifar", "resnet18", "resnet50", "mobilenet_v2", "vit_b_16"]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(name: str):  # type: ignore[no-untyped-def]
    import torch
    import torchvision

    from cuttree.models import vgg16_bn_cifar

    torch.manual_seed(0)
    if name == "vgg16_bn_cifar":
        return vgg16_bn_cifar().eval(), torch.randn(1, 3, 32, 32)
    return torchvision.models.get_model(name, weights=None).eval(), torch.randn(1, 3, 224, 224)


def worker(tool: str, name: str) -> dict[str, float]:
    import torch

    torch.set_num_threads(2)
    model, x = build(name)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    params0 = sum(p.numel() for p in model.parameters())
    if tool == "cuttree":
        import cuttree

        cfg = cuttree.Config(ratio=0.5, latency_runs=0)

        from cuttree.api import plan_and_apply

        def run() -> None:
            plan_and_apply(model, (x,), cfg, inplace=True)
    else:
        import torch_pruning as tp

        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        heads = {m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}

        def run() -> None:
            imp = tp.importance.MagnitudeImportance(p=1)
            pruner = tp.pruner.MetaPruner(
                model, x, importance=imp, pruning_ratio=0.5, ignored_layers=[last], num_heads=heads
            )
            pruner.step()

    # One forward pass first, for both tools: the allocator's and oneDNN's first-run caches belong
    # to running the model at all, not to pruning it.
    with torch.no_grad():
        model(x)
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    run()
    dt = time.perf_counter() - t0
    done.set()
    th.join()
    with torch.no_grad():
        model(x)
    return {
        "seconds": dt,
        "mem_growth_x": (peak[0] - base) / weights,
        "params_kept": sum(p.numel() for p in model.parameters()) / params0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tools", default="cuttree,torch-pruning")
    ap.add_argument("--worker", nargs=2, metavar=("TOOL", "MODEL"))
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker)))
        return
    rows = []
    print(f"{'model':16s} {'tool':14s} {'median s':>9s} {'min s':>7s} {'mem growth':>10s} {'params kept':>11s}")
    for name in a.models.split(","):
        for tool in a.tools.split(","):
            runs: list[dict[str, float]] = []
            for _ in range(a.repeats):
                p = subprocess.run(
                    [sys.executable, __file__, "--worker", tool, name], capture_output=True, text=True, check=False
                )
                if p.returncode != 0:
                    runs = []
                    err = (p.stderr.strip().splitlines() or ["?"])[-1][:100]
                    print(f"{name:16s} {tool:14s} failed: {err}", flush=True)
                    break
                runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
            if not runs:
                rows.append({"model": name, "tool": tool, "failed": True})
                continue
            med = statistics.median(r["seconds"] for r in runs)
            mem = statistics.median(r["mem_growth_x"] for r in runs)
            kept = runs[0]["params_kept"]
            rows.append({"model": name, "tool": tool, "median_s": med, "mem_growth_x": mem, "params_kept": kept})
            print(
                f"{name:16s} {tool:14s} {med:9.3f} {min(r['seconds'] for r in runs):7.3f} {mem:9.2f}× {kept:11.1%}",
                flush=True,
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
