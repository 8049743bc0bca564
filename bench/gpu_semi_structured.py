"""2:4 semi-structured sparsity on an NVIDIA GPU: dense vs ``torch.sparse.to_sparse_semi_structured``.

For Linear shapes of a ViT-B block and a large square layer, at batch × tokens rows, fp16:
masks each weight 2:4 with cuttree (``nm: "2:4"``), converts it with
``to_sparse_semi_structured`` and times dense vs sparse matmul (CUDA events, median of 50 after
10 warm-ups), checking the outputs agree. Needs an Ampere-or-newer GPU; on a machine without
CUDA it says so and exits 0 (nothing measured).

    python bench/gpu_semi_structured.py [--rows 3152]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from torch import nn

import cuttree

SHAPES = [(768, 3072), (3072, 768), (768, 2304), (4096, 4096)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=16 * 197)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured (run this on a GPU machine)")
        sys.exit(0)
    from torch.sparse import to_sparse_semi_structured

    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, fp16, {a.rows} rows")
    print(f"{'in→out':>11s} {'dense ms':>9s} {'2:4 ms':>8s} {'speed-up':>8s} {'max |diff|':>10s}")
    for fin, fout in SHAPES:
        torch.manual_seed(0)
        lin = nn.Linear(fin, fout, bias=False)
        r = cuttree.sparsify(nn.Sequential(lin, nn.Linear(fout, 2)), cuttree.Config(method="unstructured", nm="2:4"))
        first = cuttree.strip(r.model)[0]  # type: ignore[index]
        w = first.weight.detach().half().to(dev)
        x = torch.randn(a.rows, fin, device=dev, dtype=torch.half)
        ws = to_sparse_semi_structured(w)

        def timed(fn) -> float:  # type: ignore[no-untyped-def]
            for _ in range(10):
                fn()
            ts = []
            for _ in range(50):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                torch.cuda.synchronize()
                ts.append(s.elapsed_time(e))
            return statistics.median(ts)

        d = timed(lambda x=x, w=w: torch.mm(x, w.t()))
        sp = timed(lambda x=x, ws=ws: torch.mm(ws, x.t()))
        diff = (torch.mm(ws, x.t()).t() - torch.mm(x, w.t())).abs().max().item()
        print(f"{fin:>5d}→{fout:<5d} {d:9.3f} {sp:8.3f} {d / sp:7.2f}× {diff:10.3g}", flush=True)


if __name__ == "__main__":
    main()
