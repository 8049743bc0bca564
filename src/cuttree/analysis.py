"""Sensitivity analysis (``cuttree.sensitivity``): what pruning each group alone costs, at several ratios.

For every prunable group and every ratio, the model is pruned in that group alone (channels
ranked by the config's criterion, as the planner ranks them), batch norm is recalibrated (when
``finetune.bn_recalibrate``), and the task metric is measured on a fixed validation subset. The
result is the drop per group and ratio, which ``allocation: sensitivity`` turns into per-group
ratios that meet a budget with the least predicted loss (:mod:`cuttree.core.allocate`).

Results are cached on disk, keyed by the model's weights, the data subset and the settings; each
entry is written as soon as it is measured, so an interrupted run resumes where it stopped and
a repeated one is instant. The cache folder is ``cache_dir``, else ``$CUTTREE_CACHE``, else
``~/.cache/cuttree``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cuttree._util import as_inputs, to_numpy
from cuttree.api import planning_inputs
from cuttree.config import Config
from cuttree.core.allocate import Curve
from cuttree.core.planner import estimate
from cuttree.errors import SurgeryError
from cuttree.files import atomic_write
from cuttree.measure import evaluate
from cuttree.progress import Progress
from cuttree.surgery import apply_plan
from cuttree.train import recalibrate_bn
from cuttree.validate import keep_all

FORMAT = "cuttree-sensitivity-1"
DEFAULT_RATIOS = (0.25, 0.5, 0.75)


@dataclass
class Sensitivity:
    """The metric after pruning each group alone, per ratio (``None``: the model cannot take it)."""

    metric: str  #: "top1" or "miou"
    baseline: float  #: the unpruned model on the same subset
    ratios: tuple[float, ...]
    samples: int
    key: str  #: the cache key: weights, data and settings
    groups: dict[str, int] = field(default_factory=dict)  #: group → channels
    results: dict[str, dict[str, float | None]] = field(default_factory=dict)  #: group → str(ratio) → metric
    macs: dict[str, dict[str, int]] = field(default_factory=dict)  #: group → str(ratio) → MACs (estimated)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return all(len(self.results.get(g, {})) == len(self.ratios) for g in self.groups)

    def curves(self) -> dict[str, Curve]:
        """Group → (ratio, drop in points) pairs, for :func:`cuttree.core.allocate.allocate`;
        a ratio the model could not take ends the curve there.

        >>> s = Sensitivity("top1", 90.0, (0.25, 0.5), 100, "k", {"a": 8}, {"a": {"0.25": 89.0, "0.5": None}})
        >>> s.curves()
        {'a': [(0.25, 1.0)]}
        """
        out: dict[str, Curve] = {}
        for g in self.groups:
            pts = []
            for r in self.ratios:
                v = self.results.get(g, {}).get(str(r))
                if v is None:
                    break
                pts.append((r, self.baseline - v))
            if pts:
                out[g] = pts
        return out

    def table(self) -> str:
        """Drop in points per group (rows) and ratio (columns)."""
        head = ["group", "channels", *[f"{r:g}" for r in self.ratios]]
        rows = [head]
        for g, size in self.groups.items():
            cells = []
            for r in self.ratios:
                v = self.results.get(g, {}).get(str(r))
                cells.append("—" if v is None else f"{self.baseline - v:+.2f}")
            rows.append([g, str(size), *cells])
        w = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
        return "\n".join(
            [
                f"{self.metric} drop in points after pruning one group alone (baseline {self.baseline:.2f} on "
                f"{self.samples} samples)",
                *lines,
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self), "ratios": list(self.ratios)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sensitivity:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(
                f"not a cuttree sensitivity file (format {d.get('format') if isinstance(d, dict) else None!r})"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        kw["ratios"] = tuple(float(r) for r in kw["ratios"])
        return cls(**kw)

    def save(self, path: str | Path) -> Path:
        return atomic_write(path, lambda p: p.write_text(json.dumps(self.to_dict(), indent=1)))

    @classmethod
    def load(cls, path: str | Path) -> Sensitivity:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"sensitivity file '{p}' does not exist; run `cuttree sensitivity` to make it")
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"'{p}' is not a valid sensitivity file ({type(e).__name__}); run it again") from None


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("CUTTREE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "cuttree"


def sensitivity(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    data: Any,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    samples: int = 1000,
    calib_data: Any = None,
    cache_dir: str | Path | None = None,
    quiet: bool = False,
    log: Callable[[str], object] | None = None,
) -> Sensitivity:
    """Measure the metric after pruning each group alone at each of ``ratios``.

    ``data`` is a dataset of ``(x, y)``; ``samples`` of it (a fixed random subset, seeded by
    ``config.seed``) are scored. Batch norm is recalibrated on ``calib_data`` (default: the same
    subset; all of it, or ``calib_samples`` if more), the unpruned baseline too, so that each drop is
    pruning's alone. Use a validation split, not the test split the final figure is reported on.
    """
    from cuttree.job import metric_name

    example_inputs = as_inputs(example_inputs)
    ratios = tuple(sorted(float(r) for r in ratios))
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise ValueError(
            f"sensitivity ratios {list(ratios)} must each lie strictly between 0 and 1, e.g. 0.25,0.5,0.75"
        )
    n = len(data)
    if samples < config.min_samples or n < config.min_samples:
        raise ValueError(
            f"sensitivity needs at least min_samples={config.min_samples} validation samples, got "
            f"{min(samples, n)}; pass more data or lower min_samples"
        )
    rng = np.random.default_rng(config.seed)
    idx = np.sort(rng.choice(n, size=min(samples, n), replace=False))
    subset = _Subset(data, idx)
    calib: Any = calib_data if calib_data is not None else subset
    key = _key(model, example_inputs, config, subset, ratios)
    cache = cache_root(cache_dir) / "sensitivity" / f"{key}.json"
    metric = metric_name(config)
    ignore = config.finetune.ignore_index

    def score(m: nn.Module) -> float:
        return float(
            evaluate(m, subset, config.mode, batch_size=config.finetune.batch_size, ignore_index=ignore)[metric]
        )

    # BN recalibration alone moves the metric (new statistics from a finite sample), so the
    # baseline is the unpruned model recalibrated the same way: the drops are pruning's alone
    recal_cfg = config.model_copy(update={"calib_samples": max(config.calib_samples, len(subset))})

    def recalibrated_score(m: nn.Module) -> float:
        if config.finetune.bn_recalibrate:
            recalibrate_bn(m, calib, recal_cfg)
        return score(m)

    t0 = time.perf_counter()
    if cache.is_file():
        result = Sensitivity.load(cache)
        if result.complete:
            return result
    else:
        result = Sensitivity(metric, recalibrated_score(copy.deepcopy(model)), ratios, len(subset), key)
    # each group alone, at each ratio: no budget search, no per-layer overrides, heads like
    # channels; traced and scored once, planned once per ratio
    base = config.model_copy(
        update={
            "macs_target": None,
            "params_target": None,
            "latency_target": None,
            "allocation": "uniform",
            "layers": {},
            "head_ratio": None,
            "threshold": None,
            "scope": "local",
        }
    )
    traced = planning_inputs(model, example_inputs, base.model_copy(update={"ratio": ratios[0]}), calib)
    graph = traced.graph
    plans = {r: traced.decide(base.model_copy(update={"ratio": r})) for r in ratios}
    names = [g.name for g in plans[ratios[0]].groups]
    result.groups = {g.name: g.size for g in plans[ratios[0]].groups}
    todo = [(g, r) for g in names for r in ratios if str(r) not in result.results.get(g, {})]
    with Progress(len(todo), "sensitivity", log=log, quiet=quiet) as bar:
        for g, r in todo:
            plan = plans[r]
            single = dataclasses.replace(plan, groups=tuple(p if p.name == g else keep_all(p) for p in plan.groups))
            value: float | None
            try:
                work = apply_plan(copy.deepcopy(model), single, example_inputs, graph.outputs)
                value = recalibrated_score(work)
            except SurgeryError:
                value = None  # the model's code fixes this group's size: it stays whole
            result.results.setdefault(g, {})[str(r)] = value
            result.macs.setdefault(g, {})[str(r)] = estimate(graph, single)
            result.save(cache)
            bar.advance(info=f"{g} @ {r:g}: {'—' if value is None else f'{value:.2f}'}")
    result.seconds += time.perf_counter() - t0
    result.save(cache)
    return result


class _Subset:
    """``data`` at the indices ``idx`` (a dataset, keeping its ``classes`` if it has them)."""

    def __init__(self, data: Any, idx: np.ndarray) -> None:
        self.data, self.idx = data, idx
        self.classes = getattr(data, "classes", None)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> Any:
        return self.data[int(self.idx[i])]


def _key(
    model: nn.Module, example_inputs: Sequence[Any], config: Config, subset: _Subset, ratios: Sequence[float]
) -> str:
    """A digest of everything the result depends on: weights, inputs' shapes, data, settings."""
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(to_numpy(v)).tobytes())
    h.update(json.dumps([list(getattr(x, "shape", ())) for x in example_inputs]).encode())
    for i in range(len(subset)):
        x, y = subset[i]
        h.update(np.ascontiguousarray(to_numpy(torch.as_tensor(x))).tobytes())
        h.update(np.ascontiguousarray(to_numpy(torch.as_tensor(y))).tobytes())
    settings = {
        k: config.to_dict()[k]
        for k in ("mode", "criterion", "min_channels", "round_to", "ignore", "seed", "calib_samples")
    }
    settings["bn"] = config.finetune.bn_recalibrate
    settings["batch_size"] = config.finetune.batch_size
    settings["ratios"] = list(ratios)
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:20]
