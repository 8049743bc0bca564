"""Refit the layers that lost input channels so they reproduce the original model's outputs.

After surgery, a conv or linear layer whose *input* channels were removed computes something
else than before. Its remaining weights can be refitted in closed form (ridge least squares,
as in He et al. 2017 and ThiNet): on calibration data, the inputs the *pruned* model feeds the
layer are regressed onto the outputs the *original* layer gave (its kept output channels).
Layers are refitted one at a time in the order the forward pass uses them, so each fit also
absorbs the error of the layers before it. The normal equations are summed batch by batch, so
batches need not share a shape: text batches of keyword inputs (``model(**batch)``) of any
length work, and where a batch has an ``attention_mask`` its padding tokens are left out of the
fit. Grouped convs and convs with non-zero padding modes or string padding are left as they are.

>>> import torch, cuttree
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
>>> r = cuttree.prune(net, (torch.randn(1, 3, 8, 8),), cuttree.Config(ratio=0.5, latency_runs=0))
>>> data = [torch.randn(16, 3, 8, 8)]
>>> x = torch.randn(4, 3, 8, 8)
>>> before = (r.model(x) - net(x)).pow(2).mean().item()
>>> reconstruct(net, r.model, r.plan, data, cuttree.Config(ratio=0.5, min_samples=8))
['2']
>>> (r.model(x) - net(x)).pow(2).mean().item() < before
True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cuttree.config import Config
from cuttree.core.plan import PruningPlan
from cuttree.frontends.torch.calibrate import batches
from cuttree.frontends.torch.util import eval_mode, model_device, removing
from cuttree.recover.batching import forward
from cuttree.recover.least_squares import Normal, capture, kept_outputs, refittable, rows_of, targets_of
from cuttree.recover.reconstruct_stack import reconstruct_stack


def _real_tokens(mod: nn.Module, x: Any, rows: int) -> torch.Tensor | None:
    """For a Linear fed ``(B, T, C)`` by a model called with an ``attention_mask`` ``(B, T)``: which
    of its ``rows`` are real tokens (padding is not fitted); else None (every row counts)."""
    mask = x.get("attention_mask") if isinstance(x, dict) else None
    if not isinstance(mod, nn.Linear) or mask is None or mask.numel() != rows:
        return None
    return mask.reshape(-1) != 0


def reconstruct(
    original: nn.Module,
    pruned: nn.Module,
    plan: PruningPlan,
    calib_data: Iterable[Any] | None,
    cfg: Config,
    max_rows: int = 32768,
    ridge: float = 1e-3,
) -> list[str]:
    """Refit, in place, every conv/linear of ``pruned`` that lost input channels; returns their names.

    ``calib_data`` is calibration data as for the data-driven criteria (at most
    ``cfg.calib_samples`` samples, at least ``cfg.min_samples``): tensors, ``(x, y)`` pairs or
    dicts of keyword inputs. At most ``max_rows`` rows (output positions, real tokens) are sampled
    per layer, an equal share from each batch; ``ridge`` scales the regulariser relative to the
    mean diagonal of the normal matrix. A refit is kept only if it lowers the layer's error.
    A language model's layers inside its stack of decoder layers are refitted decoder layer by
    decoder layer (:func:`cuttree.recover.reconstruct_stack.reconstruct_stack`), the rest as here.
    """
    device = model_device(pruned)
    parts = [b for b, _ in batches(calib_data, cfg, need_labels=False, device=device)]
    gone = plan.removed_positions()
    orig_mods = dict(original.named_modules())
    g = torch.Generator().manual_seed(cfg.seed)
    done, inside = reconstruct_stack(original, pruned, plan, parts, g, (max_rows, ridge))
    order: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda mm, i, n=n: order.append(n) if n not in order else None)
        for n, m in pruned.named_modules()
        if n not in inside and refittable(m, orig_mods.get(n), gone.get(f"{n}.weight", {}))
    ]
    with removing(hooks), eval_mode(pruned), torch.no_grad():
        forward(pruned, parts[0])
    with eval_mode(pruned), eval_mode(original), torch.no_grad():
        for name in order:
            mod = pruned.get_submodule(name)
            orig = orig_mods[name]
            keep = kept_outputs(orig, gone.get(f"{name}.weight", {}))
            normal = Normal(getattr(mod, "bias", None) is not None, max_rows // len(parts), g)
            for b in parts:
                rows = rows_of(mod, capture(lambda: forward(pruned, b), mod, want_input=True))  # noqa: B023
                y = targets_of(mod, capture(lambda: forward(original, b), orig, want_input=False), keep)  # noqa: B023
                real = _real_tokens(mod, b, len(rows))
                if real is not None:
                    rows, y = rows[real], y[real]
                normal.add(rows, y)
            if normal.refit(mod, ridge):
                done.append(name)
    return done
