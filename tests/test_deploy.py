"""Inference form: folded batch norm and CSR kernels give the same outputs."""

from __future__ import annotations

import torch
from torch import nn

import cuttree
from cuttree.deploy import SparseLinear, choose_sparse_kernels, fold_batchnorm, for_inference
from cuttree.models import resnet20


def test_fold_batchnorm_same_outputs() -> None:
    m = resnet20().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    x = (torch.randn(2, 3, 32, 32),)
    f = fold_batchnorm(m, x)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in f.modules())
    with torch.no_grad():
        torch.testing.assert_close(f(*x), m(*x), rtol=1e-4, atol=1e-4)
        fi = for_inference(m, x)
        torch.testing.assert_close(fi(x[0].to(memory_format=torch.channels_last)), m(*x), rtol=1e-4, atol=1e-4)


def test_sparse_linear_exact_and_choice_keeps_outputs() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4))
    dense = cuttree.strip(cuttree.sparsify(net, cuttree.Config(method="unstructured", ratio=0.95)).model)
    x = torch.randn(8, 64)
    with torch.no_grad():
        torch.testing.assert_close(SparseLinear(dense[0])(x), dense[0](x), rtol=1e-5, atol=1e-5)
        fast, rows = choose_sparse_kernels(dense, (x,), runs=3)
        torch.testing.assert_close(fast(x), dense(x), rtol=1e-5, atol=1e-5)
    assert [r["layer"] for r in rows] == ["0"]  # the output layer is kept dense by sparsify
    assert isinstance(fast[0], SparseLinear) == rows[0]["sparse"]
