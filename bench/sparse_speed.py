"""Sparse kernels, honestly: dense vs torch sparse CSR latency for Linear layers on this CPU.

For a grid of Linear shapes (a ViT-B MLP and attention projection, a classifier head) and
sparsities (50–99%), ``cuttree.deploy.choose_sparse_kernels`` times the dense and the CSR layer
on the layer's real input and keeps CSR only where it was faster. Then, independently, the chosen
layer and the dense layer are timed again (median of 30, interleaved); a pick is "slower" when
that second measurement shows the chosen kernel losing by more than 5%.

    python bench/sparse_speed.py
"""

from __future__ import annotations

import torch
from torch import nn

import cuttree
from cuttree.deploy import choose_sparse_kernels, median_ms

SHAPES = [(768, 3072, 197), (3072, 768, 197), (768, 768, 197), (4096, 4096, 1), (512, 1000, 32)]


def main() -> None:
    torch.set_num_threads(2)
    print(
        f"{'in→out':>11s} {'rows':>5s} {'sparsity':>8s} {'dense ms':>9s} {'CSR ms':>8s} {'chosen':>7s} {'re-timed':>9s} {'slower':>6s}"
    )
    bad = 0
    for fin, fout, rows in SHAPES:
        for s in (0.5, 0.8, 0.9, 0.95, 0.99):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(fin, fout), nn.Linear(fout, 4))
            r = cuttree.sparsify(model, cuttree.Config(method="unstructured", ratio=s))
            dense = cuttree.strip(r.model)
            x = (torch.randn(rows, fin),)
            fast, meas = choose_sparse_kernels(dense, x)
            m = meas[0]
            # an independent second timing of the chosen layer against the dense one
            d2 = median_ms(lambda dense=dense, x=x: dense[0](x[0]), 30)
            c2 = median_ms(lambda fast=fast, x=x: fast[0](x[0]), 30)
            wrong = c2 > 1.05 * d2
            bad += wrong
            print(
                f"{fin:>5d}→{fout:<5d} {rows:>5d} {s:>8.0%} {m['dense_ms']:9.3f} {m['sparse_ms']:8.3f} "
                f"{'CSR' if m['sparse'] else 'dense':>7s} {c2 / d2:8.2f}× {'YES' if wrong else 'no':>6s}",
                flush=True,
            )
            with torch.no_grad():
                torch.testing.assert_close(fast(*x), dense(*x), rtol=1e-4, atol=1e-4)
    print(f"\nchosen kernel slower than dense on re-timing (> 5%): {bad} times")


if __name__ == "__main__":
    main()
