"""Inference form of a model: batch norm folded into the conv before it, channels-last layout.

This is what a pruned model is deployed as, and it is applied to the dense model alike when the
two are compared (``bench/latency.py``): folding removes the memory-bound BN passes that do not
shrink as fast as the convolutions' MACs do.

>>> import torch
>>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
>>> f = fold_batchnorm(m, (torch.randn(1, 3, 8, 8),))
>>> type(f[1]).__name__
'Identity'
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils._pytree import tree_flatten

from cuttree._util import eval_mode
from cuttree.errors import CuttreeError


def _pairs(model: nn.Module, example_inputs: Sequence[Any]) -> list[tuple[str, str]]:
    """(conv, bn) names where the BN's input is the very tensor the conv returned."""
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            handles.append(mod.register_forward_hook(lambda m, i, o, n=name: produced.__setitem__(id(o), n)))
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            handles.append(
                mod.register_forward_pre_hook(
                    lambda m, i, n=name: pairs.append((produced[id(i[0])], n)) if id(i[0]) in produced else None
                )
            )
    try:
        with eval_mode(model), torch.no_grad():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    convs = [c for c, _ in pairs]
    return [(c, b) for c, b in pairs if convs.count(c) == 1]


def fold_batchnorm(model: nn.Module, example_inputs: Sequence[Any], atol: float = 1e-4) -> nn.Module:
    """A copy of ``model`` with every conv→BN pair folded into one conv (eval-mode semantics).

    The result is checked against the original on ``example_inputs``; a conv whose output is
    also used elsewhere would make the check fail, and then an error says so.
    """
    out = copy.deepcopy(model).eval()
    for conv_name, bn_name in _pairs(out, example_inputs):
        conv, bn = out.get_submodule(conv_name), out.get_submodule(bn_name)
        _set(out, conv_name, fuse_conv_bn_eval(conv, bn))  # type: ignore[arg-type]
        _set(out, bn_name, nn.Identity())
    with eval_mode(model), torch.no_grad():
        ref = [t for t in tree_flatten(model(*example_inputs))[0] if isinstance(t, torch.Tensor)]
        got = [t for t in tree_flatten(out(*example_inputs))[0] if isinstance(t, torch.Tensor)]
    for a, b in zip(ref, got, strict=True):
        if not torch.allclose(a, b, atol=atol, rtol=1e-3):
            raise CuttreeError(
                f"folding batch norm changed the outputs (max diff {(a - b).abs().max().item():.3g}); a conv output "
                "is used besides its BN: deploy without folding"
            )
    return out


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def for_inference(model: nn.Module, example_inputs: Sequence[Any]) -> nn.Module:
    """BN folded and channels-last weights (feed it channels-last inputs for the full effect)."""
    return fold_batchnorm(model, example_inputs).to(memory_format=torch.channels_last)
