"""Unstructured and N:M sparsity: masks, schedules, and the paired verbs.

Masks live in ``torch.nn.utils.parametrize`` (``weight`` is recomputed as ``original * mask``),
so a sparse model stays copyable, trainable and saveable; :func:`strip` makes the zeros
permanent and removes the parametrization. Which weights: the ``weight`` of every Conv and
Linear layer (the rules table's producers), minus ``ignore``; the model's output layer is kept
dense unless named in ``layers`` (its few weights carry the class logits).

- ``magnitude``: |w|; ``wanda``: |w| · ‖x_j‖₂ for input feature j (Sun et al., 2023), from
  calibration data; ``sparsegpt``: the OBS update (:mod:`cuttree.core.obs`). Layer-wise
  (``scope: local``), one global ranking (``scope: global``) or per output row (``scope: row``).
  A language model is calibrated decoder layer by decoder layer
  (:mod:`~cuttree.frontends.torch.layerwise`, ``sequential``).
- ``ratio`` is the sparsity (fraction of zeros); ``threshold`` zeroes what scores below that
  fraction of the layer's largest score.
- N:M (``nm: "2:4"``): in every run of M consecutive weights along the input dim, keep the N
  largest scores.
- Gradual schedules are pure functions of the step (:mod:`cuttree.core.schedule`); the mask
  arithmetic is the core's (:mod:`cuttree.core.masks`), on numpy, shared with the Keras frontend.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from cuttree.config import Config
from cuttree.core import masks as core_masks
from cuttree.core.importance import REGISTRY
from cuttree.core.names import resolve, selected
from cuttree.core.results import SparsifyResult
from cuttree.core.schedule import due, polynomial_sparsity
from cuttree.errors import warn
from cuttree.frontends.torch import calibrate, layerwise
from cuttree.frontends.torch.fold import computes_its_weight
from cuttree.frontends.torch.rules import rule_for_module
from cuttree.frontends.torch.trace import module_names
from cuttree.frontends.torch.util import eval_mode, model_device, to_numpy
from cuttree.recover.batching import forward

__all__ = [
    "Mask",
    "apply_masks",
    "gradual",
    "input_norms",
    "magnitude_masks",
    "nm_masks",
    "polynomial_sparsity",
    "prunable_layers",
    "scores",
    "sparsity",
    "strip",
]


class Mask(nn.Module):
    """A parametrization: ``weight = original * mask`` (the mask is a buffer, saved with the model)."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def prunable_layers(
    model: nn.Module, ignore: Sequence[str] = (), include_output: Sequence[str] = ()
) -> dict[str, nn.Module]:
    """Conv and Linear layers by name (the last producer, the output layer, only if named)."""
    layers = {
        n: m
        for n, m in model.named_modules()
        if rule_for_module(m).producer and isinstance(getattr(m, "weight", None), torch.Tensor)
    }
    if layers:
        last = list(layers)[-1]
        if not selected(include_output, last):
            layers.pop(last)
    return {n: m for n, m in layers.items() if not selected(ignore, n)}


def _weight(m: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original.detach()  # type: ignore[union-attr, operator]
    return m.weight.detach()  # type: ignore[union-attr, operator]


def scores(layers: dict[str, nn.Module], input_norms: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """|w|, or |w|·‖x_j‖ (Wanda) where input norms are given (broadcast over the input dim, 1)."""
    out = {}
    for n, m in layers.items():
        s = _weight(m).abs().float()
        if input_norms is not None:
            norm = input_norms[n].float()
            s = s * norm.view(1, -1, *([1] * (s.dim() - 2)))
        out[n] = s
    return out


def _to_torch(masks: dict[str, Any], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(np.ascontiguousarray(m)).to(like[n].device) for n, m in masks.items()}


def magnitude_masks(
    score: dict[str, torch.Tensor],
    ratio: float | None = None,
    threshold: float | None = None,
    scope: str = "local",
    per_layer: dict[str, float] | None = None,
    seed: int | None = 0,
) -> dict[str, torch.Tensor]:
    """Keep-masks by score (:func:`cuttree.core.masks.magnitude_masks`; ``scope: row`` compares
    each output row, dim 0), on the scores' device.

    >>> m = magnitude_masks({"a": torch.tensor([3.0, 1.0, 2.0, 4.0])}, ratio=0.5)
    >>> m["a"].tolist()
    [True, False, False, True]
    """
    arrays = {n: to_numpy(s) for n, s in score.items()}
    return _to_torch(core_masks.magnitude_masks(arrays, ratio, threshold, scope, per_layer, seed), score)


def nm_masks(score: dict[str, torch.Tensor], n: int, m: int, seed: int | None = 0) -> dict[str, torch.Tensor]:
    """N:M keep-masks along the input dim (dim 1: Linear inputs, conv input channels).

    >>> nm_masks({"a": torch.tensor([[4.0, 1.0, 3.0, 2.0]])}, 2, 4)["a"].tolist()
    [[True, False, True, False]]
    """
    arrays = {k: to_numpy(s) for k, s in score.items()}
    return _to_torch(core_masks.nm_masks(arrays, n, m, dict.fromkeys(arrays, 1), seed), score)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Attach (or replace) each layer's mask as a ``weight`` parametrization, in place."""
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        mod = mods[name]
        if parametrize.is_parametrized(mod, "weight"):
            mod.parametrizations.weight[0].mask.copy_(mask)  # type: ignore[index, union-attr]
        else:
            parametrize.register_parametrization(mod, "weight", Mask(mask))
    return model


def strip(model: nn.Module) -> nn.Module:
    """Make the masks permanent (zeros in ``weight``) and remove the parametrizations, in place."""
    for mod in model.modules():
        if parametrize.is_parametrized(mod, "weight"):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
    return model


def sparsity(model: nn.Module, layers: Iterable[str] | None = None) -> float:
    """Fraction of zeros among the weights of ``layers`` (default: every Conv/Linear weight)."""
    mods = dict(model.named_modules())
    names = list(layers) if layers is not None else [n for n, m in mods.items() if rule_for_module(m).producer]
    zeros = total = 0
    for n in names:
        w = mods[n].weight  # type: ignore[union-attr]
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


def input_norms(model: nn.Module, layers: dict[str, nn.Module], batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """‖x_j‖₂ over the calibration data of every input feature/channel j of each layer (Wanda),
    in one pass of the model (:func:`cuttree.frontends.torch.layerwise.statistics`, float64)."""
    stats = layerwise.statistics(layers, "input_norms", lambda: [forward(model, x) for x in batches])
    return {n: v.sqrt() for n, v in stats.items() if not n.endswith("#n")}


def masked(
    model: nn.Module,
    config: Config,
    calib_data: Iterable[Any] | None = None,
    inplace: bool = False,
    sparsity_now: float | None = None,
) -> SparsifyResult:
    """``model`` (or a copy) with its layers' weights masked as ``config`` asks (what
    :func:`cuttree.sparsify` does): by magnitude, by Wanda's score, or N:M; ``sparsity_now``
    overrides the ratio (a gradual schedule's step)."""
    names = module_names(model)
    ignore = [n for hits in resolve(config.ignore, names, "ignore").values() for n in hits]
    overrides = resolve(config.layers, names, "layers")
    work = model if inplace else copy.deepcopy(model)
    layers = prunable_layers(work, ignore, include_output=list(config.layers))
    if computed := [n for n, m in layers.items() if computes_its_weight(m, besides=(Mask,))]:
        warn(
            f"kept {len(computed)} layer(s) dense that compute their weight in forward ({', '.join(computed[:3])}"
            f"{' …' if len(computed) > 3 else ''}; weight standardization or weight norm, say): zeros in their "
            "parameter would not be zeros in the weight they use; fold them first with "
            "cuttree.frontends.torch.fold.fold_computed_weights(model, example_inputs)"
        )
        layers = {n: m for n, m in layers.items() if n not in computed}
    ratio = sparsity_now if sparsity_now is not None else config.ratio
    needs = REGISTRY.lookup(config.criterion).needs  # what it declares, never its name
    if needs == "hessian" or (sparsity_now is None and layerwise.sequential_for(work, config)):
        masks = _calibrated_masks(work, layers, config, calib_data, ratio)
        apply_masks(work, masks)
        return SparsifyResult(work, masks, sparsity(work, layers))
    norms = None
    if needs == "input_norms":  # Wanda
        batches = calibrate.batches(calib_data, config, need_labels=False, device=model_device(work))
        norms = input_norms(work, layers, (x for x, _ in batches))
    score = scores(layers, norms)
    if config.nm is not None:
        n, m = (int(v) for v in config.nm.split(":"))
        masks = nm_masks(score, n, m, config.tie_seed)
    else:
        per_layer = {
            h: o.ratio for p, o in config.layers.items() if o.ratio is not None for h in overrides[p] if h in layers
        }
        threshold = None if sparsity_now is not None else config.threshold
        masks = magnitude_masks(score, ratio, threshold, config.scope, per_layer, config.tie_seed)
    apply_masks(work, masks)
    return SparsifyResult(work, masks, sparsity(work, layers))


def _calibrated_masks(
    work: nn.Module, layers: dict[str, nn.Module], config: Config, calib_data: Iterable[Any] | None, ratio: float | None
) -> dict[str, torch.Tensor]:
    """Masks from calibration statistics gathered layer by layer (:mod:`~cuttree.frontends.torch.layerwise`),
    or, without ``sequential``, in one pass of the dense model; the weights are zeroed (and with
    SparseGPT updated) in place."""
    if config.layers:
        raise ValueError(
            f"per-layer overrides ({', '.join(config.layers)}) are not read by calibrated one-shot sparsity yet; "
            "drop layers: or set sequential: false with criterion wanda"
        )
    xs = [x for x, _ in calibrate.batches(calib_data, config, need_labels=False, device=model_device(work))]
    if layerwise.sequential_for(work, config):
        found = layerwise.sequential_masks(work, layers, config, xs, ratio)
    else:
        needs = REGISTRY.lookup(config.criterion).needs
        with eval_mode(work):
            stats = layerwise.statistics(layers, needs, lambda: [forward(work, x) for x in xs])
        with torch.no_grad():
            found = layerwise.prune_layers(layers, stats, config, ratio)
    return {n: torch.from_numpy(np.ascontiguousarray(k)).to(_weight(layers[n]).device) for n, k in found.items()}


def gradual(model: nn.Module, cfg: Config, calib_data: Iterable[Any] | None = None) -> Callable[[int], None]:
    """An ``on_step`` callback for :func:`cuttree.recover.train.finetune`: at every ``frequency``-th step
    of ``cfg.schedule`` it re-masks ``model`` (already sparsified) at the scheduled sparsity."""
    sch = cfg.schedule
    if sch is None:
        raise ValueError("gradual sparsity needs a schedule: section in the config")

    def on_step(step: int) -> None:
        if due(step, sch.begin_step, sch.end_step, sch.frequency):
            s = polynomial_sparsity(
                step, sch.initial_sparsity, sch.final_sparsity, sch.begin_step, sch.end_step, sch.frequency, sch.power
            )
            masked(model, cfg, calib_data, inplace=True, sparsity_now=s)

    return on_step
