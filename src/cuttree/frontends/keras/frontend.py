"""The Keras 3 frontend: the Keras side of the flow (:class:`cuttree.core.frontend.Frontend`).

Names are layer paths (``vgg16/block1_conv1``; a bare layer name matches inside nested models
too), example inputs are kept as input shapes, planning inputs come from a symbolic walk of the
layer graph, and surgery rebuilds the model from its config with sliced weights, so the original
is never touched (``inplace`` has no effect here).

>>> import keras
>>> FRONTEND.owns(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])), FRONTEND.owns(3)
(True, False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cuttree.config import Config
from cuttree.core.frontend import ScoredSubset
from cuttree.core.grouping import DependencyGraph
from cuttree.core.names import KERAS_FIX
from cuttree.core.names import resolve as names_resolve
from cuttree.core.plan import PruningPlan
from cuttree.core.planner import PlanningInputs
from cuttree.core.results import Measurements, PruneResult, SparsifyResult, Tuned, metric_name
from cuttree.core.sensitivity import Sensitivity
from cuttree.frontends.keras import files, measure, recover, sparsity, surgery
from cuttree.frontends.keras.calibrate import criterion_inputs
from cuttree.frontends.keras.graph import build_graph, check_model
from cuttree.frontends.keras.recover import Arrays

Shapes = list[tuple[int, ...]]

#: config keys the Keras frontend does not implement yet, and when a config uses them
TORCH_ONLY: dict[str, Callable[[Config], bool]] = {
    "reconstruct": lambda c: c.reconstruct,
    "steps": lambda c: c.steps > 1,
    "fold_computed_weights": lambda c: c.fold_computed_weights,
    "latency_target": lambda c: c.latency_target is not None,
    "units": lambda c: "layers" in c.pruned_units,  # depth: whole decoder layers
}


def check_config(config: Config) -> None:
    """Refuse, naming the key, a config that asks for what only the torch frontend does."""
    for key, used in TORCH_ONLY.items():
        if used(config):
            raise ValueError(
                f"config key '{key}' = {getattr(config, key)!r} is not available for Keras models yet (torch only); "
                f"remove it from the config"
            )


def input_shapes(model: Any, example_inputs: Any = None) -> Shapes:
    """Shapes (batch included) of ``example_inputs``, or of the model's own inputs with batch 1;
    a list of shape tuples is taken as it is."""
    check_model(model)
    if isinstance(example_inputs, list) and example_inputs and all(isinstance(s, tuple) for s in example_inputs):
        return example_inputs
    if example_inputs is None:
        shapes = [(1, *x.shape[1:]) for x in model.inputs]
        for s in shapes:
            if any(d is None for d in s):
                raise ValueError(
                    f"the model's input shape {s} has unknown sizes; pass example_inputs=np.zeros((1, H, W, C)) "
                    "with the size to prune for"
                )
        return [tuple(int(d) for d in s) for s in shapes]  # type: ignore[arg-type]
    items = list(example_inputs) if isinstance(example_inputs, list | tuple) else [example_inputs]
    if len(items) != len(model.inputs):
        raise ValueError(
            f"example_inputs has {len(items)} arrays, the model takes {len(model.inputs)} inputs; pass one array per input"
        )
    return [tuple(int(d) for d in np.shape(x)) for x in items]


def layer_names(model: Any) -> list[str]:
    """Paths of the layers that hold weights (what ``ignore`` and ``layers`` can name)."""
    return [p for p, layer in surgery.leaf_layers(model).items() if getattr(layer, "weights", None)]


def resolve(patterns: Sequence[str], names: list[str], key: str) -> dict[str, list[str]]:
    """Layer paths or globs; a bare layer name matches inside nested models too."""
    return names_resolve(patterns, names, key, sep="/", leaf=True, fix=KERAS_FIX)


class KerasFrontend:
    """The Keras side of every step of the flow."""

    name = "keras"

    def owns(self, model: object) -> bool:
        return any(c.__module__.split(".")[0] == "keras" for c in type(model).__mro__)

    def check(self, model: Any, config: Config) -> None:
        check_config(config)
        check_model(model)

    def inputs(self, model: Any, example_inputs: Any) -> Shapes:
        return input_shapes(model, example_inputs)

    def layer_names(self, model: Any) -> list[str]:
        return layer_names(model)

    def prepare(self, model: Any, inputs: Shapes, config: Config, inplace: bool) -> tuple[Any, tuple[str, ...]]:
        return model, ()

    def planning_inputs(self, model: Any, inputs: Shapes, config: Config, calib_data: Any) -> PlanningInputs:
        names = layer_names(model)
        ignore = sorted({n for hits in resolve(config.ignore, names, "ignore").values() for n in hits})
        overrides = resolve(list(config.layers), names, "layers")
        graph, tr = build_graph(model, inputs, ignore, config.group_width)
        extra, weights = criterion_inputs(model, tr, graph, config, calib_data)
        return PlanningInputs(graph, overrides, weights, extra, int(model.count_params()), "keras", "keras")

    def checked(
        self, model: Any, plan: PruningPlan, inputs: Shapes, graph: DependencyGraph, config: Config
    ) -> PruningPlan:
        return plan  # the layer rules read every size from the layers' configs: nothing to repair

    def apply(
        self, model: Any, plan: PruningPlan, inputs: Shapes, graph: DependencyGraph, config: Config, inplace: bool
    ) -> tuple[Any, PruningPlan]:
        return surgery.apply_plan(model, plan, inputs), plan

    def pruned(self, model: Any, plan: PruningPlan, inputs: Shapes, graph: DependencyGraph) -> Any:
        return surgery.apply_plan(model, plan, inputs)

    def copy(self, model: Any) -> Any:
        return sparsity.copy_model(model)

    def meet_latency(
        self,
        model: Any,
        inputs: Shapes,
        config: Config,
        calib_data: Any,
        sensitivity: Sensitivity | None,
        engine: Callable[..., tuple[Any, PruningPlan, DependencyGraph]],
    ) -> tuple[Any, PruningPlan, DependencyGraph]:
        raise AssertionError("unreachable: check_config refuses latency_target for Keras models")

    def reconstruct(self, original: Any, work: Any, plan: PruningPlan, calib_data: Any, config: Config) -> None:
        raise AssertionError("unreachable: check_config refuses reconstruct for Keras models")

    def sparsify(
        self, model: Any, config: Config, calib_data: Any, inplace: bool, sparsity_now: float | None
    ) -> SparsifyResult:
        return sparsity.sparsify(model, config, calib_data, sparsity_now)

    def strip(self, model: Any) -> Any:
        return sparsity.strip(model)

    def measure(self, model: Any, inputs: Shapes, latency_runs: int) -> Measurements:
        return measure.measure(model, inputs, latency_runs)

    def compare(self, before: Any, after: Any, inputs: Shapes, latency_runs: int) -> tuple[Measurements, Measurements]:
        return measure.compare(before, after, inputs, latency_runs)

    def scored_subset(
        self,
        model: Any,
        inputs: Shapes,
        config: Config,
        data: Any,
        ratios: Sequence[float],
        samples: int,
        calib_data: Any,
    ) -> ScoredSubset:
        from cuttree.frontends.keras.sensitivity import scored_subset

        return scored_subset(model, inputs, config, data, ratios, samples, calib_data)

    def evaluate(self, model: Any, data: Arrays, config: Config) -> dict[str, float]:
        value = recover.evaluate(model, data.x, data.y, config.mode, ignore_index=config.finetune.ignore_index)
        return {metric_name(config): value}

    def recalibrate(self, model: Any, data: Arrays, config: Config) -> int:
        return recover.recalibrate_bn(model, data.x, seed=config.seed)

    def finetune(
        self,
        model: Any,
        data: Arrays,
        config: Config,
        teacher: Any,
        run_dir: Path,
        resume: bool,
        log: Callable[[str], None],
        progress: bool,
    ) -> Tuned:
        if resume:
            raise ValueError("--resume continues torch runs only (Keras fine-tuning keeps no checkpoint); drop it")
        log(f"({config.finetune.val_fraction:.0%} of the {len(data):,} training samples held out to validate on)")
        distil = teacher if config.finetune.distill else None
        state = recover.finetune(model, config, data.x, data.y, teacher=distil, verbose=2 if progress else 0)
        return Tuned(state["steps"], state["loss"], state["validation"])

    def write_run(self, folder: Path, model: Any, plan: PruningPlan, report: dict[str, Any], inputs: Shapes) -> str:
        """``model.keras``, with the plan and the before/after figures inside."""
        before, after = (Measurements.from_dict(report[k]) for k in ("before", "after"))
        files.save(PruneResult(model, plan, before, after), folder / "model.keras")
        return "model.keras"


FRONTEND = KerasFrontend()
