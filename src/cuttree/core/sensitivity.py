"""A sensitivity analysis without a framework: its result, its cache, and the measuring loop.

For every prunable group and every ratio, a frontend prunes that group alone (channels ranked by
the config's criterion, as the planner ranks them), recalibrates batch norm and measures the task
metric on a fixed validation subset; this module owns what is the same for every frontend: the
:class:`Sensitivity` result (what ``allocation: sensitivity`` allocates from), the ratios and
sample checks, the seeded subset, and the loop that measures each (group, ratio) once, writing the
cache after every entry so an interrupted run resumes where it stopped. The frontend hands in the
plans (one per ratio) and a ``score(plan)`` callable.

The cache folder is ``cache_dir``, else ``$CUTTREE_CACHE``, else ``~/.cache/cuttree``.

>>> check_ratios([0.5, 0.25])
(0.25, 0.5)
>>> check_ratios([1.0])
Traceback (most recent call last):
ValueError: sensitivity ratios [1.0] must each lie strictly between 0 and 1, e.g. 0.25,0.5,0.75
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cuttree.config import Config
from cuttree.core.allocate import Curve
from cuttree.core.plan import GroupPlan, PruningPlan
from cuttree.files.atomic import atomic_write
from cuttree.reports.progress import Progress

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


def check_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    """The ratios, sorted; each must lie strictly between 0 and 1."""
    out = tuple(sorted(float(r) for r in ratios))
    if not out or any(not 0.0 < r < 1.0 for r in out):
        raise ValueError(f"sensitivity ratios {list(out)} must each lie strictly between 0 and 1, e.g. 0.25,0.5,0.75")
    return out


def subset_indices(n: int, samples: int, min_samples: int, seed: int) -> np.ndarray:
    """The sorted indices of the validation subset: ``samples`` of ``n``, seeded; fewer than
    ``min_samples`` is an error.

    >>> subset_indices(10, 4, 2, 0).tolist()
    [2, 4, 5, 7]
    """
    if samples < min_samples or n < min_samples:
        raise ValueError(
            f"sensitivity needs at least min_samples={min_samples} validation samples, got "
            f"{min(samples, n)}; pass more data or lower min_samples"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(samples, n), replace=False))


def key_settings(config: Config, ratios: Sequence[float]) -> bytes:
    """The settings a sensitivity result depends on, as bytes for its cache key (each frontend
    adds the weights, the input shapes and the data).

    >>> key_settings(Config(ratio=0.5), (0.5,)) == key_settings(Config(ratio=0.3), (0.5,))
    True
    """
    d = config.to_dict()
    keys = ("mode", "criterion", "min_channels", "round_to", "target", "ignore", "seed", "calib_samples", "group_width")
    settings = {k: d[k] for k in keys}
    settings["bn"] = config.finetune.bn_recalibrate
    settings["batch_size"] = config.finetune.batch_size
    settings["ratios"] = list(ratios)
    return json.dumps(settings, sort_keys=True).encode()


#: the config changes that make a plan prune each group by a plain ratio: no budget search, no
#: per-layer overrides, heads like channels, local scope
SINGLE_GROUP: dict[str, Any] = {
    "macs_target": None,
    "params_target": None,
    "latency_target": None,
    "allocation": "uniform",
    "layers": {},
    "head_ratio": None,
    "threshold": None,
    "scope": "local",
}


def alone(plan: PruningPlan, group: str) -> PruningPlan:
    """``plan`` with every group but ``group`` kept whole."""

    def whole(g: GroupPlan) -> GroupPlan:
        return g if g.name == group else dataclasses.replace(g, keep=tuple(range(g.size)))

    return dataclasses.replace(plan, groups=tuple(whole(g) for g in plan.groups))


def measure_groups(
    result: Sensitivity,
    plans: Mapping[float, PruningPlan],
    score: Callable[[PruningPlan], float | None],
    macs: Callable[[PruningPlan], int],
    cache: Path,
    quiet: bool = False,
    log: Callable[[str], object] | None = None,
) -> Sensitivity:
    """Fill ``result`` with ``score`` of every group pruned alone at every ratio not measured yet
    (``plans``: the plan at each ratio, every group pruned), saving ``cache`` after each entry."""
    t0 = time.perf_counter()
    first = plans[result.ratios[0]]
    names = [g.name for g in first.groups]
    result.groups = {g.name: g.size for g in first.groups}
    todo = [(g, r) for g in names for r in result.ratios if str(r) not in result.results.get(g, {})]
    with Progress(len(todo), "sensitivity", log=log, quiet=quiet) as bar:
        for g, r in todo:
            single = alone(plans[r], g)
            value = score(single)
            result.results.setdefault(g, {})[str(r)] = value
            result.macs.setdefault(g, {})[str(r)] = macs(single)
            result.save(cache)
            bar.advance(info=f"{g} @ {r:g}: {'—' if value is None else f'{value:.2f}'}")
    result.seconds += time.perf_counter() - t0
    result.save(cache)
    return result


def cached(cache: Path) -> Sensitivity | None:
    """The cached result at ``cache``, complete or partial, if there is one."""
    return Sensitivity.load(cache) if cache.is_file() else None
