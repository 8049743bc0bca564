"""Every random generator a training run draws from, captured as tensors and restored.

A resumed fine-tune must draw the same dropout masks and augmentations as an uninterrupted one,
so a checkpoint holds: torch's CPU generator (``rng.torch``), the CUDA generator of the model's
device (``rng.cuda``), Python's ``random`` (``rng.python``) and numpy's global generator
(``rng.numpy``), which user datasets often use, and the training data's own ``generator``
(``rng.data``, a ``torch.Generator`` attribute, as cuttree's loaders have). The data *order* needs
no state: it is a pure function of the seed and the epoch (:mod:`cuttree.recover.train`).

>>> import torch
>>> saved = capture(torch.device("cpu"))
>>> a = torch.rand(3)
>>> restore(saved, torch.device("cpu"))
>>> torch.equal(torch.rand(3), a)
True
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from cuttree.frontends.torch.util import to_numpy


def capture(device: torch.device, data: Any = None) -> dict[str, torch.Tensor]:
    """The state of every generator the run uses, as CPU tensors keyed ``rng.*``."""
    out = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["rng.cuda"] = torch.cuda.get_rng_state(device)
    version, words, gauss = random.getstate()
    out["rng.python"] = torch.tensor([version, *words], dtype=torch.int64)
    out["rng.python_gauss"] = torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64)
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    out["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    out["rng.numpy_gauss"] = torch.tensor([pos, has_gauss, cached], dtype=torch.float64)
    gen = getattr(data, "generator", None)
    if isinstance(gen, torch.Generator):
        out["rng.data"] = gen.get_state()
    return out


def restore(state: dict[str, torch.Tensor], device: torch.device, data: Any = None) -> None:
    """Put back what :func:`capture` recorded, for the generators this run has."""
    torch.set_rng_state(state["rng.torch"])
    if "rng.cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["rng.cuda"], device)
    if "rng.python" in state:
        version, *words = (int(v) for v in state["rng.python"].tolist())
        has, gauss = state["rng.python_gauss"].tolist()
        random.setstate((version, tuple(words), gauss if has else None))
    if "rng.numpy" in state:
        pos, has_gauss, cached = state["rng.numpy_gauss"].tolist()
        keys = to_numpy(state["rng.numpy"]).astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), float(cached)))
    gen = getattr(data, "generator", None)
    if "rng.data" in state and isinstance(gen, torch.Generator):
        gen.set_state(state["rng.data"])
