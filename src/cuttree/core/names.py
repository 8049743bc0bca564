"""Layer names and the patterns a config names them with (``ignore``, ``layers``), matched here
and nowhere else.

A name is a path: dotted module names for torch (``layer1.0.conv1``), layers inside nested models
joined by ``/`` for Keras (``vgg16/block1_conv1``). A pattern selects a layer when it is the
layer's name, a glob of it, or the name of something the layer is inside (``layer1`` selects
``layer1.0.conv1``, never ``layer10``). With ``leaf`` (Keras, whose layer names are unique in a
model) a pattern may also name the layer alone, wherever it is nested.

>>> selects("layer1", "layer1.0.conv1"), selects("layer*.conv1", "layer2.conv1"), selects("layer1", "layer10")
(True, True, False)
>>> selects("block1_conv1", "vgg16/block1_conv1", sep="/", leaf=True), selects("vgg16", "vgg16/block1_conv1", sep="/")
(True, True)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from cuttree.errors import did_you_mean

TORCH_FIX = "use a dotted module name or glob (list them with `cuttree layers`)"
KERAS_FIX = (
    "use a Keras layer name, a path such as vgg16/block1_conv1, or a glob (list them with cuttree.keras.layer_names)"
)


def selects(pattern: str, name: str, sep: str = ".", leaf: bool = False) -> bool:
    """Whether ``pattern`` selects the layer ``name`` (see the module docstring)."""
    return (
        fnmatch.fnmatchcase(name, pattern)
        or (leaf and fnmatch.fnmatchcase(name.rsplit(sep, 1)[-1], pattern))
        or name.startswith(pattern + sep)
    )


def selected(patterns: Iterable[str], name: str, sep: str = ".", leaf: bool = False) -> bool:
    """Whether any of ``patterns`` selects ``name``."""
    return any(selects(p, name, sep, leaf) for p in patterns)


def resolve(
    patterns: Iterable[str], names: Sequence[str], key: str, sep: str = ".", leaf: bool = False, fix: str = TORCH_FIX
) -> dict[str, list[str]]:
    """Each pattern → the names it selects; a pattern that selects nothing is an error naming
    the config key, the near misses and ``fix``."""
    candidates = [*names, *(n.rsplit(sep, 1)[-1] for n in names)] if leaf else list(names)
    out: dict[str, list[str]] = {}
    for p in patterns:
        hits = [n for n in names if selects(p, n, sep, leaf)]
        if not hits:
            raise ValueError(f"{key}: unknown layer '{p}'{did_you_mean(p, candidates)}; {fix}")
        out[p] = hits
    return out
