"""Run a model once under a dispatch mode and record how its channels are coupled.

Tracing happens at the ATen level, below ``nn.Module`` and Python control flow: whatever the
model's ``forward`` does (residual adds, ``torch.cat``, ``chunk``, ``view``, a module called
twice, functional code with raw parameters), the ops that reach the dispatcher are the ones
that run, so nothing has to be symbolically traceable.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cuttree.core.grouping import components
from cuttree.errors import TraceError
from cuttree.frontends.torch.labels import Label, LabelState, Pin
from cuttree.frontends.torch.ops import rule_for
from cuttree.frontends.torch.rules import counts_heads, is_rms_norm
from cuttree.frontends.torch.util import eval_mode, run_model

__all__ = ["TraceResult", "components", "named_tensors", "trace"]


class _Recorder(TorchDispatchMode):
    def __init__(self, state: LabelState, watched: dict[int, str]) -> None:
        super().__init__()
        self.state = state
        self.watched = watched
        self.seen: set[int] = set()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func.overloadpacket is torch.ops.aten.as_strided_:  # its rule needs the strides it replaces
            self.state.strides_before = tuple(args[0].stride())
        out = func(*args, **kwargs)
        for a in tree_flatten((args, kwargs))[0]:  # tensors inside lists too (``torch.cat((q_bias, v_bias))``)
            if isinstance(a, torch.Tensor) and id(a) in self.watched:
                self.seen.add(id(a))
        self.state.current_op = str(func.overloadpacket.__name__)
        rule_for(func)(self.state, args, kwargs, out)
        return out


class TraceResult:
    """Labels of every parameter and buffer dimension after one traced forward pass.

    ``tensors`` maps each state-dict name to its per-dim labels (``None`` where untracked);
    ``outputs`` holds the example outputs (for later shape checks).
    """

    def __init__(
        self,
        state: LabelState,
        tensors: dict[str, tuple[Label, ...]],
        outputs: list[torch.Tensor],
        seconds: float,
        unreached: list[str],
        spans: list[tuple[int, int]] | None = None,
    ) -> None:
        self.state = state
        self.tensors = tensors
        self.outputs = outputs
        self.seconds = seconds
        self.unreached = unreached
        self.spans = spans or []  # per block of ``trace(blocks=…)``: the MAC terms recorded inside it


@contextlib.contextmanager
def _block_spans(state: LabelState, blocks: Sequence[nn.Module], spans: list[tuple[int, int]]) -> Iterator[None]:
    """Record, per module of ``blocks`` (a stack of decoder layers), the range of MAC terms its
    forward recorded: what removing the whole block saves."""
    starts: dict[int, int] = {}

    def enter(m: nn.Module, args: Any) -> None:
        starts[id(m)] = len(state.mac_terms)

    def leave(m: nn.Module, args: Any, out: Any) -> None:
        spans[index[id(m)]] = (starts[id(m)], len(state.mac_terms))

    index = {id(b): i for i, b in enumerate(blocks)}
    spans[:] = [(0, 0)] * len(blocks)
    handles = [h for b in blocks for h in (b.register_forward_pre_hook(enter), b.register_forward_hook(leave))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _scopes(state: LabelState) -> Iterator[None]:
    """Count, while the forward runs, how many attention modules whose heads prune and how many RMS
    norms with a scale it is inside."""

    def enter(m: nn.Module, args: Any) -> None:
        state.in_attention += counts_heads(m)
        state.in_rms_norm += is_rms_norm(m)

    def leave(m: nn.Module, args: Any, out: Any) -> None:
        state.in_attention -= counts_heads(m)
        state.in_rms_norm -= is_rms_norm(m)

    pre = torch.nn.modules.module.register_module_forward_pre_hook(enter)
    post = torch.nn.modules.module.register_module_forward_hook(leave, always_call=True)
    try:
        yield
    finally:
        pre.remove()
        post.remove()


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by state-dict name (shared ones once, under their first name)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    return out


def module_names(model: nn.Module) -> list[str]:
    """Dotted names of the modules that hold tensors (what configs can name)."""
    return sorted({n.rpartition(".")[0] for n in named_tensors(model)} - {""})


def trace(
    model: nn.Module,
    example_inputs: Sequence[Any],
    ignore_out: dict[str, list[int]] | None = None,
    group_width: bool = False,
    blocks: Sequence[nn.Module] = (),
) -> TraceResult:
    """Run ``model(*example_inputs)`` in eval mode and no-grad, labelling channels.

    ``ignore_out`` pins the given dims of the given tensors (the user's ``ignore`` list, resolved
    to state-dict names by the caller). ``group_width`` labels the width inside each group of a
    grouped conv instead of whole groups. ``blocks`` (a stack of decoder layers) get the MAC terms
    each one's forward recorded (``spans``). The model's training flags are restored afterwards.
    """
    if not isinstance(example_inputs, tuple | list):
        raise TypeError(
            f"example_inputs must be a tuple of tensors, got {type(example_inputs).__name__}; "
            "wrap a single tensor as (x,)"
        )
    state = LabelState(group_width=group_width)
    tensors = named_tensors(model)
    labels = {name: state.label_tensor(t) for name, t in tensors.items()}
    for name, dims in (ignore_out or {}).items():
        for d in dims:
            state.pin(labels[name][d], Pin.IGNORED)
    watched = {id(t): name for name, t in tensors.items()}
    rec = _Recorder(state, watched)
    spans: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    with eval_mode(model), torch.no_grad(), _scopes(state), _block_spans(state, blocks, spans), rec:
        out = run_model(model, example_inputs)
    seconds = time.perf_counter() - t0
    leaves, _ = tree_flatten(out)
    outputs = [t for t in leaves if isinstance(t, torch.Tensor)]
    if not outputs:
        raise TraceError(
            f"the model returned {type(out).__name__} with no tensors; cuttree needs tensor outputs "
            "(a tensor, or tuples/lists/dicts of tensors) to know what must keep its shape"
        )
    for t in outputs:
        state.pin_all(t, Pin.OUTPUT)
    unreached = []
    for name, t in tensors.items():
        if id(t) not in rec.seen:
            unreached.append(name)
            for lab in labels[name]:
                state.pin(lab, Pin.UNUSED)
    return TraceResult(state, labels, outputs, seconds, unreached, spans)
