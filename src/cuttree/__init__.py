"""cuttree: prune trained neural networks, and prove it.

Importing ``cuttree`` loads neither torch nor keras: the public names below are imported on
first use, so a Keras user never pays for torch and ``KERAS_BACKEND`` stays the user's choice.
The PyTorch API is here (``cuttree.prune``); the Keras 3 one is :mod:`cuttree.keras`.

>>> import cuttree
>>> cuttree.Config(ratio=0.5).to_dict()["mode"]
'classification'
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cuttree.analysis import sensitivity
    from cuttree.api import PruneResult, SparsifyResult, make_plan, prune, sparsify
    from cuttree.config import Config, LayerOverride
    from cuttree.core.importance import criterion
    from cuttree.core.plan import GroupPlan, PruningPlan
    from cuttree.core.sensitivity import Sensitivity
    from cuttree.errors import CuttreeError, FileFormatError, PlanError, ResourceError, SurgeryError, TraceError
    from cuttree.export import export_onnx
    from cuttree.io import load, load_weights, read_metadata, save
    from cuttree.measure import Measurements, measure
    from cuttree.sparsity import strip
    from cuttree.surgery import apply_plan
    from cuttree.train import finetune

__version__ = "0.1.0"

_WHERE = {
    "Sensitivity": "cuttree.core.sensitivity",
    "sensitivity": "cuttree.analysis",
    "PruneResult": "cuttree.api",
    "SparsifyResult": "cuttree.api",
    "make_plan": "cuttree.api",
    "prune": "cuttree.api",
    "sparsify": "cuttree.api",
    "Config": "cuttree.config",
    "LayerOverride": "cuttree.config",
    "criterion": "cuttree.core.importance",
    "GroupPlan": "cuttree.core.plan",
    "PruningPlan": "cuttree.core.plan",
    "CuttreeError": "cuttree.errors",
    "FileFormatError": "cuttree.errors",
    "ResourceError": "cuttree.errors",
    "PlanError": "cuttree.errors",
    "SurgeryError": "cuttree.errors",
    "TraceError": "cuttree.errors",
    "export_onnx": "cuttree.export",
    "load": "cuttree.io",
    "load_weights": "cuttree.io",
    "read_metadata": "cuttree.io",
    "save": "cuttree.io",
    "Measurements": "cuttree.measure",
    "measure": "cuttree.measure",
    "strip": "cuttree.sparsity",
    "apply_plan": "cuttree.surgery",
    "finetune": "cuttree.train",
}

__all__ = [
    "Config",
    "CuttreeError",
    "FileFormatError",
    "GroupPlan",
    "LayerOverride",
    "Measurements",
    "PlanError",
    "PruneResult",
    "PruningPlan",
    "ResourceError",
    "Sensitivity",
    "SparsifyResult",
    "SurgeryError",
    "TraceError",
    "apply_plan",
    "criterion",
    "export_onnx",
    "finetune",
    "load",
    "load_weights",
    "make_plan",
    "measure",
    "prune",
    "read_metadata",
    "save",
    "sensitivity",
    "sparsify",
    "strip",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: cuttree.sparsity.gradual(...)
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'cuttree' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
