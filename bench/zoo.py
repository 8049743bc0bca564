"""Zoo: prune every torchvision classification model at ratio 0.3 in classification mode.

For each model (random weights, 1×3×224×224 input; 299 for Inception-v3): the pruned model must
run, keep its output shape, and have fewer parameters, in eval mode and in training mode too
(batch 2, where auxiliary classifiers run: the same output structure and shapes as the dense
model's). Prints one row per model and the count.

    python bench/zoo.py [--ratio 0.3] [--only resnet18,vit_b_16] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch
import torchvision

import cuttree

SIZES = {"inception_v3": 299}


def shapes(out: object) -> list[tuple[int, ...]]:
    from torch.utils._pytree import tree_flatten

    return [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def run(name: str, ratio: float) -> dict[str, object]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    s = SIZES.get(name, 224)
    x = (torch.randn(1, 3, s, s),)
    row: dict[str, object] = {"model": name}
    t0 = time.perf_counter()
    try:
        r = cuttree.prune(model, x, cuttree.Config(ratio=ratio, latency_runs=0))
        with torch.no_grad():
            y0, y1 = model(*x), r.model.eval()(*x)
            x2 = (torch.randn(2, 3, s, s),)
            t0_, t1_ = shapes(model.train()(*x2)), shapes(r.model.train()(*x2))
        train_ok = t0_ == t1_
        ok = y0.shape == y1.shape and r.after.params < r.before.params and train_ok
        row.update(
            ok=ok,
            train_ok=train_ok,
            params_before=r.before.params,
            params_after=r.after.params,
            macs_before=r.before.macs,
            macs_after=r.after.macs,
            groups=len(r.plan.groups),
            seconds=round(time.perf_counter() - t0, 2),
            engine_seconds=round(r.timings["engine_s"], 2),
            unsupported=r.unsupported_ops,
        )
    except Exception as e:  # the zoo reports every failure and carries on
        row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:200]}", seconds=round(time.perf_counter() - t0, 2))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    names = a.only.split(",") if a.only else torchvision.models.list_models(module=torchvision.models)
    rows = []
    print(
        f"{'model':28s} {'ok':>3s} {'train':>5s} {'params before':>14s} {'after':>12s} {'MACs kept':>9s} "
        f"{'groups':>6s} {'s':>6s}"
    )
    for name in names:
        row = run(name, a.ratio)
        rows.append(row)
        if "error" in row:
            print(f"{name:28s} {'NO':>3s}  {row['error']}", flush=True)
        else:
            kept = row["macs_after"] / row["macs_before"]  # type: ignore[operator]
            print(
                f"{name:28s} {'yes' if row['ok'] else 'NO':>3s} {'yes' if row['train_ok'] else 'NO':>5s} "
                f"{row['params_before']:>14,} {row['params_after']:>12,} "
                f"{kept:>9.1%} {row['groups']:>6} {row['seconds']:>6}",
                flush=True,
            )
        gc.collect()
    n_ok = sum(bool(r["ok"]) for r in rows)
    print(
        f"\n{n_ok}/{len(rows)} models pruned at ratio {a.ratio}: run, same output shape in eval and training mode, "
        "fewer parameters"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
