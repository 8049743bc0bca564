"""The whole job, for every frontend: measure → (prune → recalibrate BN → fine-tune) × steps →
measure → save.

A run folder gets the resolved ``config.yaml``, ``report.json`` (before/after params, MACs, size,
latency, metric, and the per-step history) and the model (``model.cuttree`` for torch, the composed
plan inside, so it loads from the original architecture, and ``pretrained/`` for a causal language
model whose widths a config can describe; ``model.keras`` for Keras). What is
framework-specific (evaluating, recalibrating, fine-tuning, saving) is the model's
:class:`~cuttree.core.frontend.Frontend`'s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cuttree.config import Config
from cuttree.core.flow import plan_and_apply
from cuttree.core.frontend import Data, Frontend, Inputs, Model, frontend_for
from cuttree.core.keep_best import warn_if_worse
from cuttree.core.plan import PruningPlan, compose
from cuttree.core.results import METRICS, Measurements, aligned, metric_change, metric_key, metric_name, speed_change
from cuttree.core.sensitivity import Sensitivity
from cuttree.core.shortfall import refuse_noop
from cuttree.files.atomic import atomic_write
from cuttree.recover.checkpoints import CHECKPOINT
from cuttree.recover.devices import world

Log = Callable[[str], None]


def step_config(cfg: Config, step: int) -> Config:
    """The config of one of ``cfg.steps`` rounds: each keeps the same fraction of what is left.

    >>> step_config(Config(ratio=0.75, steps=2), 0).ratio
    0.5
    """
    n = cfg.steps
    upd: dict[str, Any] = {"steps": 1}
    if cfg.ratio is not None:
        upd["ratio"] = 1 - (1 - cfg.ratio) ** (1 / n)
    for key in ("macs_target", "params_target"):
        if getattr(cfg, key) is not None:
            # step i keeps target^((i+1)/n) of the original; the planner sees the current model
            upd[key] = getattr(cfg, key) ** (1 / n)
    ft = cfg.finetune.model_copy(update={"epochs": cfg.finetune.epochs / n})
    return cfg.model_copy(update={**upd, "finetune": ft})


def run_job(
    model: Model,
    example_inputs: Any,
    cfg: Config,
    train_data: Data,
    test_data: Data,
    out_dir: str | Path,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    log: Log = print,
    sensitivity: Sensitivity | None = None,
    data_name: str = "",
    progress: bool = False,
    noop_fix: str | None = None,
    resume: bool = False,
    source: str | None = None,
    calib_data: Data | None = None,
) -> dict[str, Any]:
    """Prune ``model`` to ``cfg``'s target in ``cfg.steps`` rounds with fine-tuning; write the run folder.

    The model comes from ``arch`` (a torch architecture, with ``arch_kwargs``) or ``source`` (the
    file it was loaded from); the report says which. With ``allocation: sensitivity``,
    ``sensitivity`` (a :class:`cuttree.Sensitivity` of this model) decides the per-group ratios; it
    is written to the run folder. With ``noop_fix`` (the fix to name), a first step that removes
    nothing ends the run with a :class:`PlanError` before any fine-tuning. The resolved
    ``config.yaml`` is written first; with ``resume`` an interrupted run in ``out_dir`` continues:
    its config must be this one, every step is pruned again (deterministic) and its fine-tuning
    resumes from the step's checkpoint. Pruning calibrates on ``calib_data`` (default: ``train_data``).
    """
    fe = frontend_for(model)
    out = Path(out_dir)
    _check_job(cfg, sensitivity)
    rank, _ = world()
    if rank == 0:
        _start(out, cfg, resume)
    inputs = fe.inputs(model, example_inputs)
    teacher = fe.copy(model)
    t0 = time.perf_counter()
    before = fe.measure(model, inputs, 0)  # timed at the end, interleaved with the pruned model
    log(f"evaluating the dense model on {len(test_data):,} test samples")
    metric_before = fe.evaluate(model, test_data, cfg)
    key = metric_key(metric_before) or metric_name(cfg)
    log(f"dense: {key} {metric_before[key]:.2f}  params {before.params:,}  MACs {before.macs:,}")
    history: list[dict[str, Any]] = []
    plan: PruningPlan | None = None
    current = model
    job = _Job(fe, inputs, cfg, train_data, test_data, teacher, out, log, sensitivity, progress, resume, noop_fix)
    job.calib_data = train_data if calib_data is None else calib_data
    for i in range(cfg.steps):
        current, step_plan, row = job.step(i, current)
        plan = step_plan if plan is None else compose(plan, step_plan)
        history.append(row)
    assert plan is not None
    log(f"measuring: parameters, MACs, size and latency ({cfg.latency_runs} runs each, dense and pruned interleaved)")
    before, after = fe.compare(teacher, current, inputs, cfg.latency_runs)
    report: dict[str, Any] = {
        "command": "run",
        "framework": fe.name,
        "model": None,
        "config": cfg.to_dict(),
        "origin": {"arch": arch, "arch_kwargs": arch_kwargs} if arch else {"source": source},
        "data": data_name,
        "before": {**before.to_dict(), "metric": metric_before},
        "after": {**after.to_dict(), "metric": history[-1]["metric_after_finetune"]},
        "history": history,
        "budget": plan.budget,
        "plan": {g.name: [g.size, len(g.keep), g.unit] for g in plan.groups},
        "sensitivity": "sensitivity.json" if sensitivity is not None else None,
        "seconds": time.perf_counter() - t0,
    }
    if rank == 0:
        report["model"] = fe.write_run(out, current, plan, report, inputs)
        if sensitivity is not None:
            sensitivity.save(out / "sensitivity.json")
        atomic_write(out / "report.json", lambda p: p.write_text(json.dumps(report, indent=1)))
    report["model"] = current
    return report


def _check_job(cfg: Config, sensitivity: Sensitivity | None) -> None:
    """Refuse the settings a multi-step job cannot honour, before anything is written."""
    if cfg.latency_target is not None and cfg.steps > 1:
        raise ValueError(f"latency_target with steps={cfg.steps}: a measured budget is met in one step; set steps: 1")
    if cfg.allocation == "sensitivity":
        if sensitivity is None:
            raise ValueError(
                "allocation: sensitivity needs a sensitivity analysis of the model: pass --sensitivity FILE "
                "(from `cuttree sensitivity`), or set allocation: uniform"
            )
        if cfg.steps > 1:
            raise ValueError(
                f"allocation: sensitivity with steps={cfg.steps}: the analysis describes the unpruned model only; "
                "set steps: 1"
            )


class _Job:
    """The settings every step of one job shares, and the step itself."""

    def __init__(
        self,
        fe: Frontend,
        inputs: Inputs,
        cfg: Config,
        train_data: Data,
        test_data: Data,
        teacher: Model,
        out: Path,
        log: Log,
        sensitivity: Sensitivity | None,
        progress: bool,
        resume: bool,
        noop_fix: str | None,
    ) -> None:
        self.fe, self.inputs, self.cfg, self.teacher, self.out, self.log = fe, inputs, cfg, teacher, out, log
        self.train_data, self.test_data = train_data, test_data
        self.sensitivity, self.progress, self.resume, self.noop_fix = sensitivity, progress, resume, noop_fix
        self.calib_data = train_data

    def step(self, i: int, current: Model) -> tuple[Model, PruningPlan, dict[str, Any]]:
        """Step ``i``: prune, recalibrate, fine-tune (resumed where a checkpoint is), and the
        step's record for the report."""
        fe, cfg, log = self.fe, self.cfg, self.log
        scfg, n = step_config(cfg, i), cfg.steps
        log(f"step {i + 1}/{n}: pruning ({scfg.criterion}; tracing, scoring, planning, surgery)")
        current, step_plan, _ = plan_and_apply(
            fe, current, scfg, self.inputs, calib_data=self.calib_data, sensitivity=self.sensitivity
        )
        if i == 0 and self.noop_fix is not None:
            refuse_noop(step_plan, self.noop_fix)
        row: dict[str, Any] = {"step": i + 1, "config": scfg.to_dict()}
        pruned = self._recalibrated(current, scfg, row)
        key = metric_key(pruned) or metric_name(cfg)
        log(f"step {i + 1}/{n}: pruned, {key} {pruned[key]:.2f} before fine-tuning")
        ft_dir = self.out / f"step{i + 1}"
        ft_dir.mkdir(parents=True, exist_ok=True)
        again = self.resume and (ft_dir / CHECKPOINT).is_file()
        log(f"step {i + 1}/{n}: {'resuming' if again else 'recovering:'} fine-tuning {scfg.finetune.epochs:g} epochs")
        tuned = fe.finetune(current, self.train_data, scfg, self.teacher, ft_dir, again, log, self.progress)
        metric = fe.evaluate(current, self.test_data, cfg)
        log(f"step {i + 1}/{n}: fine-tuned, {key} {metric[key]:.2f}")
        warn_if_worse(pruned, metric)
        row |= {
            "plan_channels": [step_plan.channels_before, step_plan.channels_after],
            "macs": fe.measure(current, self.inputs, 0).macs,
            "metric_after_pruning": pruned,
            "metric_after_finetune": metric,
            "finetune_steps": tuned.steps,
            "final_loss": tuned.final_loss,
            "validation": tuned.validation,
        }
        return current, step_plan, row

    def _recalibrated(self, model: Model, scfg: Config, row: dict[str, Any]) -> dict[str, float]:
        """The pruned model's metric, batch norm recalibrated first where the config asks (the
        metric before that goes in ``row`` where recalibration changed a layer)."""
        first = self.fe.evaluate(model, self.test_data, self.cfg)
        if not self.cfg.finetune.bn_recalibrate or self.cfg.reconstruct:
            return first
        if not self.fe.recalibrate(model, self.train_data, scfg):
            return first
        row["metric_before_bn_recalibration"] = first
        return self.fe.evaluate(model, self.test_data, self.cfg)


def _start(out: Path, cfg: Config, resume: bool) -> None:
    """Write the run's resolved ``config.yaml`` first; a resumed run must have been started with
    the same config (and must have been started at all)."""
    saved = out / "config.yaml"
    if resume:
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: '{out}' holds no run (no config.yaml); start without --resume")
        if yaml.safe_load(saved.read_text()) != cfg.to_dict():
            raise ValueError(
                f"--resume: the run in '{out}' was started with another config (its config.yaml); resume with the "
                "same --config and --set, or start a new run in another --out"
            )
        return
    atomic_write(saved, lambda p: p.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))


def report_table(report: dict[str, Any]) -> str:
    """Before/after rows for a job report: metric, params, MACs, size, latency (median and
    interquartile range, the two models timed interleaved)."""
    b, a = report["before"], report["after"]
    key = metric_key(b["metric"]) or "top1"
    unit = "%" if METRICS[key].percent else ""
    mb, ma = Measurements.from_dict(b), Measurements.from_dict(a)

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}× smaller" if y else "—"

    rows = [
        ("", "before", "after", "change"),
        (
            key,
            f"{b['metric'][key]:.2f}{unit}",
            f"{a['metric'][key]:.2f}{unit}",
            metric_change(key, b["metric"][key], a["metric"][key]),
        ),
        ("parameters", f"{mb.params:,}", f"{ma.params:,}", ratio(mb.params, ma.params)),
        (f"MACs (counted, batch {mb.batch_size})", f"{mb.macs:,}", f"{ma.macs:,}", ratio(mb.macs, ma.macs)),
        ("size (MB)", f"{mb.size_bytes / 1e6:.2f}", f"{ma.size_bytes / 1e6:.2f}", ratio(mb.size_bytes, ma.size_bytes)),
        ("latency", mb.latency_text(), ma.latency_text(), speed_change(mb, ma)),
    ]
    return aligned(rows)
