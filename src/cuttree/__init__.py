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

from cuttree import _aliases

if TYPE_CHECKING:
    from cuttree.api import PruneResult, SparsifyResult, make_plan, prune, sensitivity, sparsify
    from cuttree.config import Config, LayerOverride
    from cuttree.core.importance import criterion
    from cuttree.core.plan import GroupPlan, PruningPlan
    from cuttree.core.results import Measurements
    from cuttree.core.sensitivity import Sensitivity
    from cuttree.errors import CuttreeError, FileFormatError, PlanError, ResourceError, SurgeryError, TraceError
    from cuttree.files.cuttree_file import load, load_weights, read_metadata, save
    from cuttree.files.onnx import export_onnx
    from cuttree.frontends.torch.measure import measure
    from cuttree.frontends.torch.sparsity import strip
    from cuttree.frontends.torch.surgery import apply_plan
    from cuttree.recover.train import finetune

__version__ = "0.1.0"

_aliases.install()  # old import paths keep working, with a DeprecationWarning

_WHERE = {
    "Sensitivity": "cuttree.core.sensitivity",
    "sensitivity": "cuttree.api",
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
    "export_onnx": "cuttree.files.onnx",
    "load": "cuttree.files.cuttree_file",
    "load_weights": "cuttree.files.cuttree_file",
    "read_metadata": "cuttree.files.cuttree_file",
    "save": "cuttree.files.cuttree_file",
    "Measurements": "cuttree.core.results",
    "measure": "cuttree.frontends.torch.measure",
    "strip": "cuttree.frontends.torch.sparsity",
    "apply_plan": "cuttree.frontends.torch.surgery",
    "finetune": "cuttree.recover.train",
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
    if (
        importlib.util.find_spec(f"{__name__}.{name}") is not None
    ):  # a submodule: cuttree.frontends.torch.sparsity.gradual(...)
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'cuttree' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
