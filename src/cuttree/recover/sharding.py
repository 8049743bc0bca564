"""Several processes under ``torchrun``: a whole copy of the model in each (DDP), or a shard of
every parameter in each (FSDP2, ``finetune.parallel: fsdp``) for a model that does not fit one
device.

FSDP2's ``fully_shard`` turns each parameter into a ``DTensor`` holding this process's rows; a
language model's decoder layers are sharded one by one (each is gathered only while it runs),
then the rest of the model. Everything that reads or writes whole weights (checkpoints, the best
weights kept by validation, the weights' digest, saved files) goes through :func:`full` and
:func:`shard_like`, which turn a sharded tensor into the whole one (a collective: every process
calls it, in the same order) and a whole one back into this process's shard (no communication:
every process holds the whole tensor it read).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cuttree.frontends.torch.util import full, is_sharded, shard_like, sharded, state_dict_for_save


def wrap(model: nn.Module, device: torch.device, parallel: str) -> nn.Module:
    """What the training step calls in ``model``'s place under ``torchrun``: a DDP wrapper, or
    (``fsdp``) ``model`` itself, sharded in place (decoder layers one by one, then the root)."""
    if parallel != "fsdp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from cuttree.frontends.torch.layerwise import decoder_stack

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    stack = decoder_stack(model)
    for block in stack[1] if stack is not None else ():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def gathered(model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
    """A plain (unsharded) copy of a sharded ``model``: ``build()`` (the same architecture) with
    its whole weights, gathered from every process (so every process must call it); ``model``
    itself when it is not sharded. What is saved and evaluated after an FSDP2 fine-tuning."""
    if not sharded(model):
        return model
    from cuttree.files.cuttree_file import load_state

    weights = state_dict_for_save(model)
    plain = build()
    load_state(plain, weights, "the gathered weights")
    return plain


def mean_over_processes(value: float) -> float:
    """``value`` averaged over the processes of a ``torchrun`` run (itself outside one): the loss of
    the whole batch, as one process with every sample would report it."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    on = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=on)
    torch.distributed.all_reduce(t)
    return float(t.item()) / torch.distributed.get_world_size()


__all__ = ["full", "gathered", "is_sharded", "mean_over_processes", "shard_like", "sharded", "wrap"]
