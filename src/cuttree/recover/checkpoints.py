"""Fine-tuning checkpoints: one safetensors file, written atomically, refused unless intact.

The model's and the optimizer's tensors (a shared module's weight once), every random generator
the run draws from (:mod:`cuttree.recover.rng`) and, in the metadata, the run's JSON state (step, history,
scaler, data order, validation record) with a SHA-256 checksum of it all. One file, so a kill
never leaves the tensors of one step beside the state of another; a kill mid-write leaves the
previous checkpoint (:func:`cuttree.files.cuttree_file.atomic_write`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cuttree.errors import FileFormatError
from cuttree.files.cuttree_file import atomic_write, checksum, load_state
from cuttree.frontends.torch.util import full, shard_like, state_dict_for_save

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
    rng_state: dict[str, torch.Tensor],
    write: bool = True,
) -> None:
    """Write the checkpoint (only if ``write``: under FSDP2 every process gathers the whole
    tensors, one writes them)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in state_dict_for_save(model).items()}  # a shared module's weight once
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{idx}.{k}"] = full(v).detach().cpu().contiguous()
    if not write:
        return
    tensors.update(rng_state)
    meta = {"state": json.dumps({**state, "param_groups": sd["param_groups"]})}
    meta["checksum"] = checksum(tensors, meta)
    atomic_write(run_dir / CHECKPOINT, lambda p: save_file(tensors, str(p), metadata=meta))


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON state and the tensors of a checkpoint, refused unless intact (its checksum)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # a damaged header or body raises several types
        raise FileFormatError(f"checkpoint '{path}' is corrupt ({type(e).__name__}); start without --resume") from None
    if "state" not in raw or raw.get("checksum") != checksum(tensors, raw):
        raise FileFormatError(
            f"checkpoint '{path}' is corrupt or not a cuttree checkpoint (its checksum does not match); "
            "start without --resume"
        )
    return json.loads(raw["state"]), tensors


def load_checkpoint(
    run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Model and optimizer restored from ``run_dir``; returns the JSON state and the RNG tensors."""
    meta, tensors = read_checkpoint(run_dir / CHECKPOINT)
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(run_dir))
    state: dict[int, dict[str, torch.Tensor]] = {}
    params = [p for g in opt.param_groups for p in g["params"]]  # the order of the state's indices
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            p = params[int(idx)] if int(idx) < len(params) else None
            state.setdefault(int(idx), {})[name] = shard_like(v, p) if p is not None and v.shape == p.shape else v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta, {k: v for k, v in tensors.items() if k.startswith("rng.")}
