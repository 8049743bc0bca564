"""Inference form of a model: batch norm folded into the conv before it, channels-last or oneDNN layout.

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
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils._pytree import tree_flatten

from cuttree.errors import CuttreeError
from cuttree.frontends.torch.util import eval_mode, model_device, removing


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
    with removing(handles), eval_mode(model), torch.no_grad():
        model(*example_inputs)
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
        _set(out, conv_name, fuse_conv_bn_eval(conv, bn))  # type: ignore[arg-type, type-var]
        _set(out, bn_name, nn.Identity())
    diff = _max_diff(model, out, example_inputs, atol)
    if diff is not None:
        raise CuttreeError(
            f"folding batch norm changed the outputs (max diff {diff:.3g}); a conv output "
            "is used besides its BN: deploy without folding"
        )
    return out


def _outputs(model: nn.Module, example_inputs: Sequence[Any]) -> list[torch.Tensor]:
    with eval_mode(model), torch.no_grad():
        return [t for t in tree_flatten(model(*example_inputs))[0] if isinstance(t, torch.Tensor)]


def _max_diff(model: nn.Module, other: nn.Module, example_inputs: Sequence[Any], atol: float) -> float | None:
    """The largest output difference where ``other`` disagrees with ``model`` beyond tolerance, else None."""
    for a, b in zip(_outputs(model, example_inputs), _outputs(other, example_inputs), strict=True):
        if not torch.allclose(a, b, atol=atol, rtol=1e-3):
            return float((a - b).abs().max().item())
    return None


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


LAYOUTS = ("channels_last", "onednn")


def for_inference(model: nn.Module, example_inputs: Sequence[Any], layout: str = "channels_last") -> nn.Module:
    """BN folded, then laid out for CPU inference.

    ``layout="channels_last"``: channels-last weights (feed it channels-last inputs for the full
    effect). ``layout="onednn"``: every 2-D conv and Linear holds its weight pre-packed in oneDNN's
    blocked format, and activations stay oneDNN tensors from input to output (``OneDNNModel``),
    so no layer reorders its weight or its input on each call; still torch eager. Only models
    whose every op accepts oneDNN tensors can take it (ResNets, VGG: yes; ops such as hardtanh or
    as_strided: no); otherwise an error names the op.

    >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    >>> x = torch.randn(2, 3, 8, 8)
    >>> f = for_inference(m, (x,), layout="onednn")
    >>> with torch.no_grad():
    ...     torch.allclose(f(x), m.eval()(x), atol=1e-5)
    True
    """
    if layout not in LAYOUTS:
        raise CuttreeError(f"layout {layout!r} is not known: must be one of {', '.join(LAYOUTS)}")
    folded = fold_batchnorm(model, example_inputs)
    if layout == "channels_last":
        return folded.to(memory_format=torch.channels_last)
    return _onednn_checked(model, folded, example_inputs)  # ``folded`` is already a copy


class OneDNNConv2d(nn.Module):
    """An eager 2-D conv whose weight is pre-packed once in oneDNN's blocked format (inference only)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise CuttreeError(
                f"conv padding {conv.padding!r} / padding_mode {conv.padding_mode!r} has no oneDNN form: "
                "use layout='channels_last'"
            )
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        w = conv.weight.detach().float()
        self.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            w.to_mkldnn(), self.padding, self.stride, self.dilation, self.groups
        )
        b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(w.shape[0])
        self.bias = b.to_mkldnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mkldnn_convolution(
            x, self.packed, self.bias, self.padding, self.stride, self.dilation, self.groups
        )


class OneDNNLinear(nn.Module):
    """An eager Linear layer whose weight is a oneDNN tensor (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.packed = linear.weight.detach().float().to_mkldnn()
        b = linear.bias.detach().float() if linear.bias is not None else torch.zeros(linear.out_features)
        self.bias = b.to_mkldnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch._C._nn.mkldnn_linear(x, self.packed, self.bias)


class OneDNNModel(nn.Module):
    """Feeds its network oneDNN tensors and hands back ordinary (strided) tensors."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *args: Any) -> Any:
        ins = [a.to_mkldnn() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        out = self.net(*ins)
        leaves, spec = tree_flatten(out)
        dense = [t.to_dense() if isinstance(t, torch.Tensor) and t.is_mkldnn else t for t in leaves]
        return spec.unflatten(dense)


def onednn_form(model: nn.Module, example_inputs: Sequence[Any], atol: float = 1e-4) -> OneDNNModel:
    """A copy of ``model`` (float32, CPU, eval) in oneDNN layout, checked on ``example_inputs``."""
    return _onednn_checked(model, copy.deepcopy(model).eval(), example_inputs, atol)


def _onednn_checked(model: nn.Module, net: nn.Module, example_inputs: Sequence[Any], atol: float = 1e-4) -> OneDNNModel:
    """Turn ``net`` (a copy of ``model``, changed in place) into oneDNN layout, checked against ``model``."""
    if model_device(model).type != "cpu":
        raise CuttreeError(
            f"layout 'onednn' is for CPU inference and the model is on {model_device(model)}: "
            "use layout='channels_last' there, or move the model to the CPU first"
        )
    if not torch.backends.mkldnn.is_available():
        raise CuttreeError("layout 'onednn' needs a PyTorch build with oneDNN (mkldnn): use layout='channels_last'")
    for name, mod in list(net.named_modules()):
        if type(mod) is nn.Conv2d:
            _set(net, name, OneDNNConv2d(mod))
        elif type(mod) is nn.Linear:
            _set(net, name, OneDNNLinear(mod))
    out = OneDNNModel(net)
    try:
        diff = _max_diff(model, out, example_inputs, atol)
    except (NotImplementedError, RuntimeError) as e:
        first = str(e).splitlines()[0][:160]
        raise CuttreeError(
            f"layout 'onednn' needs every op of the model to take oneDNN tensors, and one does not ({first}): "
            "use layout='channels_last'"
        ) from None
    if diff is not None:
        raise CuttreeError(f"layout 'onednn' changed the outputs (max diff {diff:.3g}): use layout='channels_last'")
    return out


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory instead of returning it to the system (process-wide).

    By default glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on
    free, so each large activation of a CPU forward pass is page-faulted and zero-filled anew: a
    memory-bound cost that scales with the activations, not the MACs, and that varies from run to
    run. Serving them from the heap and never trimming it (what jemalloc/tcmalloc users get) makes
    inference faster and latency measurements steadier. Returns False where the C library is not
    glibc (nothing is changed there). Call it once, before timing; it affects the whole process.

    >>> isinstance(keep_freed_memory(), bool)
    True
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored as torch sparse CSR (used only where it is faster)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.weight = nn.Parameter(linear.weight.detach().to_sparse_csr(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def median_ms(fn: Any, runs: int, device: torch.device | None = None) -> float:
    """Median milliseconds of ``fn()`` on ``device`` (the CPU by default), waited for each time."""
    import statistics

    from cuttree.frontends.torch.measure import time_ms

    with torch.inference_mode():
        return statistics.median(time_ms(fn, device or torch.device("cpu"), runs, warmup=2))


def choose_sparse_kernels(
    model: nn.Module, example_inputs: Sequence[Any], runs: int = 20, min_zeros: float = 0.5
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """A copy of ``model`` with each Linear of at least ``min_zeros`` zero weights replaced by a
    :class:`SparseLinear` only where the sparse kernel measured faster on this machine, on the
    very input that layer sees for ``example_inputs``; returns the model and the measurements."""
    out = copy.deepcopy(model).eval()
    seen: dict[str, torch.Tensor] = {}
    linears = {n: m for n, m in out.named_modules() if isinstance(m, nn.Linear)}
    hooks = [
        m.register_forward_pre_hook(lambda m, i, n=n: seen.__setitem__(n, i[0].detach())) for n, m in linears.items()
    ]
    with removing(hooks), torch.no_grad():
        out(*example_inputs)
    rows = []
    for name, lin in linears.items():
        zeros = float((lin.weight == 0).float().mean())
        if name not in seen or zeros < min_zeros:
            continue
        x = seen[name]
        sparse = SparseLinear(lin)
        d = median_ms(lambda lin=lin, x=x: lin(x), runs, x.device)
        s = median_ms(lambda sparse=sparse, x=x: sparse(x), runs, x.device)
        use = s < d
        rows.append(
            {
                "layer": name,
                "shape": tuple(lin.weight.shape),
                "sparsity": zeros,
                "dense_ms": d,
                "sparse_ms": s,
                "sparse": use,
            }
        )
        if use:
            _set(out, name, sparse)
    return out, rows
