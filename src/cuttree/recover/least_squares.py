"""The least-squares refit of one layer that lost input channels, shared by
:mod:`cuttree.recover.reconstruct` (any model) and :mod:`cuttree.recover.reconstruct_stack` (a
language model's decoder layers): which layers qualify, their inputs as rows and their kept outputs
as targets, and the ridge normal equations summed batch by batch.

>>> import torch
>>> from torch import nn
>>> lin = nn.Linear(3, 2, bias=False)
>>> x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
>>> y = x @ torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]).T
>>> n = Normal(bias=False, cap=64, g=torch.Generator())
>>> n.add(x, y)
>>> n.refit(lin, ridge=1e-12), [round(v, 3) + 0.0 for v in lin.weight[0].tolist()]
(True, [1.0, 2.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _Stop(Exception):
    """Raised by a hook once it has what it needs; ends the forward pass early."""


def capture(run: Callable[[], object], layer: nn.Module, want_input: bool) -> torch.Tensor:
    """What ``layer`` receives (``want_input``) or returns the first time ``run`` calls it; the
    forward stops there."""
    got: list[torch.Tensor] = []

    def hook(m: nn.Module, i: tuple[torch.Tensor, ...], o: torch.Tensor) -> None:
        got.append(i[0] if want_input else o)
        raise _Stop

    h = layer.register_forward_hook(hook)
    try:
        run()
    except _Stop:
        pass
    finally:
        h.remove()
    if not got:
        raise RuntimeError("the layer was not used by the forward pass")
    return got[0]


def refittable(mod: nn.Module, orig: nn.Module | None, dims: dict[int, Any]) -> bool:
    """Whether ``mod`` (``orig`` in the original model, which lost ``dims`` of its weight) is refitted:
    a linear layer or an ungrouped, zero-padded conv that lost input channels."""
    if type(orig) is not type(mod) or 1 not in dims:
        return False
    if isinstance(mod, nn.Linear):
        return True
    return (
        isinstance(mod, nn.Conv1d | nn.Conv2d)
        and mod.groups == 1
        and mod.padding_mode == "zeros"
        and not isinstance(mod.padding, str)
    )


def rows_of(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as a matrix whose rows times the flattened weight give the outputs."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    assert isinstance(mod, nn.Conv1d | nn.Conv2d)
    if isinstance(mod, nn.Conv1d):
        x = x.unsqueeze(2)
        k, d, s = (1, mod.kernel_size[0]), (1, mod.dilation[0]), (1, mod.stride[0])
        p: tuple[int, ...] = (0, int(mod.padding[0]))
    else:
        k, d, s = mod.kernel_size, mod.dilation, mod.stride  # type: ignore[assignment]
        p = tuple(int(v) for v in mod.padding)
    cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # (N, C·kh·kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def targets_of(mod: nn.Module, y: torch.Tensor, keep: np.ndarray) -> torch.Tensor:
    if isinstance(mod, nn.Linear):
        return y.reshape(-1, y.shape[-1])[:, keep]
    return y[:, keep].movedim(1, -1).reshape(-1, len(keep))


class Normal:
    """The normal equations of one layer's refit, summed batch by batch: ``(AᵀA) W = AᵀY``, with
    ``|Y|²`` for the errors; at most ``cap`` rows (an equal random share) from each batch."""

    def __init__(self, bias: bool, cap: int, g: torch.Generator) -> None:
        self.bias, self.cap, self.g = bias, cap, g
        self.gram: torch.Tensor | None = None
        self.aty: torch.Tensor | None = None
        self.yy = torch.zeros((), dtype=torch.float64)

    def add(self, rows: torch.Tensor, y: torch.Tensor) -> None:
        rows, y = rows.double(), y.double()
        if len(rows) > self.cap:
            pick = torch.randperm(len(rows), generator=self.g)[: self.cap].to(rows.device)
            rows, y = rows[pick], y[pick]
        if self.bias:
            rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype, device=rows.device)], 1)
        self.gram = rows.T @ rows if self.gram is None else self.gram + rows.T @ rows
        self.aty = rows.T @ y if self.aty is None else self.aty + rows.T @ y
        self.yy = self.yy + y.pow(2).sum().cpu()

    def refit(self, mod: nn.Module, ridge: float) -> bool:
        """Write the ridge solution into ``mod``'s weight (and bias) if it lowers the error; whether it did."""
        gram, aty = self.gram, self.aty
        assert gram is not None and aty is not None
        lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
        sol = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype, device=gram.device), aty)
        w: torch.Tensor = mod.weight  # type: ignore[assignment]
        bias = getattr(mod, "bias", None)
        cur = w.detach().reshape(w.shape[0], -1).double().T
        if bias is not None:
            cur = torch.cat([cur, bias.detach().double()[None]], 0)
        if _sq_error(gram, aty, self.yy, sol) >= _sq_error(gram, aty, self.yy, cur):
            return False
        n_w = cur.shape[0] - (bias is not None)
        with torch.no_grad():
            w.copy_(sol[:n_w].T.reshape(w.shape).to(w.dtype))
            if bias is not None:
                bias.copy_(sol[n_w].to(bias.dtype))
        return True


def kept_outputs(orig: nn.Module, dims: dict[int, Any]) -> np.ndarray:
    """The output channels of the original layer ``orig`` that the plan (removing ``dims`` of its weight) keeps."""
    w: torch.Tensor = orig.weight  # type: ignore[assignment]
    return np.setdiff1d(np.arange(w.shape[0]), dims.get(0, np.zeros(0, dtype=np.int64)))


def _sq_error(gram: torch.Tensor, aty: torch.Tensor, yy: torch.Tensor, sol: torch.Tensor) -> float:
    """|A·sol − Y|² from the normal equations: solᵀ(AᵀA)sol − 2·solᵀ(AᵀY) + |Y|²."""
    return float(((sol * (gram @ sol)).sum() - 2 * (sol * aty).sum()).cpu() + yy)
