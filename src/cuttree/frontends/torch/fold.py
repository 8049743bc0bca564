"""Fold layers whose weight is computed in ``forward`` into plain layers holding that weight.

Weight standardization (BiT and timm's ``StdConv2d``/``ScaledStdConv2d``, Hugging Face's
``BitWeightStandardizedConv2d``) and weight norm compute a conv's weight from its parameters on
every call. Removing one input channel of such a layer is not zeroing it (the standardization
re-normalizes each filter over what is left), so the trace pins their channels and a model built
from them cannot be pruned. With ``fold_computed_weights: true`` each such ``Conv1d/2d/3d`` or
``Linear`` becomes a plain one holding the weight it computes: the model computes exactly what it
did, and prunes like any other. Fine-tuning afterwards trains the plain layers (the
standardization is gone), which is what the setting trades.

A layer is folded only when its forward is one conv (or linear) call on its own input with its
own geometry (or, for timm's ``StdConv2dSame``, on its input padded for "same" output: it becomes
timm's ``Conv2dSame``), and the plain layer gives bit-for-bit its output on the example inputs;
anything else is left as it is, still pinned, with a warning.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cuttree.errors import warn
from cuttree.frontends.torch.util import eval_mode, removing, run_model

PLAIN: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CALLS = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d, F.linear: nn.Linear}


def computes_its_weight(module: nn.Module, besides: tuple[type[nn.Module], ...] = ()) -> bool:
    """Whether ``module`` is a Conv/Linear whose ``forward`` uses a weight other than its ``weight``
    as it is: a parametrization (other than those of the ``besides`` types), a pre-forward hook
    (old-style weight norm), or a ``forward`` of its own that computes one. The last is found by
    running the layer alone on a small input of zeros: a subclass that only pads its input
    (timm's ``Conv2dSame``) uses its weight as it is; one that fails on such an input counts.

    >>> computes_its_weight(nn.Conv2d(3, 4, 3)), computes_its_weight(nn.utils.parametrizations.weight_norm(nn.Linear(3, 4)))
    (False, True)
    """
    if not isinstance(module, PLAIN):
        return False
    params: Any = getattr(module, "parametrizations", {})
    if any(not isinstance(p, besides) for ps in params.values() for p in ps) or module._forward_pre_hooks:
        return True
    base = next(t for t in PLAIN if isinstance(module, t))
    if type(module).forward is base.forward:  # a parametrized layer's generated class inherits its forward
        return False
    return not _uses_its_weight(module)


def _uses_its_weight(module: nn.Module) -> bool:
    """Run ``module`` alone on zeros: is its one conv/linear call's weight its ``weight``?"""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    if isinstance(module, nn.Linear):
        shape: tuple[int, ...] = (1, module.in_features)
    else:
        assert isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
        size = [(k - 1) * d + s for k, d, s in zip(module.kernel_size, module.dilation, module.stride, strict=True)]
        shape = (1, module.in_channels, *size)
    seen = _Seen(calls=[])
    capture = _Capture()
    capture.running.append(seen)
    try:
        with torch.no_grad(), capture:
            module(torch.zeros(shape, dtype=weight.dtype, device=weight.device))
    except Exception:  # a layer that needs other inputs: counted as computing its weight (never wrongly pruned)
        return False
    used = [w for _, _, w, _ in seen.calls or []]
    return (
        len(used) == 1
        and isinstance(used[0], torch.Tensor)
        and used[0].shape == weight.shape
        and bool(torch.equal(used[0], weight.detach()))
    )


@dataclass
class _Seen:
    inputs: Any = None
    output: Any = None
    calls: list[tuple[Any, torch.Tensor, torch.Tensor | None, Any]] | None = None  # (func, input, weight, bias)
    result: Any = None
    one_call: bool = False  # one conv/linear call, whose result is the layer's output
    own_input: bool = False  # … made on the layer's own input


class _Capture(TorchFunctionMode):
    """Records every conv/linear call, with its input, weight and bias, for the module running it."""

    def __init__(self) -> None:
        super().__init__()
        self.running: list[_Seen] = []

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CALLS and self.running:
            seen = self.running[-1]
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            assert seen.calls is not None
            seen.calls.append((func, args[0] if args else kwargs.get("input"), weight, bias))
            seen.result = out
        return out


def _plain_like(module: nn.Module, weight: torch.Tensor | None, bias: torch.Tensor | None, has_bias: bool) -> nn.Module:
    """A plain layer of ``module``'s own geometry holding ``weight`` and ``bias`` (with ``weight``
    ``None``, freshly initialized ones, of the dtype and device of ``module``'s parameters)."""
    like = weight if weight is not None else next(module.parameters())
    kw: dict[str, Any] = {"bias": has_bias, "device": like.device, "dtype": like.dtype}
    plain: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
    if isinstance(module, nn.Linear):
        plain = nn.Linear(module.in_features, module.out_features, **kw)
    else:
        assert isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
        cls = type(module).__mro__[[t in PLAIN for t in type(module).__mro__].index(True)]
        if _pads_same(module):
            from timm.layers import Conv2dSame

            cls = Conv2dSame
        plain = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            **kw,
        )
    with torch.no_grad():
        if weight is not None:
            plain.weight.copy_(weight)
        if bias is not None and plain.bias is not None:
            plain.bias.copy_(bias)
    plain.train(module.training)
    return plain


def as_plain(model: nn.Module, names: Sequence[str]) -> None:
    """Replace the named layers with plain ones of the same geometry, in place, weights left as
    they are: for a model whose folded weights are loaded next (a ``.cuttree`` file's)."""
    for name in names:
        module = model.get_submodule(name)
        if computes_its_weight(module):
            _set(model, name, _plain_like(module, None, None, getattr(module, "bias", None) is not None))


def fold_computed_weights(
    model: nn.Module, example_inputs: Sequence[Any], inplace: bool = False, only: Sequence[str] | None = None
) -> tuple[nn.Module, tuple[str, ...]]:
    """``model`` (a copy unless ``inplace``) with every foldable Conv/Linear that computes its
    weight replaced by a plain one holding that weight, and the names of those layers.

    ``only`` restricts the fold to the named layers (a plan's). A layer that computes its weight
    but cannot be folded exactly keeps its class, with a warning; its channels stay pinned.

    >>> conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3))
    >>> x = torch.randn(1, 3, 8, 8)
    >>> folded, names = fold_computed_weights(nn.Sequential(conv), (x,))
    >>> names, type(folded[0]).__name__, torch.equal(folded(x), conv(x))
    (('0',), 'Conv2d', True)
    """
    names = None if only is None else set(only)
    wanted = [n for n, m in model.named_modules() if (names is None or n in names) and computes_its_weight(m)]
    if not wanted:
        return model, ()
    seen: dict[str, _Seen] = {}
    capture = _Capture()

    def pre(name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if name not in seen:
                seen[name] = _Seen(inputs=args, calls=[])  # the input, checked for identity with the conv's
                capture.running.append(seen[name])
            else:
                capture.running.append(_Seen(calls=[]))  # a second call of a shared layer: the first decides

        return hook

    def post(module: nn.Module, args: Any, output: Any) -> None:
        done = capture.running.pop()
        if done.output is None and done.inputs and isinstance(output, torch.Tensor) and done.calls:
            # one conv on the layer's own input, its result the layer's output; then copies, since an
            # in-place activation after the layer (NFNets') would change them before the check
            done.one_call = len(done.calls) == 1 and output is done.result
            done.own_input = done.one_call and done.calls[0][1] is done.inputs[0]
            done.inputs = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in done.inputs)
            done.output = output.clone()

    hooks = []
    for n in wanted:
        hooks += [
            model.get_submodule(n).register_forward_pre_hook(pre(n)),
            model.get_submodule(n).register_forward_hook(post),
        ]
    with eval_mode(model), torch.no_grad(), removing(hooks), capture:
        run_model(model, example_inputs)
    work = model if inplace else copy.deepcopy(model)
    folded, refused = [], []
    for name in wanted:
        s = seen.get(name)
        module = work.get_submodule(name)
        plain = _folded(module, s) if s is not None else None
        if plain is None:
            refused.append(name)
            continue
        _set(work, name, plain)
        folded.append(name)
    if refused:
        warn(
            f"kept {len(refused)} layer(s) that compute their weight as they are ({', '.join(refused[:3])}"
            f"{' …' if len(refused) > 3 else ''}): their forward is not one conv or linear call on their input with "
            "their own geometry (or never ran on the example inputs), so they cannot be folded exactly; their "
            "channels stay whole"
        )
    return work, tuple(folded)


def _folded(module: nn.Module, seen: _Seen) -> nn.Module | None:
    """The plain layer for ``module``, or ``None`` when it would not compute exactly the same."""
    if not seen.one_call or seen.calls is None or not (seen.own_input or _pads_same(module)):
        return None
    func, _, weight, bias = seen.calls[0]
    if _CALLS[func] is not next(t for t in PLAIN if isinstance(module, t)) or not isinstance(weight, torch.Tensor):
        return None
    plain = _plain_like(module, weight.detach(), None if bias is None else bias.detach(), bias is not None)
    with torch.no_grad():
        same = plain(seen.inputs[0])
    return plain if torch.equal(same, seen.output) else None


def _pads_same(module: nn.Module) -> bool:
    """timm's ``StdConv2dSame``/``ScaledStdConv2dSame`` pad their input for "same" output at every
    call: they fold into timm's ``Conv2dSame``, which does the same with its weight as it is."""
    if not (getattr(module, "same_pad", False) is True and isinstance(module, nn.Conv2d)):
        return False
    try:
        import timm.layers  # noqa: F401
    except ImportError:
        return False
    return True


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)
