"""Old import path of :mod:`cuttree.core.importance` (kept until a major version)."""

from cuttree.core.importance import (
    CRITERIA,
    REGISTRY,
    Criterion,
    CriterionInfo,
    criterion,
    per_position,
    used_criterion,
)

__all__ = ["CRITERIA", "REGISTRY", "Criterion", "CriterionInfo", "criterion", "per_position", "used_criterion"]
