"""The device path: planning, fine-tuning, timing and checkpoints wherever the model lives.

Without a GPU in CI, the model runs on a stand-in device (:mod:`standin_device`) whose tensors
refuse ``.numpy()`` and refuse to be mixed with CPU tensors, as CUDA's do.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import tiny
from torch import nn
from torch.utils.data import TensorDataset

import cuttree
from cuttree.config import FinetuneConfig
from cuttree.core.importance import REGISTRY, scorer
from cuttree.frontends.torch.measure import latency_ms
from cuttree.models import resnet20
from cuttree.recover import rng
from cuttree.recover.checkpoints import read_checkpoint
from cuttree.recover.devices import Precision
from cuttree.recover.job import run_job
from cuttree.recover.train import finetune
from standin_device import DEVICE, Backend

ROOT = Path(__file__).resolve().parents[2]
X = (torch.randn(2, 3, 32, 32),)


def data(n: int = 48) -> TensorDataset:
    g = torch.Generator().manual_seed(5)
    return TensorDataset(
        torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 4, (n,), generator=g)
    )  # 4: what test_train's tiny() predicts


def calib(device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.to(device), y.to(device)) for x, y in torch.utils.data.DataLoader(data(32), batch_size=16)]


def cfg(criterion: str = "l1", **kw: Any) -> cuttree.Config:
    return cuttree.Config(ratio=0.5, criterion=criterion, min_samples=16, calib_samples=32, latency_runs=0, **kw)


STRUCTURED = ["activation", "bn_scale", "flap", "l1", "l2", "obs", "random", "taylor", "wanda"]


def test_every_criterion_is_registered_and_tested_here() -> None:
    assert sorted(n for n, c in REGISTRY.items() if c.structured) == STRUCTURED


@pytest.mark.parametrize("name", STRUCTURED)
def test_criteria_are_handed_numpy_arrays_only(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = scorer(name)

    def checked(group: Any, weights: Any, extra: Any, seed: int) -> np.ndarray:
        for k, v in [*weights.items(), *extra.items()]:
            if not isinstance(v, np.ndarray):
                raise AssertionError(f"criterion {name} was handed {type(v).__name__} for {k}")
        seen.append(group.name)
        return real(group, weights, extra, seed)

    monkeypatch.setitem(REGISTRY, name, dataclasses.replace(REGISTRY[name], fn=checked))
    _, graph = cuttree.make_plan(resnet20().to(DEVICE), tuple(x.to(DEVICE) for x in X), cfg(name), calib(DEVICE))
    assert len(seen) == len(graph.groups) > 0


def test_numpy_conversion_happens_in_one_helper() -> None:
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in sorted((ROOT / "src").rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if ".numpy()" in line
    ]
    assert hits == [
        "src/cuttree/frontends/torch/util.py:"
        + str(_line_of("src/cuttree/frontends/torch/util.py", "return x.cpu().numpy()"))
    ]


def _line_of(path: str, text: str) -> int:
    return next(i for i, line in enumerate((ROOT / path).read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize("name", STRUCTURED)
def test_a_model_on_another_device_plans_exactly_like_on_the_cpu(name: str) -> None:
    model = resnet20()
    on_cpu, _ = cuttree.make_plan(model, X, cfg(name), calib())
    dev = copy.deepcopy(model).to(DEVICE)
    on_dev, _ = cuttree.make_plan(dev, tuple(x.to(DEVICE) for x in X), cfg(name), calib(DEVICE))
    assert [g.keep for g in on_dev.groups] == [g.keep for g in on_cpu.groups]


@pytest.mark.parametrize("extra", [{}, {"criterion": "taylor"}, {"reconstruct": True}])
def test_the_whole_job_runs_on_another_device_with_cpu_data(tmp_path: Path, extra: dict[str, Any]) -> None:
    c = cuttree.Config(
        ratio=0.5, min_samples=32, calib_samples=32, latency_runs=2,
        finetune={"epochs": 0.5, "batch_size": 16, "distill": 0.5}, **extra,
    )  # fmt: skip
    report = run_job(
        resnet20().to(DEVICE), (X[0].to(DEVICE),), c, data(), data(), tmp_path, "cuttree.models:resnet20",
        log=lambda m: None,
    )  # fmt: skip
    assert report["after"]["macs"] < report["before"]["macs"]
    assert all(p.device == DEVICE for p in report["model"].parameters())
    loaded = cuttree.load(tmp_path / "model.cuttree")
    for a, b in zip(loaded.state_dict().values(), report["model"].state_dict().values(), strict=True):
        assert torch.equal(a, b.cpu())


def test_unstructured_sparsity_on_another_device() -> None:
    m = resnet20().to(DEVICE)
    r = cuttree.sparsify(m, cuttree.Config(method="unstructured", ratio=0.5, criterion="wanda", min_samples=16),
                         calib_data=[torch.randn(16, 3, 32, 32)])  # fmt: skip
    assert r.sparsity == pytest.approx(0.5, abs=1e-3)
    assert all(mask.device == DEVICE for mask in r.masks.values())


def test_timing_waits_for_the_device() -> None:
    m = resnet20().to(DEVICE)
    before = Backend.synchronized
    latency_ms(m, (X[0].to(DEVICE),), runs=5, warmup=2)
    assert Backend.synchronized - before >= 5 + 1  # after each timed pass, and once after the warm-up
    from cuttree.deploy import median_ms

    before = Backend.synchronized
    median_ms(lambda: m(X[0].to(DEVICE)), runs=4, device=DEVICE)
    assert Backend.synchronized - before >= 4 + 1


def test_timing_on_the_cpu_needs_no_device() -> None:
    before = Backend.synchronized
    latency_ms(resnet20(), X, runs=2, warmup=1)
    assert Backend.synchronized == before


AMPS = list(FinetuneConfig.model_fields["amp"].annotation.__args__)  # type: ignore[union-attr]


@pytest.mark.parametrize("amp", AMPS)
@pytest.mark.parametrize("device", [torch.device("cpu"), DEVICE])
def test_float16_never_runs_without_a_scaler(amp: str, device: torch.device) -> None:
    p = Precision(amp, device)
    assert (p.dtype is torch.float16) == (p.scaler is not None)
    assert p.dtype in (None, torch.float16, torch.bfloat16)


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="must be auto, off, bf16 or fp16"):
        Precision("fp8", torch.device("cpu"))


class Noisy(TensorDataset):
    """A dataset that augments with Python's, numpy's and its own torch generator."""

    def __init__(self) -> None:
        super().__init__(*data(32).tensors)
        self.generator = torch.Generator().manual_seed(11)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().__getitem__(i)
        noise = random.random() + float(np.random.rand()) + float(torch.rand(1, generator=self.generator))
        return x + noise + torch.rand(1), y


def _ft(**kw: Any) -> cuttree.Config:
    return cuttree.Config(ratio=0.0, finetune={"epochs": 2, "batch_size": 8, "checkpoint_every": 1, **kw})


@pytest.mark.parametrize(("device", "amp"), [("cpu", "fp16"), ("cpu", "off"), (DEVICE, "off")])
def test_resume_after_kill_equals_uninterrupted(tmp_path: Path, device: torch.device | str, amp: str) -> None:
    def fresh() -> nn.Module:
        return tiny().to(device)

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    full = fresh()
    finetune(full, Noisy(), _ft(amp=amp, keep_best=False), run_dir=tmp_path / "a", log=lambda m: None)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    killed = fresh()
    s = finetune(
        killed, Noisy(), _ft(amp=amp, keep_best=False), run_dir=tmp_path / "b", max_steps=3, log=lambda m: None
    )
    assert s["step"] == 3 < s["total"] == 6  # 3 of the 32 samples held out to validate on: 29 in 3 steps of 8
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # a new process: every RNG comes from the checkpoint
    resumed = fresh()
    finetune(resumed, Noisy(), _ft(amp=amp, keep_best=False), run_dir=tmp_path / "b", resume=True, log=lambda m: None)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b.cpu()), k
    meta, _ = read_checkpoint(tmp_path / "b" / "checkpoint.safetensors")
    assert bool(meta["scaler"]) == (amp == "fp16")
    if amp == "fp16":
        assert meta["scaler"]["scale"] > 0


def test_a_checkpoint_restores_every_rng_it_records(tmp_path: Path) -> None:
    ds = Noisy()
    random.seed(4), np.random.seed(4), torch.manual_seed(4)
    finetune(tiny(), ds, _ft(epochs=0.25), run_dir=tmp_path, log=lambda m: None)
    saved = {k: v for k, v in load_file(str(tmp_path / "checkpoint.safetensors")).items() if k.startswith("rng.")}
    assert set(saved) == {"rng.torch", "rng.python", "rng.python_gauss", "rng.numpy", "rng.numpy_gauss", "rng.data"}

    def draws() -> list[float]:
        return [random.gauss(0, 1), float(np.random.randn()), float(torch.rand(1)),
                float(torch.rand(1, generator=ds.generator))]  # fmt: skip

    rng.restore(saved, torch.device("cpu"), ds)
    first = draws()
    rng.restore(saved, torch.device("cpu"), ds)
    assert draws() == first
    assert rng.capture(torch.device("cpu"), ds).keys() == saved.keys()


def test_resume_with_another_data_order_is_refused(tmp_path: Path) -> None:
    finetune(tiny(), data(32), _ft(), run_dir=tmp_path, max_steps=2, log=lambda m: None)
    other = cuttree.Config(ratio=0.0, seed=7, finetune={"epochs": 2, "batch_size": 8, "checkpoint_every": 1})
    with pytest.raises(ValueError, match=re.escape("the checkpoint's data order is {'seed': 0")):
        finetune(tiny(), data(32), other, run_dir=tmp_path, resume=True, log=lambda m: None)


def test_onednn_layout_is_refused_off_the_cpu() -> None:
    from cuttree.deploy import for_inference

    with pytest.raises(cuttree.CuttreeError, match="layout 'onednn' is for CPU inference"):
        for_inference(tiny().to(DEVICE), (X[0][:, :, :8, :8].to(DEVICE),), layout="onednn")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = cuttree.prune(resnet20(), X, cuttree.Config(ratio=0.5, latency_runs=0))
    p = cuttree.save(r, tmp_path / "m.cuttree", arch="cuttree.models:resnet20")
    for device in ("cuda", "gpu0"):
        out = subprocess.run(
            [sys.executable, "-m", "cuttree.cli", "eval", str(p), "--data", "digits", "--device", device],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert f"--device {device}" in out.stderr or f"--device '{device}'" in out.stderr


def test_the_readme_gpu_recipe_is_the_command_gpu_check_runs() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    command = " ".join(gpu_check.run_command("../shared/data", "runs/resnet56_gpu"))
    assert command in (ROOT / "README.md").read_text()
    assert command in (ROOT / gpu_check.RECIPE).read_text()
    recipe = cuttree.Config.from_yaml(ROOT / gpu_check.RECIPE)
    assert (recipe.macs_target, recipe.finetune.epochs, recipe.finetune.amp) == (0.5, 1.0, "auto")


def test_finetune_takes_a_recipe_whatever_its_target() -> None:
    import argparse

    from cuttree.cli.common import config_from as _config

    args = argparse.Namespace(set=["finetune.epochs=2"], config=str(ROOT / "recipes" / "resnet56_gpu.yaml"))
    c = _config(args, need_target=False)
    assert (c.macs_target, c.ratio, c.finetune.epochs, c.finetune.distill) == (None, 0.0, 2.0, 0.5)


def test_amp_off_written_as_yaml_means_off() -> None:
    from cuttree.config import parse_set

    assert cuttree.Config(ratio=0.1, **parse_set(["finetune.amp=off"])).finetune.amp == "off"
