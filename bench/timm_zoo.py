"""timm zoo: one model from each of timm's model files, pruned at ratio 0.3, checked against the
zeroing oracle.

For each file under ``timm.models`` the registered model with the fewest parameters (counted on
the meta device) is built with random weights at its own input size, pruned in classification
mode, and run beside a copy of the dense model in which every channel the plan removes is zeroed
(:func:`cuttree.frontends.torch.validate.zeroed`). Where removing a channel is exact, the two agree to float
rounding; a model whose norms reduce over a pruned channel stream (LayerNorm, one-group GroupNorm)
differs by design, and the row says which norms do. Prints one row per model and the counts.

    python bench/timm_zoo.py [--ratio 0.3] [--only resnet,vgg] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections import defaultdict
from typing import Any

import torch

import cuttree
from _oracle import EXACT, norms_over_channels, verdict
from cuttree.frontends.torch.validate import zeroed


def smallest_per_file(only: set[str] | None) -> list[tuple[str, str]]:
    """(file, model name) for each timm model file: its registered model with the fewest parameters."""
    import timm
    from timm.models import _registry

    by_file: dict[str, list[str]] = defaultdict(list)
    for name in timm.list_models():
        by_file[_registry._model_to_module[name]].append(name)
    picked = []
    for file, names in sorted(by_file.items()):
        if only and file not in only:
            continue
        best: tuple[int, str] | None = None
        for name in names:
            try:
                with torch.device("meta"):
                    n = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
            except Exception:  # some entry points cannot be built on the meta device: try the next one
                continue
            if best is None or n < best[0]:
                best = (n, name)
        if best is not None:
            picked.append((file, best[1]))
    return picked


def run(file: str, name: str, ratio: float) -> dict[str, Any]:
    import timm

    torch.manual_seed(0)
    row: dict[str, Any] = {"file": file, "model": name}
    t0 = time.perf_counter()
    try:
        model = timm.create_model(name, pretrained=False).eval()
        cfg: dict[str, Any] = getattr(model, "pretrained_cfg", {})
        size = tuple(cfg.get("input_size", (3, 224, 224)))
        x = (torch.randn(1, *size),)
        r = cuttree.prune(model, x, cuttree.Config(ratio=ratio, latency_runs=0))
        with torch.no_grad():
            y0 = model(*x)
            y1 = r.model.eval()(*x)
            yz = zeroed(model, r.plan).eval()(*x)
        scale = float(yz.float().std()) or 1.0
        row.update(
            ok=y0.shape == y1.shape and r.after.params < r.before.params,
            input=list(size),
            params=[r.before.params, r.after.params],
            macs=[r.before.macs, r.after.macs],
            groups=len(r.plan.groups),
            pruned_groups=sum(1 for g in r.plan.groups if g.removed.size),
            oracle_rel=float((y1 - yz).abs().max()) / scale,
            norms_over_pruned=norms_over_channels(model, r.plan),
            unsupported=r.unsupported_ops,
            seconds=round(time.perf_counter() - t0, 1),
        )
    except Exception as e:  # the zoo reports every failure and carries on
        row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:300]}", seconds=round(time.perf_counter() - t0, 1))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--only", default="", help="comma-separated timm model files (resnet,vgg,…)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for file, name in smallest_per_file(set(args.only.split(",")) if args.only else None):
        row = run(file, name, args.ratio)
        rows.append(row)
        if "error" in row:
            print(f"{file:28s} {name:40s} FAILED {row['error']}", flush=True)
        else:
            p0, p1 = row["params"]
            oracle = verdict(row["oracle_rel"], row["norms_over_pruned"])
            print(
                f"{file:28s} {name:40s} {'ok' if row['ok'] else 'NOT OK':6s} params {p1 / p0:6.1%} "
                f"groups {row['pruned_groups']}/{row['groups']} {oracle} {row['seconds']} s",
                flush=True,
            )
        gc.collect()
    ok = sum(bool(r.get("ok")) for r in rows)
    exact = sum(r.get("oracle_rel", 1.0) < EXACT for r in rows)
    print(f"\n{ok}/{len(rows)} pruned and ran; {exact} equal the zeroing oracle (relative max error < 1e-4)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
