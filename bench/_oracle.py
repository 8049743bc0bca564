"""The zeroing oracle's verdict for the zoo benches (shared by timm_zoo.py and hf_zoo.py)."""

from __future__ import annotations

from torch import nn

import cuttree

EXACT = 1e-4  # relative max error (over the oracle output's standard deviation) counted as equal


def norms_over_channels(model: nn.Module, plan: cuttree.PruningPlan) -> list[str]:
    """Names of the norm layers (other than batch norms) that lose channels: where their
    statistics span the channels, the zeroing oracle is not exact by design."""
    losing = {m.tensor.rpartition(".")[0] for g in plan.groups if g.removed.size for m in g.members}
    return sorted(
        n
        for n, m in model.named_modules()
        if n in losing and "Norm" in type(m).__name__ and not isinstance(m, nn.modules.batchnorm._BatchNorm)
    )


def verdict(oracle_rel: float, norms: list[str]) -> str:
    """``exact``, or how far off and how many norms over pruned channels may explain it."""
    exact = "exact" if oracle_rel < EXACT else f"off {oracle_rel:.1e}"
    return exact + (f" norms over pruned channels: {len(norms)}" if norms else "")
