"""Old import path of :mod:`cuttree.core.plan` (kept until a major version)."""

from cuttree.core.plan import PLAN_VERSION, GroupPlan, PlanMember, PruningPlan, compose

__all__ = ["PLAN_VERSION", "GroupPlan", "PlanMember", "PruningPlan", "compose"]
