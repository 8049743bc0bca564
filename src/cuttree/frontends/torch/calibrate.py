"""Statistics that data-driven criteria need, gathered from calibration data.

Calibration data is any iterable of batches: a tensor ``x``, or a pair ``(x, y)`` (``y`` is
needed by ``taylor``, except by a causal language model, whose loss is next-token prediction on
the calibration text itself), or a dict of keyword inputs; a map-style ``torch.utils.data.Dataset``
of samples is batched in order. At most ``calib_samples`` samples are used; fewer than
``min_samples`` is an error, never a silent fallback.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cuttree.config import Config
from cuttree.errors import warn
from cuttree.frontends.torch import layerwise
from cuttree.frontends.torch.groups import DependencyGraph
from cuttree.frontends.torch.rules import rule_for_module
from cuttree.frontends.torch.util import eval_mode, model_device, primary_output, removing
from cuttree.recover.batching import capped, forward

MAX_HESSIAN_COLUMNS = 8192  #: a reader's Hessian (float64) of this many inputs takes 512 MiB


def batches(
    data: Iterable[Any] | None, cfg: Config, need_labels: bool, device: torch.device | None = None
) -> Iterator[tuple[Any, torch.Tensor | None]]:
    """Yield ``(x, y)`` batches up to ``calib_samples`` samples, on ``device`` (the model's, where
    the data is elsewhere); check ``min_samples``. ``x`` is a tensor, or a dict of tensors for a
    model called with keyword inputs (``model(**x)``, e.g. ``input_ids`` and ``attention_mask``)."""
    if data is None:
        raise ValueError(
            f"criterion '{cfg.criterion}' needs calibration data; pass calib_data= (an iterable of (x, y) batches) "
            "or use a data-free criterion (l1, l2, bn_scale, random)"
        )
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = torch.utils.data.DataLoader(data, batch_size=64)

    def pairs() -> Iterator[tuple[Any, torch.Tensor | None]]:
        for batch in data:
            x, y = split_batch(batch, "calibration")
            if need_labels and y is None:
                raise ValueError(f"criterion '{cfg.criterion}' needs labels; give calibration batches as (x, y) pairs")
            yield x, y

    for x, y in capped(pairs(), cfg.calib_samples, cfg.min_samples):
        yield to_device(x, device), (y.to(device) if y is not None else None)


def split_batch(batch: Any, what: str) -> tuple[Any, torch.Tensor | None]:
    """A batch as ``(x, y)``: a tensor (no labels), an ``(x, y)`` pair, or a dict of keyword inputs
    (``model(**x)``, e.g. ``input_ids`` and ``attention_mask``) whose labels, if any, are under ``labels``.

    >>> x, y = split_batch({"input_ids": torch.ones(2, 3), "labels": torch.zeros(2, 3)}, "training")
    >>> sorted(x), tuple(y.shape)
    (['input_ids'], (2, 3))
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, list | tuple) and len(batch) >= 1 and isinstance(batch[0], torch.Tensor | Mapping):
        x = batch[0]
        if isinstance(x, Mapping):
            x = dict(x)
        return x, batch[1] if len(batch) > 1 else None
    if isinstance(batch, Mapping) and batch and all(isinstance(v, torch.Tensor) for v in batch.values()):
        return {k: v for k, v in batch.items() if k != "labels"}, batch.get("labels")
    raise TypeError(
        f"{what} batch of type {type(batch).__name__}; expected a tensor, an (x, y) pair, or a dict of tensors "
        "(keyword inputs such as input_ids and attention_mask; labels under 'labels')"
    )


def to_device(x: Any, device: torch.device | None) -> Any:
    """A batch's inputs (a tensor, or a dict of keyword tensors) on ``device``."""
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


def task_loss(out: Any, y: torch.Tensor, mode: str, ignore_index: int = 255) -> torch.Tensor:
    """Cross-entropy on the first output: logits (N, C) or per-pixel maps (N, C, H, W)."""
    logits = primary_output(out)
    if mode == "segmentation":
        return F.cross_entropy(logits, y.long(), ignore_index=ignore_index)
    if logits.dim() != 2 or y.dim() != 1:
        raise ValueError(
            f"classification loss needs logits (N, classes) and one label per sample (N,), got logits of shape "
            f"{tuple(logits.shape)} and labels of shape {tuple(y.shape)} (a language model's per-token output?); "
            "use a criterion without a loss (l1, l2, activation), labels of one class per sample, or a model that "
            "computes its own loss from labels= (as Hugging Face models do)"
        )
    return F.cross_entropy(logits, y.long())


def takes_labels(model: nn.Module) -> bool:
    """Whether ``model`` computes its own loss from a ``labels`` keyword, as Hugging Face models do."""
    try:
        return "labels" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def is_causal_lm(model: nn.Module) -> bool:
    """A Hugging Face causal language model (``…ForCausalLM``, ``…LMHeadModel``): its loss on a text
    is next-token prediction on that text, so calibration text needs no labels of its own."""
    return takes_labels(model) and any(c.__name__.endswith(("ForCausalLM", "LMHeadModel")) for c in type(model).__mro__)


def text_labels(x: Any) -> torch.Tensor:
    """A causal language model's labels for its own input: the token ids, with padding
    (``attention_mask == 0``) set to -100, which Hugging Face's losses ignore."""
    ids = x["input_ids"] if isinstance(x, dict) else x
    mask = x.get("attention_mask") if isinstance(x, dict) else None
    return ids if mask is None else ids.masked_fill(mask == 0, -100)


def logits_of(out: Any) -> torch.Tensor:
    """A model output's logits: a Hugging Face output's ``logits`` (its first value may be the
    loss), else the first output (:func:`~cuttree.frontends.torch.util.primary_output`)."""
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]  # type: ignore[no-any-return]
    return primary_output(out)  # type: ignore[no-any-return]


def loss_and_logits(
    model: nn.Module, x: Any, y: torch.Tensor, cfg: Config, call: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss and the logits it was computed from. A model that takes ``labels``
    (Hugging Face) computes its own loss (shifted next-token cross-entropy for a causal LM, its
    task's loss otherwise); any other model gets the task's cross-entropy on its first output
    (:func:`task_loss`). ``call`` runs the forward pass in ``model``'s place (a DDP wrapper)."""
    run = model if call is None else call
    if takes_labels(model):
        out = run(**x, labels=y) if isinstance(x, dict) else run(x, labels=y)
        loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
        if loss is not None:
            return loss, logits_of(out)
    else:
        out = forward(run, x)
    return task_loss(out, y, cfg.mode, cfg.finetune.ignore_index), logits_of(out)


def model_loss(model: nn.Module, x: Any, y: torch.Tensor, cfg: Config) -> torch.Tensor:
    """The loss ``taylor`` differentiates (:func:`loss_and_logits`)."""
    return loss_and_logits(model, x, y, cfg)[0]


def gradients(model: nn.Module, data: Iterable[Any] | None, cfg: Config) -> dict[str, torch.Tensor]:
    """Summed loss gradients of every parameter over the calibration data (model in eval mode).
    A causal language model's calibration text needs no labels: its loss is next-token prediction
    on the text itself (the objective LLM-Pruner scores with)."""
    params = dict(model.named_parameters())
    grads = {k: torch.zeros_like(p) for k, p in params.items()}
    lm = is_causal_lm(model)
    with eval_mode(model):
        for x, y in batches(data, cfg, need_labels=not lm, device=model_device(model)):
            model.zero_grad(set_to_none=True)
            model_loss(model, x, text_labels(x) if y is None else y, cfg).backward()
            for k, p in params.items():
                if p.grad is not None:
                    grads[k] += p.grad
        model.zero_grad(set_to_none=True)
    return grads


def activations(
    model: nn.Module, graph: DependencyGraph, data: Iterable[Any] | None, cfg: Config
) -> dict[str, torch.Tensor]:
    """Mean |output| per output channel of every producer layer, keyed ``"weight name@dim"``."""
    modules = dict(model.named_modules())
    wanted: dict[str, tuple[str, int]] = {}
    for g in graph.groups:
        for m in g.members:
            mod_name, _, attr = m.tensor.rpartition(".")
            rule = rule_for_module(modules[mod_name])
            if rule.producer and attr == "weight" and rule.out_dims.get(attr) == m.dim:
                wanted[mod_name] = (m.tensor, m.dim)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Any:
        def fn(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
            d = rule_for_module(mod).act_dim % out.dim()
            a = out.detach().abs().movedim(d, 0).reshape(out.shape[d], -1)
            sums[name] = sums.get(name, 0) + a.sum(1)  # type: ignore[assignment]
            counts[name] = counts.get(name, 0) + a.shape[1]

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in wanted]
    with removing(handles), eval_mode(model), torch.no_grad():
        for x, _ in batches(data, cfg, need_labels=False, device=model_device(model)):
            forward(model, x)
    return {f"{t}@{d}": (sums[n] / counts[n]).double() for n, (t, d) in wanted.items() if n in sums}


def readers(model: nn.Module, graph: DependencyGraph) -> dict[str, tuple[str, int]]:
    """The layers that read a group's channels as their input features, by module name: the
    weight name and its input dim (a linear layer's columns, an ungrouped convolution's input
    channels; grouped and transposed convolutions are left out)."""
    modules = dict(model.named_modules())
    out: dict[str, tuple[str, int]] = {}
    for g in graph.groups:
        for m in g.members:
            name, _, attr = m.tensor.rpartition(".")
            mod = modules[name]
            conv = isinstance(mod, nn.modules.conv._ConvNd) and not mod.transposed and mod.groups == 1
            if attr == "weight" and m.dim == 1 and (isinstance(mod, nn.Linear) or conv):
                out[name] = (m.tensor, m.dim)
    return out


def input_statistics(
    model: nn.Module, graph: DependencyGraph, data: Iterable[Any] | None, cfg: Config, needs: str
) -> dict[str, torch.Tensor]:
    """Per input feature of every layer reading a group (:func:`readers`), over the calibration
    data, keyed ``"weight name@dim"``: ``input_norms`` ‖x‖₂, ``input_moments`` the variance,
    ``hessian`` the mean of xxᵀ over tokens, of linear readers only (float64, one forward pass
    of the model per batch)."""
    modules = dict(model.named_modules())
    wanted = readers(model, graph)
    if needs == "hessian":
        wanted = {n: r for n, r in wanted.items() if isinstance(modules[n], nn.Linear)}
        if wide := [n for n in wanted if modules[n].in_features > MAX_HESSIAN_COLUMNS]:
            warn(
                f"criterion '{cfg.criterion}' leaves out {len(wide)} layer(s) with over {MAX_HESSIAN_COLUMNS} inputs "
                f"({', '.join(wide[:3])}): their Hessian would not fit in memory; the channels they read are scored by "
                "their other readers, or by l1 (the plan records it)"
            )
            wanted = {n: r for n, r in wanted.items() if n not in wide}

    def run() -> None:
        for x, _ in batches(data, cfg, need_labels=False, device=model_device(model)):
            forward(model, x)

    with eval_mode(model):
        acc = layerwise.statistics({n: modules[n] for n in wanted}, needs, run)
    out: dict[str, torch.Tensor] = {}
    for n, (t, d) in wanted.items():
        if n not in acc:
            continue
        if needs == "input_norms":
            out[f"{t}@{d}"] = acc[n].sqrt()
        elif needs == "hessian":
            out[f"{t}@{d}"] = acc[n] / acc[f"{n}#n"]
        else:
            mean, sq = acc[n] / acc[f"{n}#n"]
            out[f"{t}@{d}"] = (sq - mean * mean).clamp_min(0)
    return out


def norm_scales(model: nn.Module, graph: DependencyGraph) -> dict[str, torch.Tensor]:
    """γ of every norm layer in a group, keyed ``"weight name@0"`` (for ``bn_scale``)."""
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for g in graph.groups:
        for m in g.members:
            mod_name, _, attr = m.tensor.rpartition(".")
            if attr == rule_for_module(modules[mod_name]).scale:
                out[f"{m.tensor}@{m.dim}"] = getattr(modules[mod_name], attr).detach().reshape(-1)
    return out
