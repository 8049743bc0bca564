"""Reference one-shot pruning of a Hugging Face causal LM (magnitude, Wanda, SparseGPT), written from the papers.

This module is an independent re-implementation of the published procedures, written from the papers'
descriptions (and checked against the behaviour of their public code, none of which is copied) so that a
benchmark can put a library's implementation side by side with it. It does not import cuttree.

Procedure (``prune_reference``), for a LLaMA-family model (``model.model.layers`` of decoder layers):

1. ``model.eval()``, everything under ``torch.no_grad()``, float32 forward passes, ``use_cache=False``.
2. Capture the inputs of decoder layer 0 for every calibration window (one window = one row of ``calib_ids``,
   batch size 1, no padding): a forward pre-hook (``with_kwargs=True``) on ``model.model.layers[0]`` records the
   hidden states and the keyword arguments the model passes to the layer (attention mask, position
   embeddings, position ids, cache, ...) and raises to stop the forward. The kwargs of each window are reused
   for every layer.
3. For each decoder layer in order: forward hooks on all its ``nn.Linear`` modules (q, k, v, o, gate, up, down)
   accumulate statistics over all tokens of all windows during one pass of the layer over every window's
   current inputs; then every Linear of the layer is pruned from those statistics; then the pruned layer is run
   again over every window to produce the next layer's inputs. Only one layer's activations are held.
   Magnitude pruning needs no data and skips the forward passes.

Methods (``W`` is (out_features, in_features); "N:M" keeps N of every M consecutive input columns of a row):

* magnitude: score |W|. Unstructured: zero the ``int(sparsity * W.numel())`` lowest scores of the whole
  matrix. N:M: in each group of M consecutive inputs of a row prune the M - N lowest scores.
* wanda (Sun et al. 2023): score ``|W_ij| * ||X_j||_2`` with ``||X_j||_2`` the L2 norm of input feature j over
  all calibration tokens (sum of squares accumulated in float64, score computed in float64). Unstructured:
  per OUTPUT ROW, zero the ``int(sparsity * in_features)`` lowest scores. N:M: as for magnitude.
* sparsegpt (Frantar & Alistarh 2023): ``H = (2 / n_tokens) * sum_x x x^T`` over all calibration tokens,
  accumulated as a running average in float64 (the public code divides by the number of windows instead of
  tokens; the algorithm is invariant to a positive scale of H, dampening included, since the damp is relative).
  Dead inputs (``H_ii == 0``): ``H_ii = 1`` and ``W[:, i] = 0``. Dampening: ``H += percdamp * mean(diag(H)) * I``
  (``percdamp = 0.01``). ``Hinv = cholesky(H^-1, upper=True)``. Columns are processed in blocks of
  ``blocksize = 128``; the whole solve (H, its inverse, the Cholesky factor, W and all updates) runs in float64
  and the result is cast back to the weight's dtype.
  - Unstructured mask, chosen adaptively at the start of each block from the current (already error-updated)
    weights: score ``W^2 / diag(Hinv_block)^2`` over the whole (rows x block columns) tile, flattened, as the
    public code does (``tmp.flatten()``; rows are therefore NOT individually balanced); the
    ``int(sparsity * tile.numel())`` lowest are pruned. (The public code prunes ``score <= sorted[k]``, i.e.
    k + 1 entries plus ties; here exactly k.)
  - N:M mask: at every block column i with ``i % M == 0``, per row, prune the M - N of columns i..i+M-1 with
    the lowest current ``W^2 / d^2``.
  - Per column i of the block: ``q = w * keep``, ``err = (w - q) / Hinv[i, i]``,
    ``W_block[:, i:] -= err ⊗ Hinv_block[i, i:]``; after the block, ``W[:, later] -= Err_block @ Hinv[block, later]``.

OWL (Yin et al. 2023, ``owl=(M, lamda)``, with wanda or sparsegpt, unstructured only): before pruning, the dense
model is run layer by layer over the calibration windows; each layer's Wanda scores of all its Linears are pooled
and its outlier ratio is the fraction of them above ``M`` times their mean. The ratios are min-max normalised to
[0, 2 * lamda], their mean subtracted, and layer l keeps ``1 - sparsity + that``: its sparsity is
``sparsity - (normalised_l - mean)`` (the paper's defaults: M = 5, lamda = 0.08).

Ties: every selection uses ``torch.sort(..., stable=True)`` on the scores in ascending order and prunes the
first k entries, so among equal scores the lowest (flattened row-major) index is pruned first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


class _StopForward(Exception):
    """Raised by the layer-0 pre-hook to stop the model's forward once the inputs are captured."""


def _capture_inputs(model: nn.Module, calib_ids: Tensor) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Hidden states and keyword arguments that decoder layer 0 receives, one entry per calibration window."""
    hidden: list[Tensor] = []
    kwargs_list: list[dict[str, Any]] = []

    def pre_hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kw = dict(kwargs)
        hidden.append(args[0] if args else kw.pop("hidden_states"))
        kwargs_list.append(kw)
        raise _StopForward

    handle = _decoder_layers(model)[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for row in calib_ids:
            try:
                model(row.unsqueeze(0), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return hidden, kwargs_list


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(model.model, "layers", None)
    assert isinstance(layers, nn.ModuleList)
    return layers


def _run_layer(layer: nn.Module, hidden: list[Tensor], kwargs_list: list[dict[str, Any]]) -> list[Tensor]:
    outs: list[Tensor] = []
    for h, kw in zip(hidden, kwargs_list, strict=True):
        out = layer(h, **kw)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


class _Stats:
    """Per-Linear input statistics: float64 sum of squares (Wanda) or running-average Hessian (SparseGPT)."""

    def __init__(self, in_features: int, hessian: bool) -> None:
        self.hessian = hessian
        self.n_tokens = 0
        self.sq = torch.zeros(in_features, dtype=torch.float64)
        self.h = torch.zeros(in_features, in_features, dtype=torch.float64) if hessian else torch.zeros(0)

    def add(self, x: Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        t = x.shape[0]
        if self.hessian:
            self.h *= self.n_tokens / (self.n_tokens + t)
            self.n_tokens += t
            self.h += (2.0 / self.n_tokens) * (x.T @ x)
        else:
            self.n_tokens += t
            self.sq += (x * x).sum(dim=0)


def _prune_lowest(scores: Tensor, k: int) -> Tensor:
    """Boolean mask (True = prune) of the k lowest entries of ``scores`` (flattened; ties: lowest index first)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[torch.sort(scores.flatten(), stable=True).indices[:k]] = True
    return mask.view_as(scores)


def _prune_lowest_per_row(scores: Tensor, k: int) -> Tensor:
    """Boolean mask (True = prune) of the k lowest entries of every row (ties: lowest index first)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], True)
    return mask


def _nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Boolean mask (True = prune) of the m - n lowest scores in every group of m consecutive columns of a row."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"in_features={cols} is not a multiple of M={m}")
    groups = scores.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.sort(groups, dim=2, stable=True).indices[..., : m - n], True)
    return mask.reshape(rows, cols)


def _sparsegpt(
    w: Tensor, h: Tensor, sparsity: float, nm: tuple[int, int] | None, blocksize: int, percdamp: float
) -> Tensor:
    """SparseGPT's blocked OBS solve in float64; returns the pruned, updated weight (float64)."""
    w = w.to(torch.float64).clone()
    h = h.clone()
    cols = w.shape[1]
    dead = torch.nonzero(h.diagonal() == 0).flatten()
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(percdamp * h.diagonal().mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    if nm is not None and (blocksize % nm[1] or cols % nm[1]):
        raise ValueError(f"blocksize={blocksize} and in_features={cols} must be multiples of M={nm[1]}")
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        hinv1 = hinv[i1:i2, i1:i2]
        d1 = hinv1.diagonal()
        err1 = torch.zeros_like(w1)
        if nm is None:
            prune1 = _prune_lowest(w1**2 / d1.unsqueeze(0) ** 2, int(sparsity * w1.numel()))
        else:
            prune1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                m = nm[1]
                prune1[:, i : i + m] = _nm_mask(w1[:, i : i + m] ** 2 / d1[i : i + m].unsqueeze(0) ** 2, nm[0], m)
            col = w1[:, i]
            q = torch.where(prune1[:, i], torch.zeros_like(col), col)
            err = (col - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q  # exact zeros where pruned (the update above leaves w - err * d = q up to rounding)
            err1[:, i] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def _prune_linear(
    lin: nn.Linear,
    method: str,
    stats: _Stats | None,
    sparsity: float,
    nm: tuple[int, int] | None,
    blocksize: int,
    percdamp: float,
) -> None:
    w = lin.weight.data
    if method == "sparsegpt":
        assert stats is not None
        lin.weight.data = _sparsegpt(w, stats.h, sparsity, nm, blocksize, percdamp).to(w.dtype)
        return
    if method == "magnitude":
        scores = w.abs()
        prune = _prune_lowest(scores, int(sparsity * w.numel())) if nm is None else _nm_mask(scores, *nm)
    else:  # wanda
        assert stats is not None
        scores = w.abs().to(torch.float64) * stats.sq.sqrt().unsqueeze(0)
        prune = _prune_lowest_per_row(scores, int(sparsity * w.shape[1])) if nm is None else _nm_mask(scores, *nm)
    w[prune] = 0.0


def prune_reference(
    model: nn.Module,
    calib_ids: Tensor,
    method: str,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    owl: tuple[float, float] | None = None,
) -> dict[str, float]:
    """Prune every nn.Linear inside model.model.layers (q,k,v,o,gate,up,down projections) in place,
    layer by layer; returns {layer-linear name: achieved sparsity}.

    ``method`` is "magnitude", "wanda" or "sparsegpt"; ``nm=(N, M)`` selects N:M sparsity along the input
    dimension (``sparsity`` is then ignored). Ties are broken by a stable ascending sort: among equal scores the
    lowest index is pruned first. See the module docstring for the exact procedure.
    """
    if method not in ("magnitude", "wanda", "sparsegpt"):
        raise ValueError(f"unknown method {method!r}")
    model.eval()
    names = {mod: name for name, mod in model.named_modules()}
    result: dict[str, float] = {}
    with torch.no_grad():
        hidden: list[Tensor] = []
        kwargs_list: list[dict[str, Any]] = []
        if method != "magnitude":
            hidden, kwargs_list = _capture_inputs(model, calib_ids)
        n_layers = len(_decoder_layers(model))
        per_layer = [sparsity] * n_layers if owl is None else _owl_sparsity(model, hidden, kwargs_list, sparsity, *owl)
        for layer, layer_sparsity in zip(_decoder_layers(model), per_layer, strict=True):
            linears = [mod for mod in layer.modules() if isinstance(mod, nn.Linear)]
            stats: dict[nn.Linear, _Stats] = {}
            if method != "magnitude":
                handles = []
                for lin in linears:
                    stats[lin] = _Stats(lin.in_features, hessian=method == "sparsegpt")
                    handles.append(lin.register_forward_hook(_stat_hook(stats[lin])))
                try:
                    _run_layer(layer, hidden, kwargs_list)
                finally:
                    for handle in handles:
                        handle.remove()
            for lin in linears:
                _prune_linear(lin, method, stats.get(lin), layer_sparsity, nm, blocksize, percdamp)
                result[names[lin]] = float((lin.weight == 0).double().mean())
            if method != "magnitude":
                hidden = _run_layer(layer, hidden, kwargs_list)
    return result


def _owl_sparsity(
    model: nn.Module, hidden: list[Tensor], kwargs_list: list[dict[str, Any]], sparsity: float, m: float, lamda: float
) -> list[float]:
    """OWL's per-layer sparsity from the dense model's layer-wise outlier ratios (module docstring)."""
    ratios = []
    for layer in _decoder_layers(model):
        linears = [mod for mod in layer.modules() if isinstance(mod, nn.Linear)]
        stats = {lin: _Stats(lin.in_features, hessian=False) for lin in linears}
        handles = [lin.register_forward_hook(_stat_hook(stats[lin])) for lin in linears]
        try:
            hidden = _run_layer(layer, hidden, kwargs_list)
        finally:
            for handle in handles:
                handle.remove()
        pooled = torch.cat([(lin.weight.abs().double() * stats[lin].sq.sqrt()).flatten() for lin in linears])
        ratios.append(float((pooled > m * pooled.mean()).double().mean()))
    r = torch.tensor(ratios, dtype=torch.float64)
    spread = (r - r.min()) / (r.max() - r.min()) * 2 * lamda if r.max() > r.min() else torch.zeros_like(r)
    return [float(sparsity - v) for v in spread - spread.mean()]


def _stat_hook(stats: _Stats) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
    def hook(_mod: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
        stats.add(args[0])

    return hook
