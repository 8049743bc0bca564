"""Jobs run in a child process and SIGKILLed at random moments by ``test_kill_points.py``.

They live in a module of their own so that a ``forkserver`` child can import them by name; the
forkserver imports torch and cuttree once and forks each child from there in milliseconds,
instead of paying a fresh interpreter's start for every kill point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

import cuttree
from cuttree.files.cuttree_file import read_metadata
from cuttree.recover.train import finetune

ARCH = "cuttree.models:resnet20"


def save_forever(files: list[str], path: str, ready: Any) -> None:
    """Load the given ``.cuttree`` files, then save them to ``path`` in turn until killed."""
    torch.set_num_threads(1)
    models = [(cuttree.load(f), read_metadata(f)["plan"]) for f in files]
    ready.set()
    i = 0
    while True:
        model, plan = models[i % len(models)]
        cuttree.save(model, path, arch=ARCH, plan=plan)
        i += 1


def net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(5)
    return TensorDataset(torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g))


def config(steps: int) -> cuttree.Config:
    return cuttree.Config(ratio=0.0, finetune={"epochs": steps / 4, "batch_size": 8, "checkpoint_every": 1})


def train(run_dir: str, steps: int, ready: Any) -> None:
    """Fine-tune :func:`net` for ``steps`` steps, resuming from ``run_dir``'s checkpoint if there
    is one; the final weights go to ``run_dir/final.safetensors``."""
    torch.set_num_threads(1)
    model = net()
    resume = (Path(run_dir) / "checkpoint.safetensors").is_file()
    ready.set()
    finetune(model, data(), config(steps), run_dir=run_dir, resume=resume, log=lambda m: None)
    save_file(model.state_dict(), str(Path(run_dir) / "final.safetensors"))
