"""File size of a sparse model: cuttree's compressed file side by side with the alternatives.

The CIFAR-shaped VGG-16-BN (random init, seed 0) at 50% and 90% global magnitude sparsity of its
Conv/Linear weights (the classifier kept dense), stored as: the dense safetensors file; what
``torch.nn.utils.prune`` leaves (``torch.save`` of the state dict: weights and masks); gzip -9 of
the zeroed dense safetensors file; a plain bitmask + non-zero values; cuttree's ``.cuttree``.

    python bench/file_size.py
"""

from __future__ import annotations

import gzip
import io as pyio
import tempfile
from pathlib import Path

import torch
import torch.nn.utils.prune as tprune
from safetensors.torch import save

import cuttree
from cuttree.frontends.torch.sparsity import prunable_layers
from cuttree.frontends.torch.util import state_dict_for_save
from cuttree.models import vgg16_bn_cifar


def main() -> None:
    torch.manual_seed(0)
    x = (torch.randn(1, 3, 32, 32),)
    dense_model = vgg16_bn_cifar()
    dense = len(save(state_dict_for_save(dense_model)))
    print(f"dense safetensors: {dense / 1e6:.1f} MB")
    print(f"{'sparsity':>8s} {'torch prune':>12s} {'gzip -9':>14s} {'bitmask+values':>15s} {'cuttree':>15s}")
    with tempfile.TemporaryDirectory() as tmp:
        for s in (0.5, 0.9):
            ref = vgg16_bn_cifar()
            ref.load_state_dict(dense_model.state_dict())
            layers = prunable_layers(ref)
            tprune.global_unstructured([(m, "weight") for m in layers.values()], tprune.L1Unstructured, amount=s)
            buf = pyio.BytesIO()
            torch.save(ref.state_dict(), buf)
            tp_size = buf.getbuffer().nbytes
            cfg = cuttree.Config(method="unstructured", ratio=s, scope="global", latency_runs=0)
            r = cuttree.prune(dense_model, x, cfg)
            zeroed = save(state_dict_for_save(r.model))
            gz = len(gzip.compress(zeroed, 9))
            plain = 0
            for v in state_dict_for_save(r.model).values():
                nz = int((v != 0).sum())
                dense_bytes = v.numel() * v.element_size()
                sparse_bytes = (v.numel() + 7) // 8 + nz * v.element_size()
                plain += min(dense_bytes, sparse_bytes)
            path = cuttree.save(r, Path(tmp) / f"s{s}.cuttree", arch="cuttree.models:vgg16_bn_cifar")
            ct = path.stat().st_size
            loaded = cuttree.load(path).state_dict()
            exact = all(torch.equal(v, loaded[k]) for k, v in r.model.state_dict().items())

            def pct(b: int) -> str:
                return f"{b / 1e6:6.1f} MB {b / dense:4.0%}"

            print(
                f"{s:8.0%} {tp_size / 1e6:9.1f} MB {pct(gz):>14s} {pct(plain):>15s} {pct(ct):>15s}"
                f"   (cuttree reloads exactly: {exact}; target ≤ {12 if s == 0.9 else 55}%)"
            )


if __name__ == "__main__":
    main()
