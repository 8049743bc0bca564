"""The PyTorch frontend: the torch side of the flow (:class:`cuttree.core.frontend.Frontend`).

Each method hands the flow (:mod:`cuttree.core.flow`) one step done the torch way: names are
dotted module paths, planning inputs are traced from a real forward, surgery changes the modules
(on a copy unless in place) and is repaired where the model's code breaks, figures come from
:mod:`~cuttree.frontends.torch.measure`.

>>> import torch
>>> FRONTEND.owns(torch.nn.Linear(2, 2)), FRONTEND.owns("a model")
(True, False)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cuttree.config import Config
from cuttree.core.frontend import ScoredSubset
from cuttree.core.importance import REGISTRY
from cuttree.core.names import resolve
from cuttree.core.plan import DEPTH_UNIT, PruningPlan
from cuttree.core.planner import PlanningInputs
from cuttree.core.resources import check_memory
from cuttree.core.results import Measurements, SparsifyResult, Tuned
from cuttree.core.sensitivity import Sensitivity
from cuttree.errors import SurgeryError, warn
from cuttree.frontends.torch import calibrate, measure
from cuttree.frontends.torch.checks import heads_checked, train_checked, validated, warn_heads_not_found
from cuttree.frontends.torch.depth import block_influence
from cuttree.frontends.torch.fold import computes_its_weight, fold_computed_weights
from cuttree.frontends.torch.groups import DependencyGraph, build_graph
from cuttree.frontends.torch.sparsity import Mask, masked, strip
from cuttree.frontends.torch.surgery import apply_plan
from cuttree.frontends.torch.trace import module_names, named_tensors
from cuttree.frontends.torch.util import as_inputs, model_bytes, model_device, refuse_keras, to_numpy

Inputs = Sequence[Any]


def folded(
    model: nn.Module, example_inputs: Sequence[Any], config: Config, inplace: bool
) -> tuple[nn.Module, tuple[str, ...]]:
    """``model`` with its computed-weight layers folded when the config asks (a copy unless
    ``inplace``), and their names; otherwise ``model``, with a warning if it has such layers."""
    if config.method != "structured":
        return model, ()
    if config.fold_computed_weights:
        return fold_computed_weights(model, example_inputs, inplace)
    computed = [n for n, m in model.named_modules() if computes_its_weight(m, besides=(Mask,))]
    targets = (config.ratio, config.head_ratio, config.threshold, config.macs_target, config.params_target)
    if computed and (any(targets) or config.latency_target is not None):
        warn(
            f"{len(computed)} conv/linear layer(s) compute their weight in forward ({', '.join(computed[:3])}"
            f"{' …' if len(computed) > 3 else ''}; weight standardization or weight norm, say): cuttree keeps the "
            "channels it cannot prune through whole; set fold_computed_weights: true to make them plain layers "
            "holding that weight (exact) and prune them"
        )
    return model, ()


def criterion_inputs(
    model: nn.Module, graph: DependencyGraph, cfg: Config, data: Iterable[Any] | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What the criterion reads, as numpy (the border: each tensor goes to the CPU once):
    the statistics it needs from ``data``, and the groups' parameters by state-dict name."""
    needs = REGISTRY.lookup(cfg.criterion).needs  # what it declares, never its name
    stats: dict[str, torch.Tensor] = {}
    if needs == "gradients":
        stats = calibrate.gradients(model, data, cfg)
    elif needs == "activations":
        stats = calibrate.activations(model, graph, data, cfg)
    elif needs == "norm_scales":
        stats = calibrate.norm_scales(model, graph)
    elif needs in ("input_norms", "input_moments", "hessian"):
        stats = calibrate.input_statistics(model, graph, data, cfg, needs)
    members = {m.tensor for g in graph.groups for m in g.members}
    params = {k: v for k, v in named_tensors(model).items() if k in members and isinstance(v, nn.Parameter)}
    if needs == "gradients":
        stats = {k: v for k, v in stats.items() if k in params}
    for g in graph.groups:
        if g.unit == DEPTH_UNIT and data is not None:  # whole blocks: their influence on the calibration data
            stack = model.get_submodule(g.name)
            assert isinstance(stack, nn.ModuleList)
            xs = (x for x, _ in calibrate.batches(data, cfg, need_labels=False, device=model_device(model)))
            stats[f"{g.name}#influence"] = block_influence(model, stack, xs)
    return {k: to_numpy(v) for k, v in stats.items()}, {k: to_numpy(v) for k, v in params.items()}


class TorchFrontend:
    """The torch side of every step of the flow."""

    name = "torch"

    def owns(self, model: object) -> bool:
        return isinstance(model, nn.Module) and not any(
            c.__module__.split(".")[0] == "keras" for c in type(model).__mro__
        )

    def check(self, model: nn.Module, config: Config) -> None:
        refuse_keras(model)
        weight_only = not REGISTRY.lookup(config.criterion).data_driven and config.criterion != "random"
        width = set(config.pruned_units) - {DEPTH_UNIT}  # whole layers are scored by their influence, never by l1
        if config.method == "structured" and weight_only and width and calibrate.is_causal_lm(model):
            warn(
                f"criterion '{config.criterion}' scores a language model's channels by their weights alone and "
                "removes the few channels that carry its massive activations (SmolLM2-135M at 20% of its "
                "parameters: perplexity 22 → millions); use criterion: wanda with calibration text (docs/llm.md)"
            )

    def inputs(self, model: nn.Module, example_inputs: Any) -> Inputs:
        return as_inputs(example_inputs)

    def layer_names(self, model: nn.Module) -> list[str]:
        return module_names(model)

    def prepare(
        self, model: nn.Module, inputs: Inputs, config: Config, inplace: bool
    ) -> tuple[nn.Module, tuple[str, ...]]:
        return folded(model, inputs, config, inplace)

    def planning_inputs(self, model: nn.Module, inputs: Inputs, config: Config, calib_data: Any) -> PlanningInputs:
        names = module_names(model)
        ignore = sorted({n for hits in resolve(config.ignore, names, "ignore").values() for n in hits})
        overrides = resolve(config.layers, names, "layers")
        depth = config.method == "structured" and "layers" in config.pruned_units
        graph = build_graph(model, inputs, ignore, group_width=config.group_width, depth=depth)
        extra, weights = criterion_inputs(model, graph, config, calib_data)
        return PlanningInputs(graph, overrides, weights, extra, measure.count_params(model), "torch", "torch")

    def checked(
        self, model: nn.Module, plan: PruningPlan, inputs: Inputs, graph: DependencyGraph, config: Config
    ) -> PruningPlan:
        plan = validated(model, train_checked(model, plan, inputs, graph), inputs, graph)
        warn_heads_not_found(model, plan, config, graph)
        return plan

    def apply(
        self, model: nn.Module, plan: PruningPlan, inputs: Inputs, graph: DependencyGraph, config: Config, inplace: bool
    ) -> tuple[nn.Module, PruningPlan]:
        """Surgery tried for real first (it is all or nothing); only if the forward check fails is
        the plan repaired on shape-only copies and applied again."""
        plan = heads_checked(model, train_checked(model, plan, inputs, graph), inputs, graph)
        if not inplace and model_device(model).type == "cpu":
            check_memory(model_bytes(model), "a working copy of the model", "pass inplace=True or free memory")
        work = model if inplace else copy.deepcopy(model)
        try:
            work = apply_plan(work, plan, inputs, graph.outputs)
        except SurgeryError:
            plan = validated(model, plan, inputs, graph)
            work = apply_plan(work, plan, inputs, graph.outputs)
        warn_heads_not_found(model, plan, config, graph)
        return work, plan

    def pruned(self, model: nn.Module, plan: PruningPlan, inputs: Inputs, graph: DependencyGraph) -> nn.Module:
        return apply_plan(copy.deepcopy(model), plan, inputs, graph.outputs)

    def copy(self, model: nn.Module) -> nn.Module:
        return copy.deepcopy(model)

    def meet_latency(
        self,
        model: nn.Module,
        inputs: Inputs,
        config: Config,
        calib_data: Any,
        sensitivity: Sensitivity | None,
        engine: Callable[..., tuple[nn.Module, PruningPlan, DependencyGraph]],
    ) -> tuple[nn.Module, PruningPlan, DependencyGraph]:
        from cuttree.frontends.torch.latency_budget import meet_latency

        return meet_latency(model, inputs, config, calib_data, sensitivity, engine)

    def reconstruct(
        self, original: nn.Module, work: nn.Module, plan: PruningPlan, calib_data: Any, config: Config
    ) -> None:
        from cuttree.recover.reconstruct import reconstruct

        reconstruct(original, work, plan, calib_data, config)

    def sparsify(
        self, model: nn.Module, config: Config, calib_data: Any, inplace: bool, sparsity_now: float | None
    ) -> SparsifyResult:
        return masked(model, config, calib_data, inplace, sparsity_now)

    def strip(self, model: nn.Module) -> nn.Module:
        return strip(model)

    def measure(self, model: nn.Module, inputs: Inputs, latency_runs: int) -> Measurements:
        return measure.measure(model, inputs, latency_runs)

    def compare(
        self, before: nn.Module, after: nn.Module, inputs: Inputs, latency_runs: int
    ) -> tuple[Measurements, Measurements]:
        return measure.compare(before, after, inputs, latency_runs)

    def scored_subset(
        self,
        model: nn.Module,
        inputs: Inputs,
        config: Config,
        data: Any,
        ratios: Sequence[float],
        samples: int,
        calib_data: Any,
    ) -> ScoredSubset:
        from cuttree.frontends.torch.sensitivity import scored_subset

        return scored_subset(model, inputs, config, data, ratios, samples, calib_data)

    def evaluate(self, model: nn.Module, data: Any, config: Config) -> dict[str, float]:
        if calibrate.is_causal_lm(model):  # text: the perplexity of its windows
            from cuttree.frontends.torch.language import perplexity, token_windows

            return {"perplexity": perplexity(model, token_windows(data))}
        return measure.evaluate(model, data, config.mode, ignore_index=config.finetune.ignore_index)

    def recalibrate(self, model: nn.Module, data: Any, config: Config) -> int:
        from cuttree.recover.train import recalibrate_bn

        return recalibrate_bn(model, data, config)

    def finetune(
        self,
        model: nn.Module,
        data: Any,
        config: Config,
        teacher: nn.Module,
        run_dir: Path,
        resume: bool,
        log: Callable[[str], None],
        progress: bool,
    ) -> Tuned:
        from cuttree.recover.train import finetune

        state = finetune(
            model, data, config, teacher=teacher, run_dir=run_dir, resume=resume, log=log, progress=progress
        )
        loss = state["history"][-1]["loss"] if state["history"] else None
        return Tuned(state["total"], loss, state["validation"])

    def write_run(
        self, folder: Path, model: nn.Module, plan: PruningPlan, report: dict[str, Any], inputs: Inputs
    ) -> str:
        """``model.cuttree``: the weights and the plan, rebuilt from ``report["origin"]["arch"]``; a
        causal language model also as ``pretrained/`` (plain ``from_pretrained`` loads it) where one
        config can describe its widths, else a warning says why not (``report["pretrained"]``)."""
        from cuttree.files import cuttree_file
        from cuttree.frontends.torch.calibrate import is_causal_lm

        origin = report["origin"]
        shape = [1, *inputs[0].shape[1:]] if hasattr(inputs[0], "shape") else None
        extra = {"metric_before": report["before"]["metric"], "metric_after": report["after"]["metric"]}
        cuttree_file.save(
            model,
            folder / "model.cuttree",
            arch=origin["arch"],
            arch_kwargs=origin.get("arch_kwargs"),
            plan=plan,
            extra={**extra, "input_shape": shape},
        )
        if is_causal_lm(model):
            report["pretrained"] = _pretrained_folder(model, folder / "pretrained", tuple(inputs))
        return "model.cuttree"


def _pretrained_folder(model: nn.Module, folder: Path, probe: tuple[Any, ...]) -> str | None:
    import shutil
    import warnings

    from cuttree.errors import FileFormatError
    from cuttree.files.huggingface import save_pretrained

    shutil.rmtree(folder, ignore_errors=True)  # a resumed run's earlier folder
    try:
        return save_pretrained(model, folder, probe=probe).name
    except FileFormatError as e:
        warnings.warn(f"no from_pretrained folder written, model.cuttree alone holds the model: {e}", stacklevel=3)
        return None


FRONTEND = TorchFrontend()
