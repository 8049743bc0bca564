"""Old import path of :mod:`cuttree.core.budget` (kept until a major version)."""

from cuttree.core.budget import GroupBudget, estimate_macs, search_macs, select

__all__ = ["GroupBudget", "estimate_macs", "search_macs", "select"]
