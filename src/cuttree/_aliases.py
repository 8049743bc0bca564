"""Old import paths, kept working until a major version: one table, one ``DeprecationWarning`` each.

cuttree's modules moved into rooms (``core``, ``frontends/torch``, ``recover``, ``files``, …).
An old module path (``cuttree.surgery``) imports as a thin stand-in for its new module: every name
is read from the new module, and the import warns once with the path to use. Two old modules
became packages of the same name (``cuttree.files``, ``cuttree.cli``); their old names are
served by :func:`old_name`. cuttree's own code imports only canonical paths (a test checks).

>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     from cuttree.surgery import apply_plan
>>> apply_plan.__module__, caught[0].category.__name__
('cuttree.frontends.torch.surgery', 'DeprecationWarning')
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

MOVED: dict[str, str] = {
    "cuttree._util": "cuttree.frontends.torch.util",
    "cuttree.analysis": "cuttree.frontends.torch.sensitivity",
    "cuttree.attention": "cuttree.frontends.torch.attention",
    "cuttree.attention_timm": "cuttree.frontends.torch.plugins.timm_eva",
    "cuttree.attention_vision": "cuttree.frontends.torch.plugins.torchvision_swin",
    "cuttree.batching": "cuttree.recover.batching",
    "cuttree.budget": "cuttree.core.budget",
    "cuttree.calibrate": "cuttree.frontends.torch.calibrate",
    "cuttree.checkpoints": "cuttree.recover.checkpoints",
    "cuttree.cli_keras": "cuttree.cli.keras",
    "cuttree.data": "cuttree.datasets.images",
    "cuttree.export": "cuttree.files.onnx",
    "cuttree.fold": "cuttree.frontends.torch.fold",
    "cuttree.frontends.keras.layers_attention": "cuttree.frontends.keras.rules.attention",
    "cuttree.frontends.keras.layers_shapes": "cuttree.frontends.keras.rules.shapes",
    "cuttree.frontends.keras.layers_weighted": "cuttree.frontends.keras.rules.weighted",
    "cuttree.graph": "cuttree.frontends.torch",
    "cuttree.graph.groups": "cuttree.frontends.torch.groups",
    "cuttree.graph.labels": "cuttree.frontends.torch.labels",
    "cuttree.graph.ops": "cuttree.frontends.torch.ops.base",
    "cuttree.graph.ops_layers": "cuttree.frontends.torch.ops.layers",
    "cuttree.graph.ops_shapes": "cuttree.frontends.torch.ops.shapes",
    "cuttree.graph.trace": "cuttree.frontends.torch.trace",
    "cuttree.hf": "cuttree.files.huggingface",
    "cuttree.importance": "cuttree.core.importance",
    "cuttree.io": "cuttree.files.cuttree_file",
    "cuttree.job": "cuttree.recover.job",
    "cuttree.latency_budget": "cuttree.frontends.torch.latency_budget",
    "cuttree.measure": "cuttree.frontends.torch.measure",
    "cuttree.plan": "cuttree.core.plan",
    "cuttree.progress": "cuttree.reports.progress",
    "cuttree.reconstruct": "cuttree.recover.reconstruct",
    "cuttree.report": "cuttree.reports.report",
    "cuttree.resources": "cuttree.core.resources",
    "cuttree.results": "cuttree.core.results",
    "cuttree.rng": "cuttree.recover.rng",
    "cuttree.rules": "cuttree.frontends.torch.rules",
    "cuttree.sparsity": "cuttree.frontends.torch.sparsity",
    "cuttree.surgery": "cuttree.frontends.torch.surgery",
    "cuttree.text": "cuttree.datasets.text",
    "cuttree.timing": "cuttree.core.timing",
    "cuttree.train": "cuttree.recover.train",
    "cuttree.validate": "cuttree.frontends.torch.validate",
    "cuttree.validation": "cuttree.recover.validation",
}

# names an old module held that live elsewhere now: (old module, name) -> the module that holds it
MOVED_NAMES: dict[tuple[str, str], str] = {
    **{
        ("cuttree.files", n): "cuttree.files.atomic"
        for n in ("atomic_write", "check_writable", "remove_stale_temps", "glob_escape")
    },
    **{
        ("cuttree.files", n): "cuttree.files.sparse"
        for n in ("SPARSE_MIN_SIZE", "SPARSE_MIN_ZEROS", "inflate", "pack_sparse", "unpack_mask")
    },
    **{("cuttree.validation", n): "cuttree.core.keep_best" for n in ("ending", "warn_if_worse")},
    ("cuttree.analysis", "sensitivity"): "cuttree.api",
    **{("cuttree.core.planner", n): "cuttree.core.names" for n in ("resolve", "selects")},
    **{
        ("cuttree.train", n): "cuttree.recover.devices"
        for n in ("deterministic_env", "init_distributed", "rank_device")
    },
    **{("cuttree.train", n): "cuttree.recover.loop" for n in ("distill_loss", "lr_at")},
    **{
        ("cuttree.attention", n): "cuttree.frontends.torch.plugins.transformers"
        for n in ("hf_projections", "linear_child")
    },
    **{
        ("cuttree.data", n): "cuttree.datasets.segmentation"
        for n in ("CAMVID_CLASSES", "CAMVID_VOID", "SegmentationPairs", "camvid", "segmentation_folder")
    },
    **{
        ("cuttree.analysis", n): "cuttree.core.sensitivity"
        for n in ("DEFAULT_RATIOS", "FORMAT", "Sensitivity", "cache_root")
    },
    ("cuttree.api", "criterion_inputs"): "cuttree.frontends.torch.frontend",
    # names a module re-exported before the move
    ("cuttree.api", "Measurements"): "cuttree.core.results",
    ("cuttree.api", "measurements_table"): "cuttree.core.results",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"'{old}' moved to '{new}'; import it from there (the old path goes in cuttree 1.0)",
        DeprecationWarning,
        stacklevel=4,
    )


def old_name(module: str, name: str) -> Any:
    """``module.name`` where ``module`` became a package: read from its new home, with the warning.

    Raises ``AttributeError`` for a name that never lived there (the ``__getattr__`` contract).
    """
    new = MOVED_NAMES.get((module, name))
    if new is None:
        raise AttributeError(f"module '{module}' has no attribute '{name}'")
    _warn(f"{module}.{name}", f"{new}.{name}")
    return getattr(importlib.import_module(new), name)


class _StandIn(types.ModuleType):
    """An old module path: reads every name from the new module; callable where the old module was
    (``cuttree.measure(model, inputs)`` after ``import cuttree.measure``)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__path__: list[str] = []  # so the moved submodules of an old package (cuttree.graph.ops) import

    def __getattr__(self, name: str) -> Any:
        new = importlib.import_module(MOVED[self.__name__])
        if not hasattr(new, name) and (self.__name__, name) in MOVED_NAMES:  # it left when the module moved
            return old_name(self.__name__, name)
        return getattr(new, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        _warn(spec.name, MOVED[spec.name])
        return _StandIn(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        importlib.import_module(MOVED[module.__name__])  # fail at import time when the new module cannot load


def install() -> None:
    """Serve the old paths (after every real module: a real module always wins)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
