"""The whole job: measure → (prune → recalibrate BN → fine-tune) × steps → measure → save.

A run folder gets the resolved ``config.yaml``, ``report.json`` (before/after params, MACs, size,
latency, metric, and the per-step history) and ``model.cuttree`` (the composed plan, so it loads
from the original architecture).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from cuttree.api import plan_and_apply
from cuttree.config import Config
from cuttree.core.keep_best import warn_if_worse
from cuttree.core.plan import PruningPlan, compose
from cuttree.core.results import Measurements, aligned, metric_name, speed_change
from cuttree.core.sensitivity import Sensitivity
from cuttree.core.shortfall import refuse_noop
from cuttree.files import cuttree_file as io
from cuttree.frontends.torch.measure import compare, count_macs, evaluate, measure
from cuttree.recover.checkpoints import CHECKPOINT
from cuttree.recover.devices import world
from cuttree.recover.train import Log, finetune, recalibrate_bn


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
    model: nn.Module,
    example_inputs: Sequence[Any],
    cfg: Config,
    train_data: Any,
    test_data: Any,
    out_dir: str | Path,
    arch: str,
    arch_kwargs: dict[str, Any] | None = None,
    log: Log = print,
    sensitivity: Sensitivity | None = None,
    data_name: str = "",
    progress: bool = False,
    noop_fix: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Prune ``model`` to ``cfg``'s target in ``cfg.steps`` rounds with fine-tuning; write the run folder.

    With ``allocation: sensitivity``, ``sensitivity`` (a :class:`cuttree.Sensitivity` of
    this model) decides the per-group ratios; it is written to the run folder. With ``noop_fix``
    (the fix to name), a first step that removes nothing ends the run with a :class:`PlanError`
    before any fine-tuning. The resolved ``config.yaml`` is written first; with ``resume`` an
    interrupted run in ``out_dir`` continues: its config must be this one, every step is pruned
    again (deterministic) and its fine-tuning resumes from the step's checkpoint.
    """
    out = Path(out_dir)
    _check_job(cfg, sensitivity)
    rank, _ = world()
    if rank == 0:
        _start(out, cfg, resume)
    key = metric_name(cfg)
    teacher = copy.deepcopy(model).eval()
    t0 = time.perf_counter()
    before = measure(model, example_inputs, 0)  # timed at the end, interleaved with the pruned model
    log(f"evaluating the dense model on {len(test_data):,} test samples")
    metric_before = evaluate(model, test_data, cfg.mode, ignore_index=cfg.finetune.ignore_index)
    log(f"dense: {key} {metric_before[key]:.2f}  params {before.params:,}  MACs {before.macs:,}")
    history: list[dict[str, Any]] = []
    plan: PruningPlan | None = None
    current = model
    for i in range(cfg.steps):
        current, step_plan, row = _step(
            i,
            current,
            example_inputs,
            cfg,
            train_data,
            test_data,
            teacher,
            out,
            log,
            sensitivity,
            progress,
            resume,
            noop_fix,
        )
        plan = step_plan if plan is None else compose(plan, step_plan)
        history.append(row)
    assert plan is not None
    log(f"measuring: parameters, MACs, size and latency ({cfg.latency_runs} runs each, dense and pruned interleaved)")
    before, after = compare(teacher, current, example_inputs, cfg.latency_runs)
    metric_after = history[-1]["metric_after_finetune"]
    report: dict[str, Any] = {
        "command": "run",
        "framework": "torch",
        "model": "model.cuttree",
        "config": cfg.to_dict(),
        "arch": arch,
        "data": data_name,
        "before": {**before.to_dict(), "metric": metric_before},
        "after": {**after.to_dict(), "metric": metric_after},
        "history": history,
        "budget": plan.budget,
        "plan": {g.name: [g.size, len(g.keep), g.unit] for g in plan.groups},
        "sensitivity": "sensitivity.json" if sensitivity is not None else None,
        "seconds": time.perf_counter() - t0,
    }
    if rank == 0:
        _write_run(out, current, plan, report, arch, arch_kwargs, example_inputs, sensitivity)
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


def _step(
    i: int,
    current: nn.Module,
    example_inputs: Sequence[Any],
    cfg: Config,
    train_data: Any,
    test_data: Any,
    teacher: nn.Module,
    out: Path,
    log: Log,
    sensitivity: Sensitivity | None,
    progress: bool,
    resume: bool,
    noop_fix: str | None,
) -> tuple[nn.Module, PruningPlan, dict[str, Any]]:
    """Step ``i`` of the job: prune, recalibrate, fine-tune (resumed where a checkpoint is), and
    the step's record for the report."""
    key = metric_name(cfg)
    scfg = step_config(cfg, i)
    log(f"step {i + 1}/{cfg.steps}: pruning ({scfg.criterion}; tracing, scoring, planning, surgery)")
    current, step_plan, _ = plan_and_apply(
        current, example_inputs, scfg, calib_data=train_data, sensitivity=sensitivity
    )
    if i == 0 and noop_fix is not None:
        refuse_noop(step_plan, noop_fix)
    if cfg.finetune.bn_recalibrate and not cfg.reconstruct:
        recalibrate_bn(current, train_data, scfg)
    pruned_metric = evaluate(current, test_data, cfg.mode, ignore_index=cfg.finetune.ignore_index)
    log(f"step {i + 1}/{cfg.steps}: pruned, {key} {pruned_metric[key]:.2f} before fine-tuning")
    ft_dir = out / f"step{i + 1}"
    ft_dir.mkdir(parents=True, exist_ok=True)
    again = resume and (ft_dir / CHECKPOINT).is_file()
    log(
        f"step {i + 1}/{cfg.steps}: {'resuming' if again else 'recovering:'} fine-tuning {scfg.finetune.epochs:g} epochs"
    )
    fstate = finetune(
        current, train_data, scfg, teacher=teacher, run_dir=ft_dir, resume=again, log=log, progress=progress
    )
    tuned = evaluate(current, test_data, cfg.mode, ignore_index=cfg.finetune.ignore_index)
    log(f"step {i + 1}/{cfg.steps}: fine-tuned, {key} {tuned[key]:.2f}")
    warn_if_worse(pruned_metric, tuned, cfg.mode)
    row: dict[str, Any] = {
        "step": i + 1,
        "config": scfg.to_dict(),
        "plan_channels": [step_plan.channels_before, step_plan.channels_after],
        "macs": count_macs(current, example_inputs),
        "metric_after_pruning": pruned_metric,
        "metric_after_finetune": tuned,
        "finetune_steps": fstate["total"],
        "final_loss": fstate["history"][-1]["loss"] if fstate["history"] else None,
        "validation": fstate["validation"],
    }
    return current, step_plan, row


def _write_run(
    out: Path,
    current: nn.Module,
    plan: PruningPlan,
    report: dict[str, Any],
    arch: str,
    arch_kwargs: dict[str, Any] | None,
    example_inputs: Sequence[Any],
    sensitivity: Sensitivity | None,
) -> None:
    """The run folder's files: the model, the analysis it was allocated from, the report."""
    metric_before, metric_after = report["before"]["metric"], report["after"]["metric"]
    io.save(
        current,
        out / "model.cuttree",
        arch=arch,
        arch_kwargs=arch_kwargs,
        plan=plan,
        extra={
            "metric_before": metric_before,
            "metric_after": metric_after,
            "input_shape": [1, *example_inputs[0].shape[1:]] if hasattr(example_inputs[0], "shape") else None,
        },
    )
    if sensitivity is not None:
        sensitivity.save(out / "sensitivity.json")
    io.atomic_write(out / "report.json", lambda p: p.write_text(json.dumps(report, indent=1)))


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
    io.atomic_write(saved, lambda p: p.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))


def report_table(report: dict[str, Any], key: str) -> str:
    """Before/after rows for a job report: metric, params, MACs, size, latency (median and
    interquartile range, the two models timed interleaved)."""
    b, a = report["before"], report["after"]
    mb, ma = Measurements.from_dict(b), Measurements.from_dict(a)

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}× smaller" if y else "—"

    rows = [
        ("", "before", "after", "change"),
        (
            key,
            f"{b['metric'][key]:.2f}%",
            f"{a['metric'][key]:.2f}%",
            f"{a['metric'][key] - b['metric'][key]:+.2f} points",
        ),
        ("parameters", f"{mb.params:,}", f"{ma.params:,}", ratio(mb.params, ma.params)),
        (f"MACs (counted, batch {mb.batch_size})", f"{mb.macs:,}", f"{ma.macs:,}", ratio(mb.macs, ma.macs)),
        ("size (MB)", f"{mb.size_bytes / 1e6:.2f}", f"{ma.size_bytes / 1e6:.2f}", ratio(mb.size_bytes, ma.size_bytes)),
        ("latency", mb.latency_text(), ma.latency_text(), speed_change(mb, ma)),
    ]
    return aligned(rows)
