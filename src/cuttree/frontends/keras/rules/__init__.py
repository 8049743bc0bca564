"""The Keras layer rules: the table and its helpers (:mod:`.base`), and the rules for layers with
channel weights (:mod:`.weighted`), for shape-only layers and merges (:mod:`.shapes`) and for
attention (:mod:`.attention`), registered on import.

Add a rule for your own layer class with :func:`layer_rule`; see ``docs/architecture.md``.
"""

from cuttree.frontends.keras.rules import attention, shapes, weighted
from cuttree.frontends.keras.rules.base import LAYER_RULES, LayerRule, Shapes, layer_rule, rule_for

__all__ = ["LAYER_RULES", "LayerRule", "Shapes", "attention", "layer_rule", "rule_for", "shapes", "weighted"]
