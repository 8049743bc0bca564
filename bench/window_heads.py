"""Window, grid and rotary attention lose whole heads: torchvision Swin / Swin V2 / MaxViT and timm
Swin / EVA-02 / LeViT at ratio 0.5 (L1, local, classifier kept, random weights, 224×224, batch 1).

For each model: heads per attention module before → after, parameters and MACs kept, whether the
pruned model runs in eval and in train mode with the output shape of the dense model, and the
engine time (trace + plan + numeric head check + apply).

    python bench/window_heads.py [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import Counter

import timm
import torch
import torchvision

import cuttree

MODELS = [
    ("torchvision", "swin_t"),
    ("torchvision", "swin_v2_t"),
    ("torchvision", "maxvit_t"),
    ("timm", "swin_tiny_patch4_window7_224"),
    ("timm", "eva02_tiny_patch14_224"),
    ("timm", "levit_128s"),
]


def build(source: str, name: str) -> torch.nn.Module:
    if source == "torchvision":
        return torchvision.models.get_model(name, weights=None).eval()
    return timm.create_model(name, pretrained=False).eval()


def heads(plan: cuttree.PruningPlan) -> str:
    """'3→2 ×4, 6→3 ×2': head groups by their count before and after."""
    c = Counter((g.size, len(g.keep)) for g in plan.groups if g.unit == "heads")
    return ", ".join(f"{a}→{b} ×{n}" for (a, b), n in sorted(c.items())) or "none"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"ratio {args.ratio}, L1, local, classifier kept; 224×224, batch 1, 2 threads\n")
    print(
        "| model | heads (before→after × modules) | parameters kept | MACs kept | eval / train | engine time | warnings |"
    )
    print("|---|---|---|---|---|---|---|")
    for source, name in MODELS:
        torch.manual_seed(0)
        model = build(source, name)
        x = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            want = tuple(model(x).shape)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            r = cuttree.prune(model, (x,), cuttree.Config(ratio=args.ratio, latency_runs=0))
            seconds = time.perf_counter() - t0
        with torch.no_grad():
            ok_eval = tuple(r.model.eval()(x).shape) == want
            ok_train = tuple(r.model.train()(torch.randn(2, 3, 224, 224)).shape) == (2, *want[1:])
        print(
            f"| {source} `{name}` | {heads(r.plan)} | {r.after.params:,} ({r.after.params / r.before.params:.1%}) "
            f"| {r.after.macs / r.before.macs:.1%} | {'yes' if ok_eval else 'NO'} / {'yes' if ok_train else 'NO'} "
            f"| {seconds:.2f} s | {len(caught)} |",
            flush=True,
        )
        del model, r


if __name__ == "__main__":
    main()
