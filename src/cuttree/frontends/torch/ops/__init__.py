"""Op rules: how each ATen op moves channel labels from its inputs to its outputs.

The table and its helpers are :mod:`~cuttree.frontends.torch.ops.base`; the rules themselves are
:mod:`~cuttree.frontends.torch.ops.layers` (weighted layers, norms, attention kernels),
:mod:`~cuttree.frontends.torch.ops.views` (views, permutes, expands) and
:mod:`~cuttree.frontends.torch.ops.shapes` (concatenation, slicing, indexing, reductions), which
register themselves when this package is imported.
"""

from cuttree.frontends.torch.ops import layers, shapes, views
from cuttree.frontends.torch.ops.base import OP_RULES, OpRule, fallback, op_rule, pointwise, rule_for, uniform

__all__ = ["OP_RULES", "OpRule", "fallback", "layers", "op_rule", "pointwise", "rule_for", "shapes", "uniform", "views"]
