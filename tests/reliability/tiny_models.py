"""Models small enough to prune thousands of times in a test (imported by the CLI by name)."""

from __future__ import annotations

from torch import nn


def mlp(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))
