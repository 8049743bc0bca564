"""Small helpers shared by several modules."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from cuttree.errors import TraceError


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (each shared tensor once)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def as_inputs(example_inputs: Any) -> tuple[Any, ...]:
    """Example inputs as the positional arguments of one call: a single tensor is one input (as
    users expect), a list or tuple is several; anything else is a one-line error.

    >>> [tuple(x.shape) for x in as_inputs(torch.zeros(2, 3))]
    [(2, 3)]
    >>> len(as_inputs([torch.zeros(1), torch.zeros(1)]))
    2
    """
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list | tuple):
        return tuple(example_inputs)
    if isinstance(example_inputs, dict):
        raise TypeError(
            "example inputs given as a dict: pass the positional inputs as a tuple, e.g. (input_ids,); "
            "keyword inputs are for calibration batches"
        )
    raise TypeError(
        f"example inputs must be a tensor or a tuple of inputs, got {type(example_inputs).__name__}; "
        "pass e.g. torch.randn(1, 3, 224, 224)"
    )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; every module's own training flag restored afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, f in flags.items():
            m.training = f


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Every parameter with ``requires_grad=False`` inside the block, each one's flag restored after.

    torch's FLOP counter tracks modules with gradient hooks on their inputs, and fails on a
    parameter passed to a module as its input (DeBERTa's relative-position embeddings) under
    ``no_grad``; frozen parameters get no hook.

    >>> lin = nn.Linear(2, 2)
    >>> with frozen(lin):
    ...     lin.weight.requires_grad
    False
    >>> lin.weight.requires_grad
    True
    """
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)


@contextmanager
def removing(handles: Iterable[Any]) -> Iterator[None]:
    """Run the block, then remove every hook handle in ``handles``, whatever happened."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s first parameter (or buffer) lives; the CPU for a model with neither."""
    t = next(itertools.chain(model.parameters(), model.buffers()), None)
    return t.device if t is not None else torch.device("cpu")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """The one border between torch and the numpy decisions: ``t`` detached, on the CPU, as numpy.

    Wherever the model lives (GPU, CPU), the planning code sees the same arrays. Half-precision
    floats are widened to float32 (numpy has no bfloat16).

    >>> to_numpy(torch.tensor([1.5, 2.0], dtype=torch.bfloat16)).dtype
    dtype('float32')
    """
    x = t.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x.cpu().numpy()


def run_model(model: nn.Module, example_inputs: Sequence[Any]) -> Any:
    """``model(*example_inputs)``; a failure of the user's forward becomes one clear TraceError."""
    try:
        return model(*example_inputs)
    except Exception as e:  # any failure of user code is reported, never swallowed
        first = str(e).splitlines()[0] if str(e) else ""
        shapes = [tuple(x.shape) for x in example_inputs if hasattr(x, "shape")]
        raise TraceError(
            f"the model failed on example inputs of shapes {shapes} ({type(e).__name__}: {first}); "
            "pass inputs the model's forward accepts (shape, dtype, device), e.g. --input-shape 1,3,224,224"
        ) from e


def primary_output(out: Any) -> Any:
    """The tensor a task loss or metric reads: the output itself, a dict's first value
    (``"out"`` for torchvision's segmentation models), or a tuple's first item."""
    if isinstance(out, dict):
        return next(iter(out.values()))
    if isinstance(out, tuple | list):
        return out[0]
    return out


def refuse_keras(model: object) -> None:
    """A Keras 3 model on the torch backend *is* an ``nn.Module``, but its layers keep their own
    sizes: the torch surgery would change tensors behind Keras's back. Send it to cuttree.keras."""
    if any(c.__module__.split(".")[0] == "keras" for c in type(model).__mro__):
        raise TypeError(
            f"'{getattr(model, 'name', type(model).__name__)}' is a Keras model; the torch API would lose the pruning "
            "when Keras saves it: use cuttree.keras.prune(model, config) (or `cuttree prune --model my.keras`)"
        )


def tensor_names(model: nn.Module) -> dict[str, str]:
    """Each state-dict name → the first name of the same tensor (a tied weight is one tensor under
    several names). Identity, not storage address: views of one buffer are distinct tensors."""
    first: dict[int, str] = {}
    return {k: first.setdefault(id(v), k) for k, v in model.state_dict(keep_vars=True).items()}


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a ``DTensor`` (a parameter or optimizer state under FSDP2)."""
    return hasattr(t, "full_tensor") and hasattr(t, "device_mesh")


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every process if ``t`` is sharded (collective)."""
    return t.full_tensor() if is_sharded(t) else t  # type: ignore[attr-defined, no-any-return]


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (the whole tensor) as ``like`` holds it: this process's shard of it when ``like``
    is sharded (taken from ``value`` here, no communication), else ``value`` itself."""
    if not is_sharded(like):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(
        value.to(like.device, like.dtype),  # type: ignore[attr-defined]
        like.device_mesh,  # type: ignore[attr-defined]
        like.placements,  # type: ignore[attr-defined]
        src_data_rank=None,
    )


def sharded(model: nn.Module) -> bool:
    """Whether ``model`` is sharded across processes by FSDP2 (``fully_shard``). Its parameters
    alone do not say: a forward without a backward leaves the root's gathered whole until the
    next step.

    >>> sharded(nn.Linear(2, 2))
    False
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - a build without distributed
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def inference(model: nn.Module) -> Any:
    """The no-grad context to evaluate ``model`` in: inference mode, or plain ``no_grad`` for a
    sharded model (FSDP2 reuses its gathered buffers in training, and buffers made in inference
    mode cannot be written outside it)."""
    return torch.no_grad() if sharded(model) else torch.inference_mode()


def state_dict_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on the CPU, contiguous, with shared tensors stored once (safetensors forbids
    aliasing), a parametrized tensor (a sparsity mask) as the plain tensor it computes, and a
    sharded one (FSDP2) whole: gathered from every process, so every process must call it."""
    state = {k: full(v) for k, v in model.state_dict().items()}
    out = {k: state[k].detach().cpu().contiguous() for k, first in tensor_names(model).items() if k == first}
    for name, mod in model.named_modules():
        if not parametrize.is_parametrized(mod):
            continue
        prefix = f"{name}." if name else ""
        for tensor in mod.parametrizations:  # type: ignore[union-attr]
            inner = f"{prefix}parametrizations.{tensor}."
            out = {k: v for k, v in out.items() if not k.startswith(inner)}
            out[f"{prefix}{tensor}"] = getattr(mod, tensor).detach().cpu().contiguous()
    return out
