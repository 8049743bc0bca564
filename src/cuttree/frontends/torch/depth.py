"""Depth: whole decoder layers as a unit (``units: [layers]``).

A language model's stack of decoder layers (:func:`~cuttree.frontends.torch.layerwise.decoder_stack`)
becomes one group of unit ``layers`` whose channels are the blocks. Each block is scored by its
*block influence* on the calibration data, ShortGPT's 1 − cos(x, f(x)) between the hidden
states entering and leaving it, averaged over tokens: a block that barely turns the residual
stream can go. Surgery deletes the blocks from the ``nn.ModuleList`` (the rest are renumbered,
so the state dict stays contiguous) and patches what counts them: ``config.num_hidden_layers``,
a per-layer ``config.layer_types``, and each attention's ``layer_idx`` (its slot in the key/value
cache).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cuttree.errors import SurgeryError
from cuttree.frontends.torch.util import eval_mode, removing
from cuttree.recover.batching import forward


def stack_shapes(model: nn.Module, plan: Any) -> dict[str, tuple[int, ...]]:
    """The "shape" of each stack whose layers ``plan`` removes: ``(blocks,)``, as the plan records it."""
    from cuttree.core.plan import DEPTH_UNIT

    modules = dict(model.named_modules())
    names = {m.tensor for g in plan.groups if g.unit == DEPTH_UNIT for m in g.members}
    return {n: (len(modules[n]),) for n in names if isinstance(modules.get(n), nn.ModuleList)}


def block_params(stack: nn.ModuleList) -> list[int]:
    """Parameters held by each block (shared ones counted once, in the first block holding them)."""
    seen: set[int] = set()
    out = []
    for block in stack:
        n = 0
        for p in block.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        out.append(n)
    return out


def _hidden_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, torch.Tensor):
        raise SurgeryError("a decoder layer was called without its hidden states as the first input")
    return x


def _hidden_out(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def block_influence(model: nn.Module, stack: nn.ModuleList, inputs: Iterable[Any]) -> torch.Tensor:
    """Each block's 1 − cos(input, output) over every token of ``inputs`` (the calibration
    batches, on the model's device), float64, one per block.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> _ = torch.manual_seed(0)
    >>> lm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1)).eval()
    >>> bi = block_influence(lm, lm.model.layers, [torch.randint(0, 32, (2, 8))])
    >>> tuple(bi.shape), bool(((bi > 0) & (bi < 2)).all())
    ((3,), True)
    """
    total = torch.zeros(len(stack), dtype=torch.float64)
    tokens = torch.zeros(len(stack), dtype=torch.float64)
    seen: dict[int, torch.Tensor] = {}

    def enter(i: int) -> Callable[..., None]:
        def fn(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen[i] = _hidden_in(args, kwargs).detach()

        return fn

    def leave(i: int) -> Callable[..., None]:
        def fn(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            a = seen.pop(i).double()
            a = a.reshape(-1, a.shape[-1])
            b = _hidden_out(out).detach().double().reshape(a.shape)
            total[i] += (1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).sum().cpu()
            tokens[i] += a.shape[0]

        return fn

    handles = [
        h
        for i, block in enumerate(stack)
        for h in (
            block.register_forward_pre_hook(enter(i), with_kwargs=True),
            block.register_forward_hook(leave(i), with_kwargs=True),
        )
    ]
    with removing(handles), eval_mode(model), torch.no_grad():
        for x in inputs:
            forward(model, x)
    if (tokens == 0).any():
        i = int((tokens == 0).nonzero()[0])
        raise SurgeryError(f"decoder layer {i} never ran on the calibration data, so its influence is unknown")
    return total / tokens


def remove_blocks(model: nn.Module, name: str, removed: Iterable[int]) -> Callable[[], None]:
    """Delete the blocks ``removed`` of the stack ``name`` in place and patch what counts them;
    returns the undo (for surgery that is all or nothing)."""
    stack = model.get_submodule(name)
    if not isinstance(stack, nn.ModuleList):
        raise SurgeryError(f"the plan removes layers of '{name}', which is not a ModuleList in this model")
    gone = set(removed)
    before = list(stack)
    config = getattr(model, "config", None)
    saved: dict[str, Any] = {}
    if config is not None:
        for key in ("num_hidden_layers", "layer_types"):
            if hasattr(config, key):
                saved[key] = getattr(config, key)
    indices = [(m, m.layer_idx) for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]

    def undo() -> None:
        stack._modules.clear()
        for i, block in enumerate(before):
            stack.add_module(str(i), block)
        for key, value in saved.items():
            setattr(config, key, value)
        for m, idx in indices:
            setattr(m, "layer_idx", idx)  # noqa: B010

    kept = [b for i, b in enumerate(before) if i not in gone]
    stack._modules.clear()
    for i, block in enumerate(kept):
        stack.add_module(str(i), block)
        for m in block.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                setattr(m, "layer_idx", i)  # noqa: B010 - a plain attribute of Hugging Face attention modules
    if "num_hidden_layers" in saved:
        setattr(config, "num_hidden_layers", len(kept))  # noqa: B010
    if isinstance(saved.get("layer_types"), list | tuple) and len(saved["layer_types"]) == len(before):
        setattr(config, "layer_types", [t for i, t in enumerate(saved["layer_types"]) if i not in gone])  # noqa: B010
    return undo


__all__ = ["block_influence", "block_params", "remove_blocks", "stack_shapes"]
