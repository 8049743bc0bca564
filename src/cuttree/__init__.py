"""cuttree: prune trained neural networks, and prove it.

>>> import cuttree
>>> cuttree.Config(ratio=0.5).to_dict()["mode"]
'classification'
"""

from cuttree.api import PruneResult, SparsifyResult, make_plan, prune, sparsify
from cuttree.config import Config, LayerOverride
from cuttree.errors import CuttreeError, FileFormatError, PlanError, SurgeryError, TraceError
from cuttree.io import load, load_weights, read_metadata, save
from cuttree.measure import Measurements, measure
from cuttree.plan import GroupPlan, PruningPlan
from cuttree.sparsity import strip
from cuttree.surgery import apply_plan

__version__ = "0.1.0"

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
    "SparsifyResult",
    "SurgeryError",
    "TraceError",
    "apply_plan",
    "load",
    "load_weights",
    "make_plan",
    "measure",
    "prune",
    "read_metadata",
    "save",
    "sparsify",
    "strip",
]
