"""Unstructured and N:M sparsity: oracles against torch.nn.utils.prune, exact patterns, schedules, files."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.utils.prune as tprune
from safetensors import safe_open
from torch import nn

import cuttree
from cuttree.frontends.torch.sparsity import magnitude_masks, polynomial_sparsity, prunable_layers, scores, strip


def net() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.Flatten(), nn.LazyLinear(10), nn.Linear(10, 4)
    )


def built() -> nn.Module:
    m = net()
    m(torch.randn(1, 8, 6, 6))
    return m


@pytest.mark.parametrize("amount", [0.5, 0.75])
def test_layerwise_l1_masks_equal_torch_prune(amount: float) -> None:
    m = built()
    layers = prunable_layers(m)
    ours = magnitude_masks(scores(layers), ratio=amount)
    for name, mod in layers.items():
        ref = copy.deepcopy(mod)
        tprune.l1_unstructured(ref, "weight", amount=amount)
        assert torch.equal(ours[name], ref.weight_mask.bool()), name


def test_global_l1_masks_equal_torch_prune() -> None:
    m = built()
    layers = prunable_layers(m)
    ours = magnitude_masks(scores(layers), ratio=0.8, scope="global")
    ref = copy.deepcopy(m)
    rl = prunable_layers(ref)
    tprune.global_unstructured([(mod, "weight") for mod in rl.values()], tprune.L1Unstructured, amount=0.8)
    for name, mod in rl.items():
        assert torch.equal(ours[name], mod.weight_mask.bool()), name


def test_output_layer_stays_dense_unless_named() -> None:
    m = built()
    assert "5" not in prunable_layers(m)
    assert "5" in prunable_layers(m, include_output=["5"])


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_pattern_exact(pattern: str) -> None:
    n, mm = (int(v) for v in pattern.split(":"))
    m = built()
    r = cuttree.sparsify(m, cuttree.Config(method="unstructured", nm=pattern))
    for name, mask in r.masks.items():
        rows = mask if mask.dim() == 2 else mask.movedim(1, -1)
        groups = rows.reshape(-1, mm)
        assert (groups.sum(1) == n).all(), name
        w = dict(m.named_modules())[name].weight.detach().abs()
        wr = (w if w.dim() == 2 else w.movedim(1, -1)).reshape(-1, mm)
        kept_min = torch.where(groups, wr, torch.inf).min(1).values
        dropped_max = torch.where(groups, -torch.inf, wr).max(1).values
        assert (kept_min >= dropped_max).all(), name


def test_nm_leaves_a_layer_whose_width_is_not_a_multiple_of_m_dense_with_a_warning() -> None:
    """resnet18's stem takes 3 channels: no run of 4 inputs, so it stays dense; the rest are 2:4."""
    torchvision = pytest.importorskip("torchvision")
    m = torchvision.models.resnet18(num_classes=10)
    with pytest.warns(UserWarning, match=r"kept 1 layer\(s\) dense under nm=2:4: .* not a multiple of 4 \(conv1: 3\)"):
        r = cuttree.sparsify(m, cuttree.Config(method="unstructured", nm="2:4"))
    assert bool(r.masks["conv1"].all())
    assert all(float(mask.float().mean()) == 0.5 for name, mask in r.masks.items() if name != "conv1")


def test_schedule_monotone_and_exact_at_end() -> None:
    vals = [polynomial_sparsity(s, 0.1, 0.8, 100, 1100, 50) for s in range(0, 1500, 7)]
    assert all(b >= a for a, b in itertools.pairwise(vals))
    assert polynomial_sparsity(100, 0.1, 0.8, 100, 1100, 50) == 0.1
    assert polynomial_sparsity(1100, 0.1, 0.8, 100, 1100, 50) == 0.8
    assert polynomial_sparsity(600, 0.0, 0.8, 100, 1100, 1) == pytest.approx(0.8 - 0.8 * 0.5**3)


def test_gradual_schedule_during_finetune_reaches_final() -> None:
    from torch.utils.data import TensorDataset

    from cuttree.frontends.torch.sparsity import gradual
    from cuttree.recover.train import finetune

    m = built()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 8, 6, 6, generator=g), torch.randint(0, 4, (64,), generator=g))
    cfg = cuttree.Config(
        method="unstructured",
        schedule={"initial_sparsity": 0.0, "final_sparsity": 0.75, "begin_step": 0, "end_step": 12, "frequency": 5},
        finetune={"epochs": 2, "batch_size": 8, "checkpoint_every": 0},
    )
    r = cuttree.sparsify(m, cfg, sparsity_now=0.0)
    finetune(r.model, data, cfg, on_step=gradual(r.model, cfg), log=lambda s: None)
    layers = prunable_layers(r.model)
    assert cuttree.frontends.torch.sparsity.sparsity(r.model, layers) == pytest.approx(0.75, abs=1e-3)


def test_masked_model_is_copyable_and_strip_is_exact() -> None:
    m = built()
    x = torch.randn(2, 8, 6, 6)
    r = cuttree.sparsify(m, cuttree.Config(method="unstructured", ratio=0.6))
    twin = copy.deepcopy(r.model)
    assert any("parametrizations.weight.0.mask" in k for k in twin.state_dict())
    with torch.no_grad():
        y = r.model(x)
        stripped = strip(r.model)
        assert torch.equal(stripped(x), y)
    assert not any("parametrizations" in k for k in stripped.state_dict())


def test_compressed_file_round_trip_and_size(tmp_path: Path) -> None:
    from cuttree.models import vgg16_bn_cifar

    m = vgg16_bn_cifar()
    r = cuttree.prune(m, (torch.randn(1, 3, 32, 32),), cuttree.Config(method="unstructured", ratio=0.9, latency_runs=0))
    dense = cuttree.save(
        cuttree.prune(m, (torch.randn(1, 3, 32, 32),), cuttree.Config(ratio=0.0, latency_runs=0)),
        tmp_path / "d.cuttree",
        arch="cuttree.models:vgg16_bn_cifar",
    )
    sparse = cuttree.save(r, tmp_path / "s.cuttree", arch="cuttree.models:vgg16_bn_cifar")
    assert sparse.stat().st_size <= 0.12 * dense.stat().st_size
    loaded = cuttree.load(sparse).state_dict()
    assert loaded.keys() == r.model.state_dict().keys()
    for k, a in r.model.state_dict().items():
        assert torch.equal(a, loaded[k]), k


def test_corrupt_sparse_metadata_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    m = built()
    r = cuttree.prune(m, (torch.randn(1, 8, 6, 6),), cuttree.Config(method="unstructured", ratio=0.9, latency_runs=0))
    good = cuttree.save(r, tmp_path / "s.cuttree", arch="cuttree.models:resnet20")
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    sparse = json.loads(meta["sparse"])
    name = next(iter(sparse))
    sparse[name]["nnz"] += 1
    bad = tmp_path / "bad.cuttree"
    save_file(load_file(str(good)), str(bad), metadata={**meta, "sparse": json.dumps(sparse)})
    with pytest.raises(cuttree.FileFormatError, match="does not match"):
        cuttree.load(bad, build=lambda: built())


def test_unstructured_config_errors() -> None:
    with pytest.raises(ValueError, match="for method: unstructured"):
        cuttree.Config(ratio=0.5, nm="2:4")
    with pytest.raises(ValueError, match="N must be below M"):
        cuttree.Config(method="unstructured", nm="4:4")
    with pytest.raises(ValueError, match="takes l1, l2, wanda"):
        cuttree.Config(method="unstructured", ratio=0.5, criterion="bn_scale")
