"""Inference form: folded batch norm and CSR kernels give the same outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
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


def test_onednn_layout_same_outputs_and_plain_modules() -> None:
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = (torch.randn(2, 3, 32, 32),)
    f = for_inference(m, x, layout="onednn")
    assert not any(isinstance(mod, nn.Conv2d | nn.Linear | nn.BatchNorm2d) for mod in f.modules())
    assert not any(isinstance(mod, torch.jit.ScriptModule) for mod in f.modules())  # eager, not TorchScript
    with torch.no_grad():
        y = f(torch.randn(5, 3, 32, 32).clone())  # another batch size than the check's
        assert y.shape == (5, 10) and not y.is_mkldnn
        torch.testing.assert_close(f(*x), m(*x), rtol=1e-4, atol=1e-4)


def test_onednn_layout_refuses_a_model_with_an_op_it_lacks() -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardtanh()).eval()
    with pytest.raises(cuttree.CuttreeError, match=r"layout 'onednn'.*hardtanh.*use layout='channels_last'"):
        for_inference(m, (torch.randn(1, 3, 8, 8),), layout="onednn")
    with pytest.raises(cuttree.CuttreeError, match=r"layout 'onednn'.*as_strided.*use layout='channels_last'"):
        for_inference(resnet20().eval(), (torch.randn(1, 3, 32, 32),), layout="onednn")  # its x[:, :, ::2, ::2]
    with pytest.raises(cuttree.CuttreeError, match=r"layout 'nhwc' is not known: must be one of channels_last, onednn"):
        for_inference(m, (torch.randn(1, 3, 8, 8),), layout="nhwc")
