"""Does a default plan turn MACs into speed in ONNX Runtime? Speed-up ÷ MAC reduction at batch 32.

For VGG-16-BN (CIFAR-shaped, 32×32), resnet18, resnet50 and mobilenet_v2 (torchvision,
224×224), random weights, pruned with the defaults at ``--ratios`` (L1, local; ``--round-to`` to
override the default rounding, ``--layers`` to add per-layer overrides as JSON), each exported
with ``cuttree.export_onnx`` (the deploy form: BN folded) next to the dense model exported the
same way, then timed in ONNX Runtime (2 intra-op threads) interleaved in one loop after the same
warm-up, median of ``--runs``; the same pair also in torch eager. Target: speed-up ÷ MAC
reduction ≥ 0.9.

    python bench/onnx_speed.py [--ratios 0.3,0.5] [--runs 7] [--models vgg16_bn_cifar,resnet18,resnet50,mobilenet_v2]
        [--round-to 8] [--layers '{"features.2.conv.2": {"ratio": 0}}'] [--eager]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

import cuttree
from _build import build
from cuttree.core.timing import interleaved
from cuttree.deploy import keep_freed_memory
from cuttree.files.onnx import export_onnx
from cuttree.frontends.torch.latency_budget import session_timer, timers
from cuttree.frontends.torch.measure import count_macs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--round-to", type=int, default=None, help="override the default round_to")
    ap.add_argument("--layers", default="{}", help="per-layer overrides, JSON (Config.layers)")
    ap.add_argument("--models", default="vgg16_bn_cifar,resnet18,resnet50,mobilenet_v2")
    ap.add_argument("--eager", action="store_true", help="also time torch eager")
    a = ap.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()
    rows = []
    for name in a.models.split(","):
        for ratio in (float(r) for r in a.ratios.split(",")):
            dense, size = build(name)
            x1 = (torch.randn(1, 3, size, size),)
            xb = torch.randn(32, 3, size, size)
            kw: dict[str, Any] = {"layers": json.loads(a.layers)}
            if a.round_to:
                kw["round_to"] = a.round_to
            pruned = cuttree.prune(dense, x1, cuttree.Config(ratio=ratio, latency_runs=0, **kw)).model
            mac_red = count_macs(dense, (xb,)) / count_macs(pruned, (xb,))
            with tempfile.TemporaryDirectory() as d:
                pd, pp = Path(d) / "dense.onnx", Path(d) / "pruned.onnx"
                export_onnx(dense, x1, pd)
                export_onnx(pruned, x1, pp)
                td, tp = interleaved([session_timer(str(pd), [xb]), session_timer(str(pp), [xb])], a.runs, warmup=2)
            row = [name, ratio, mac_red, td.median_ms, tp.median_ms]
            if a.eager:
                ed, ep = interleaved(timers([dense, pruned], [xb], "eager"), a.runs, warmup=2)
                row += [ed.median_ms, ep.median_ms]
            rows.append(row)
            print(f"{name} {ratio}: done", flush=True)
    rt = a.round_to or cuttree.Config(ratio=0.5).round_to
    extra = f", layers {a.layers}" if a.layers != "{}" else ""
    print(f"\nbatch 32, 2 threads, default plan (L1, local, round_to {rt}{extra}); ONNX Runtime {ort_version()}, "
          f"median of {a.runs}, dense and pruned interleaved\n")  # fmt: skip
    head = "| model | ratio | MAC reduction | ORT dense | ORT pruned | ORT speed-up | ORT speed-up ÷ MACs |"
    if a.eager:
        head += " eager dense | eager pruned | eager speed-up ÷ MACs |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        su = r[3] / r[4]
        line = f"| {r[0]} | {r[1]:g} | {r[2]:.2f}× | {r[3]:.1f} ms | {r[4]:.1f} ms | {su:.2f}× | **{su / r[2]:.2f}** |"
        if a.eager:
            line += f" {r[5]:.1f} ms | {r[6]:.1f} ms | {r[5] / r[6] / r[2]:.2f} |"
        print(line)


def ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


if __name__ == "__main__":
    main()
