"""One-shot sparsity with calibration statistics, one decoder layer at a time (SparseGPT's and
Wanda's procedure for language models).

The statistics a weight criterion reads (Wanda's input norms ‖x_j‖₂, SparseGPT's Hessian
2/n·XᵀX) are gathered by forward hooks on the layers being pruned. With ``sequential``, a
language model's stack of decoder layers (:func:`decoder_stack`) is walked in order: the inputs
of the first layer are captured for every calibration batch, then each layer is calibrated on
them, pruned (its weights zeroed, and with SparseGPT updated), and run again to give the next
layer its inputs, so every layer is calibrated on what the already-pruned layers before it
produce. Only one layer's activations are held at a time. Without ``sequential`` the statistics
come from one pass of the dense model. Each layer's time and the process's peak memory are logged
(``logging`` at INFO, logger ``cuttree``).
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from cuttree.config import Config
from cuttree.core import masks as core_masks
from cuttree.core.allocate import outlier_ratio, owl_sparsities
from cuttree.core.importance import REGISTRY
from cuttree.core.obs import sparsegpt
from cuttree.errors import warn
from cuttree.frontends.torch.util import eval_mode, removing, to_numpy
from cuttree.recover.batching import forward

log = logging.getLogger("cuttree")
Stats = dict[str, torch.Tensor]


def decoder_stack(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's stack of decoder layers, by name: its longest ``nn.ModuleList`` of one class
    whose layers hold Linear layers (``model.layers`` of a Hugging Face causal LM); ``None`` if
    it has none of at least two layers.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> lm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    >>> decoder_stack(lm)[0], decoder_stack(nn.Sequential(nn.Linear(2, 2)))
    ('model.layers', None)
    """
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) < 2 or len({type(c) for c in m}) != 1:
            continue
        if not any(isinstance(x, nn.Linear) for x in m[0].modules()):
            continue
        if best is None or len(m) > len(best[1]):
            best = (name, m)
    return best


def sequential_for(model: nn.Module, config: Config) -> bool:
    """Whether sparsifying ``model`` with ``config`` goes layer by layer: as ``sequential`` says,
    or where unset, under ``allocation: owl`` and wherever the model has a decoder stack and the
    criterion reads data."""
    if config.sequential is not None:
        return config.sequential
    if config.allocation == "owl":
        return True
    return REGISTRY.lookup(config.criterion).data_driven and decoder_stack(model) is not None


def statistics(layers: dict[str, nn.Module], needs: str, run: Callable[[], object]) -> Stats:
    """What ``needs`` asks of each layer's inputs while ``run`` runs: ``input_norms`` the sum of
    squares of each input feature, ``input_moments`` the sums of x and of x² (2 × features),
    ``hessian`` the sum of xxᵀ over tokens (all float64), with the token count under ``"<name>#n"``."""
    acc: Stats = {}
    last: list[Any] = [None, None, None]  # the input last seen (held, so never reused), its version, its statistic

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if last[0] is not inp[0] or last[1] != inp[0]._version or last[2][0] != isinstance(mod, nn.Linear):
                x = inp[0].detach()
                if isinstance(mod, nn.Linear):
                    x = x.reshape(-1, x.shape[-1])
                else:  # a convolution's input features are its channels
                    x = x.movedim(1, -1).reshape(-1, x.shape[1])
                x = x.double()
                if needs == "hessian":
                    stat = x.T @ x
                elif needs == "input_moments":
                    stat = torch.stack([x.sum(0), (x * x).sum(0)])
                else:
                    stat = (x * x).sum(0)
                last[:] = [inp[0], inp[0]._version, (isinstance(mod, nn.Linear), stat, len(x))]
            _, stat, n = last[2]  # q, k and v (gate and up) read one input: its statistic is taken once
            acc[name] = acc.get(name, 0) + stat  # type: ignore[assignment]
            acc[f"{name}#n"] = acc.get(f"{name}#n", 0) + torch.tensor(n)  # type: ignore[assignment]

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    with removing(handles), torch.no_grad():
        run()
    last.clear()
    return acc


def prune_layers(layers: dict[str, nn.Module], stats: Stats, config: Config, ratio: float | None) -> dict[str, Any]:
    """Keep-masks (numpy) for ``layers`` from their statistics; their weights are zeroed where
    the mask drops them, and with SparseGPT replaced by the OBS update, in place."""
    nm = tuple(int(v) for v in config.nm.split(":")) if config.nm else None
    out: dict[str, Any] = {}
    for name, m in layers.items():
        w = m.weight.detach()  # type: ignore[union-attr, operator]
        if name not in stats:  # never ran on the calibration data: nothing to weigh its inputs by
            warn(f"layer {name} saw no calibration input; kept dense. Check that the calibration data reaches it")
            out[name] = np.ones(tuple(w.shape), dtype=bool)
            continue
        if config.criterion == "sparsegpt":
            if w.dim() != 2:
                raise ValueError(f"criterion sparsegpt prunes Linear layers; {name} is a convolution: add it to ignore")
            h = 2.0 / float(stats[f"{name}#n"]) * to_numpy(stats[name])
            new, keep = sparsegpt(to_numpy(w), h, ratio, nm, seed=config.tie_seed)  # type: ignore[arg-type]
            w.copy_(torch.from_numpy(new).to(w))
        else:
            norm = stats[name].sqrt()  # float64, as the score
            score = to_numpy(w.abs().double() * norm.view(1, -1, *([1] * (w.dim() - 2))))
            keep = _mask(name, score, config, ratio, nm)
        w.mul_(torch.from_numpy(np.ascontiguousarray(keep)).to(w.device))
        out[name] = keep
    return out


def _mask(name: str, score: np.ndarray, config: Config, ratio: float | None, nm: tuple[int, ...] | None) -> np.ndarray:
    if nm is not None:
        return core_masks.nm_masks({name: score}, nm[0], nm[1], {name: 1}, config.tie_seed)[name]
    return core_masks.magnitude_masks({name: score}, ratio, config.threshold, config.scope, None, config.tie_seed)[name]


def sequential_masks(
    model: nn.Module, layers: dict[str, nn.Module], config: Config, batches: Iterable[Any], ratio: float | None
) -> dict[str, Any]:
    """Keep-masks of ``layers`` pruned decoder layer by decoder layer (the module's docstring);
    under ``allocation: owl`` each decoder layer at its own sparsity (:func:`owl_ratios`)."""
    found = decoder_stack(model)
    if found is None:
        raise ValueError(
            "sequential calibration and allocation: owl need a stack of decoder layers (an nn.ModuleList) and this "
            "model has none; set sequential: false and allocation: uniform"
        )
    if config.scope == "global":
        raise ValueError("scope: global ranks every layer together, which layer-by-layer calibration cannot; "
                         "set scope: row or local, or sequential: false")  # fmt: skip
    stack_name, stack = found
    outside = [n for n in layers if not n.startswith(f"{stack_name}.")]
    if outside:
        warn(
            f"kept {len(outside)} layer(s) outside the decoder layers dense under sequential calibration "
            f"({', '.join(outside[:3])}); set sequential: false to prune them too"
        )
    needs = REGISTRY.lookup(config.criterion).needs
    masks: dict[str, Any] = {n: np.ones(tuple(layers[n].weight.shape), dtype=bool) for n in outside}  # type: ignore[union-attr, arg-type]
    with eval_mode(model), torch.no_grad():
        inputs = first_inputs(model, stack, batches)
        ratios = [ratio] * len(stack)
        if config.allocation == "owl" and ratio is not None:
            ratios = list(owl_ratios(stack_name, stack, layers, config, inputs, ratio))
        for i, block in enumerate(stack):
            t0 = time.perf_counter()
            mine = _in_block(layers, stack_name, i)
            stats = statistics(mine, needs, lambda: [call_block(block, a, k) for a, k in inputs])  # noqa: B023
            masks |= prune_layers(mine, stats, config, ratios[i])
            inputs = advance(block, inputs)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
            log.info(
                "layer %d/%d pruned%s in %.2f s (peak memory %.2f GB)",
                *(i + 1, len(stack), f" to {ratios[i]:.3f}" if config.allocation == "owl" else ""),
                *(time.perf_counter() - t0, peak),
            )
    return masks


def owl_ratios(
    stack_name: str,
    stack: nn.ModuleList,
    layers: dict[str, nn.Module],
    config: Config,
    inputs: list[tuple[tuple[Any, ...], dict[str, Any]]],
    ratio: float,
) -> list[float]:
    """Each decoder layer's sparsity under ``allocation: owl``: the dense model is run layer by
    layer on the calibration inputs, each layer's Wanda scores |w|·‖x‖ pooled and their outlier
    share taken (:func:`cuttree.core.allocate.outlier_ratio`), then spread around ``ratio``
    (:func:`cuttree.core.allocate.owl_sparsities`)."""
    shares = []
    for i, block in enumerate(stack):
        mine = _in_block(layers, stack_name, i)
        outs: list[torch.Tensor] = []
        stats = statistics(mine, "input_norms", lambda: outs.extend(call_block(block, a, k) for a, k in inputs))  # noqa: B023
        scores = [to_numpy(m.weight.detach().abs().double() * stats[n].sqrt()) for n, m in mine.items() if n in stats]  # type: ignore[union-attr, operator]
        shares.append(outlier_ratio(scores, config.owl.m) if scores else 0.0)
        inputs = [((o, *a[1:]), k) for o, (a, k) in zip(outs, inputs, strict=True)]
    ratios = owl_sparsities(shares, ratio, config.owl.spread)
    log.info("owl: outlier shares %s → sparsities %s", [round(d, 4) for d in shares], [round(r, 3) for r in ratios])
    return ratios


def _in_block(layers: dict[str, nn.Module], stack_name: str, i: int) -> dict[str, nn.Module]:
    return {n: m for n, m in layers.items() if n.startswith(f"{stack_name}.{i}.")}


class _Captured(Exception):
    """Raised by the hook that catches the first decoder layer's inputs, to stop the forward."""


def first_inputs(
    model: nn.Module, stack: nn.ModuleList, batches: Iterable[Any]
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The positional and keyword inputs of the first decoder layer, for every batch."""
    got: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def catch(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        got.append((args, kwargs))
        raise _Captured

    config = getattr(model, "config", None)
    cache = getattr(config, "use_cache", None)
    if cache is not None:
        config.use_cache = False  # type: ignore[union-attr]  # a cache would carry one layer's keys into the next
    try:
        with removing([stack[0].register_forward_pre_hook(catch, with_kwargs=True)]):
            for x in batches:
                try:
                    forward(model, x)
                except _Captured:
                    pass
    finally:
        if cache is not None:
            config.use_cache = cache  # type: ignore[union-attr]
    return got


def advance(
    block: nn.Module, inputs: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The next decoder layer's inputs: ``block``'s output in place of each batch's hidden states."""
    return [((call_block(block, a, k), *a[1:]), k) for a, k in inputs]


def call_block(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """One decoder layer's hidden states out (Hugging Face layers return them alone or first of a tuple)."""
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out
