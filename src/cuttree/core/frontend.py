"""The Frontend protocol: what the flow needs from a framework, and how the flow finds one.

Grouping, scoring, planning and budgets are numpy decisions, the same for every framework; reading
a model (trace), changing it (surgery) and running it (measure, evaluate, recalibrate) are not.
A :class:`Frontend` is that second half for one framework; :mod:`cuttree.core.flow` writes the
verbs (``make_plan``, ``prune``, ``sparsify``, ``sensitivity``) once over it.

Frontends are registered by name in :data:`FRONTENDS`, each as the module that builds it and the
framework that module needs. :func:`frontend_for` asks only the frontends whose framework is
loaded already (a torch model means torch is imported), so resolving one never imports a
framework, and a model no frontend owns is refused by name.

>>> frontend_for(3.5)
Traceback (most recent call last):
TypeError: cuttree prunes torch.nn.Module and Keras models, got float; pass one of those
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cuttree.core.registry import Registry

if TYPE_CHECKING:
    from cuttree.config import Config
    from cuttree.core.grouping import DependencyGraph
    from cuttree.core.plan import PruningPlan
    from cuttree.core.planner import PlanningInputs
    from cuttree.core.results import Measurements, SparsifyResult, Tuned
    from cuttree.core.sensitivity import Sensitivity

Model = Any  #: a framework's model (a torch ``nn.Module``, a Keras model); only its frontend looks inside
Inputs = Any  #: example inputs as the frontend keeps them (torch tensors; Keras input shapes)
Data = Any  #: a dataset as the frontend reads it (a torch ``Dataset`` of pairs; Keras ``Arrays``)


@dataclass(frozen=True)
class ScoredSubset:
    """What a sensitivity analysis scores on, prepared by a frontend: the fixed validation subset
    behind ``score`` (a model → its metric, batch norm recalibrated first where the config asks),
    its size, the metric's name, the calibration data planning reads, and the cache key (a digest
    of the weights, the inputs' shapes, the data and the settings)."""

    score: Callable[[Model], float]
    size: int
    metric: str
    calib: Any
    key: str


class Frontend(Protocol):
    """One framework's side of the flow. ``name`` is the plan's ``framework`` and ``layout``."""

    name: str

    def owns(self, model: object) -> bool:
        """Whether ``model`` is this framework's."""

    def check(self, model: Model, config: Config) -> None:
        """Refuse, with a one-line error, a model or config keys this frontend cannot handle."""

    def inputs(self, model: Model, example_inputs: Any) -> Inputs:
        """The example inputs in the frontend's own form (checked against the model)."""

    def layer_names(self, model: Model) -> list[str]:
        """The names a config's ``ignore`` and ``layers`` may use."""

    def prepare(self, model: Model, inputs: Inputs, config: Config, inplace: bool) -> tuple[Model, tuple[str, ...]]:
        """The model to plan on and the names of the layers changed to make it (folded weights)."""

    def planning_inputs(
        self, model: Model, inputs: Inputs, config: Config, calib_data: Iterable[Any] | Any
    ) -> PlanningInputs:
        """Trace the model and compute what the criterion reads, as numpy."""

    def checked(
        self, model: Model, plan: PruningPlan, inputs: Inputs, graph: DependencyGraph, config: Config
    ) -> PruningPlan:
        """``plan`` with the groups the model's code cannot lose kept whole, with warnings."""

    def apply(
        self, model: Model, plan: PruningPlan, inputs: Inputs, graph: DependencyGraph, config: Config, inplace: bool
    ) -> tuple[Model, PruningPlan]:
        """The pruned model (``model`` itself with ``inplace``) and the plan it was pruned with
        (repaired where the first try broke the model's code)."""

    def pruned(self, model: Model, plan: PruningPlan, inputs: Inputs, graph: DependencyGraph) -> Model:
        """A pruned copy; ``model`` is left alone. Raises ``SurgeryError`` where the plan breaks
        the model's code (no repair)."""

    def copy(self, model: Model) -> Model:
        """An independent copy of the model."""

    def meet_latency(
        self,
        model: Model,
        inputs: Inputs,
        config: Config,
        calib_data: Any,
        sensitivity: Sensitivity | None,
        engine: Callable[..., tuple[Model, PruningPlan, DependencyGraph]],
    ) -> tuple[Model, PruningPlan, DependencyGraph]:
        """Prune to ``config.latency_target`` by measuring the candidates ``engine`` makes."""

    def reconstruct(self, original: Model, work: Model, plan: PruningPlan, calib_data: Any, config: Config) -> None:
        """Refit the layers of ``work`` that lost input channels (``config.reconstruct``)."""

    def sparsify(
        self, model: Model, config: Config, calib_data: Any, inplace: bool, sparsity_now: float | None
    ) -> SparsifyResult:
        """The model with its weights masked as ``config`` asks (a copy unless ``inplace``)."""

    def strip(self, model: Model) -> Model:
        """The masked model with its zeros made permanent."""

    def measure(self, model: Model, inputs: Inputs, latency_runs: int) -> Measurements:
        """The model's figures, its latency timed alone."""

    def compare(
        self, before: Model, after: Model, inputs: Inputs, latency_runs: int
    ) -> tuple[Measurements, Measurements]:
        """Both models' figures, their latencies timed interleaved."""

    def scored_subset(
        self,
        model: Model,
        inputs: Inputs,
        config: Config,
        data: Any,
        ratios: Sequence[float],
        samples: int,
        calib_data: Any,
    ) -> ScoredSubset:
        """The validation subset a sensitivity analysis scores on, and how it scores."""

    # -- recovery: what the run job (cuttree.recover.job) needs --

    def evaluate(self, model: Model, data: Data, config: Config) -> dict[str, float]:
        """The task metric on ``data`` (``{"top1": …}`` or ``{"miou": …}`` in %, or a language
        model's ``{"perplexity": …}``)."""

    def recalibrate(self, model: Model, data: Data, config: Config) -> int:
        """Re-estimate the batch norms' statistics on ``data``, in place; how many layers changed."""

    def finetune(
        self,
        model: Model,
        data: Data,
        config: Config,
        teacher: Model,
        run_dir: Path,
        resume: bool,
        log: Callable[[str], None],
        progress: bool,
    ) -> Tuned:
        """Fine-tune ``model`` in place with ``config.finetune``, distilling from ``teacher``;
        ``resume`` continues from the checkpoint in ``run_dir``."""

    def write_run(self, folder: Path, model: Model, plan: PruningPlan, report: dict[str, Any], inputs: Inputs) -> str:
        """Save the job's pruned model (with its plan and ``report``'s figures) in ``folder``;
        the file's name. ``report["origin"]`` says where the model came from."""


@dataclass(frozen=True)
class FrontendEntry:
    """Where a frontend lives: ``module:attribute`` and the framework module it needs loaded."""

    target: str
    framework: str

    def load(self) -> Frontend:
        module, _, attr = self.target.partition(":")
        frontend: Frontend = getattr(importlib.import_module(module), attr)
        return frontend


FRONTENDS: Registry[str, FrontendEntry] = Registry("frontend")
FRONTENDS.register("torch", FrontendEntry("cuttree.frontends.torch.frontend:FRONTEND", "torch"))
FRONTENDS.register("keras", FrontendEntry("cuttree.frontends.keras.frontend:FRONTEND", "keras"))


def frontend_for(model: object) -> Frontend:
    """The registered frontend that owns ``model``, asking only those whose framework is loaded."""
    for entry in FRONTENDS.values():
        if entry.framework in sys.modules:
            frontend = entry.load()
            if frontend.owns(model):
                return frontend
    raise TypeError(f"cuttree prunes torch.nn.Module and Keras models, got {type(model).__name__}; pass one of those")


def frontend_named(name: str) -> Frontend:
    """The frontend registered as ``name`` (``"torch"``, ``"keras"``)."""
    return FRONTENDS.lookup(name).load()
