"""Too large for this machine's memory: refused before trying, naming the size needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cuttree
from cuttree.core import resources
from cuttree.models import resnet20


def test_prune_and_load_refuse_early_when_memory_is_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = (torch.randn(1, 3, 32, 32),)
    r = cuttree.prune(resnet20(), x, cuttree.Config(ratio=0.3, latency_runs=0))
    path = cuttree.save(r, tmp_path / "m.cuttree", arch="cuttree.models:resnet20")
    monkeypatch.setattr(resources, "available_memory", lambda: 100_000)  # 0.1 MB free
    with pytest.raises(
        cuttree.ResourceError,
        match=r"a working copy of the model needs about 1\.0 MiB of memory; this machine has 0\.1 MiB .* inplace=True",
    ):
        cuttree.prune(resnet20(), x, cuttree.Config(ratio=0.3, latency_runs=0))
    with pytest.raises(
        cuttree.ResourceError,
        match=r"loading '.*m\.cuttree' needs about \d\.\d MiB of memory; this machine has 0\.1 MiB",
    ):
        cuttree.load(path)
    monkeypatch.setattr(resources, "available_memory", lambda: None)  # unknown (not Linux): no check
    assert cuttree.load(path) is not None
