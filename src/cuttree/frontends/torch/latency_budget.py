"""A latency budget met by measuring: ``latency_target: {ms: X | fraction: F, batch: B, runtime: R}``.

MACs are a proxy; what a user has is a latency budget on their machine. So the target is met by
measurement, here: the planner is asked for a MACs fraction, the candidate is pruned and timed
(eager torch, or ONNX Runtime on the exported deploy form) interleaved with the dense model in
one loop, and the fraction is corrected from what was measured (a secant step on the log of
latency against the log of MACs, bracketed), until the candidate is within ``tolerance`` below
the budget or a few rounds are spent.

Latency is judged as a fraction of the dense model's, timed in the same loop: on a shared
machine the speed drifts between loops by more than a 5% tolerance, and both models drift
together. A budget in milliseconds becomes that fraction through the dense latency's median over
every loop. With ``round_to: auto`` (the default) the first guess is pruned with widths rounded
to multiples of 8 (what vectorised kernels like) and with free widths, and the search runs on
rounded widths only where they cost at least 3% less time per MAC kept. The plan records the
budget, what was measured and the margin (``plan.budget``).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from cuttree.config import Config
from cuttree.core.plan import PruningPlan
from cuttree.core.sensitivity import Sensitivity
from cuttree.core.timing import Timing, interleaved
from cuttree.errors import PlanError
from cuttree.frontends.torch.groups import DependencyGraph
from cuttree.frontends.torch.util import eval_mode, to_numpy

ROUNDS = 7


def timers(models: Sequence[nn.Module], inputs: Sequence[torch.Tensor], runtime: str) -> list[Callable[[], float]]:
    """A call per model that runs one forward pass on ``inputs`` and returns its milliseconds
    (eval-mode semantics; the models' own training flags are left as they are)."""
    from cuttree.frontends.torch.measure import timer

    if runtime == "eager":
        out = []
        for m in models:

            def run(m: nn.Module = m) -> None:
                with eval_mode(m), torch.inference_mode():
                    m(*inputs)

            out.append(timer(run, torch.device("cpu")))
        return out
    from cuttree.deploy import fold_batchnorm
    from cuttree.files.onnx import onnx_bytes

    names = [f"input_{i}" for i in range(len(inputs))]
    return [
        session_timer(onnx_bytes(fold_batchnorm(m, tuple(inputs)), tuple(inputs), names, 18)[0], inputs) for m in models
    ]


def session_timer(onnx: bytes | str, inputs: Sequence[torch.Tensor]) -> Callable[[], float]:
    """A call that runs an ONNX model (bytes or a file path) once in ONNX Runtime on ``inputs``, with
    as many intra-op threads as torch uses, and returns its milliseconds."""
    import onnxruntime as ort

    from cuttree.frontends.torch.measure import timer

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    # ONNX Runtime's threads spin-wait after a run by default: with two sessions timed in turn,
    # one session's spinning threads take the cores from the other's (ratios moved by ±20% here)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
    feed = {i.name: to_numpy(x) for i, x in zip(session.get_inputs(), inputs, strict=True)}
    return timer(lambda: session.run(None, feed), torch.device("cpu"))


Result = tuple[nn.Module, PruningPlan, DependencyGraph]
Engine = Callable[[nn.Module, Sequence[Any], Config, Any, Any], Result]


def meet_latency(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    calib_data: Iterable[Any] | None,
    sensitivity: Sensitivity | None,
    apply: Engine,
    log: Callable[[str], object] = lambda m: None,
) -> Result:
    """The pruned model, its plan and graph, whose measured latency meets ``config.latency_target``.

    ``apply(model, inputs, cfg, calib, sensitivity)`` is the engine (plan + surgery) for a config
    with ``macs_target`` in place of the latency target.
    """
    target = config.latency_target
    assert target is not None
    if target.runtime == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise PlanError(
                "latency_target.runtime: onnxruntime needs onnxruntime: pip install 'cuttree[onnx]'"
            ) from None
    if any(not isinstance(x, torch.Tensor) for x in (example_inputs[0], *example_inputs)):
        raise PlanError("latency_target needs example inputs that are tensors with a batch dimension")
    search = _Search(model, example_inputs, config, calib_data, sensitivity, apply, log)
    frac = search.goal()  # first guess: latency proportional to MACs
    done = search.first(frac) if config.round_to == "auto" else search.trial(frac)
    while not done and len(search.tried) < ROUNDS:
        under = [(f, r) for f, r, _ in search.tried if r <= search.goal()]
        over = [(f, r) for f, r, _ in search.tried if r > search.goal()]
        lo = max(under) if under else None
        hi = min(over) if over else (1.0, 1.0)
        frac = _next(lo, hi, search.goal() * (1 - search.tol / 4), frac)  # aim inside the window, not at its edge
        done = search.trial(frac)
    return search.best()


class _Search:
    """The state of one search for a MACs fraction whose measured latency meets the budget.

    Everything is judged as a fraction of the dense latency timed in the same loop: a machine
    whose speed drifts between loops slows both models alike. A budget in milliseconds becomes a
    fraction of the dense latency as measured so far (the median over every loop).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Sequence[Any],
        config: Config,
        calib_data: Iterable[Any] | None,
        sensitivity: Sensitivity | None,
        apply: Engine,
        log: Callable[[str], object],
    ) -> None:
        target = config.latency_target
        assert target is not None
        self.target, self.model, self.example_inputs, self.log = target, model, example_inputs, log
        self.calib_data, self.sensitivity, self.apply = calib_data, sensitivity, apply
        self.inputs = [
            torch.randn(target.batch, *x.shape[1:], generator=torch.Generator().manual_seed(0)) for x in example_inputs
        ]
        self.runs = max(config.latency_runs, 5)
        self.base = config.model_copy(update={"latency_target": None})
        self.tol = target.tolerance
        self.dense_timer = timers([model], self.inputs, target.runtime)[0]  # one session for the dense model, reused
        dense_t = interleaved([self.dense_timer], self.runs, warmup=2)[0].median_ms
        self.what = f"{target.ms:g} ms" if target.ms is not None else f"{target.fraction:g} × the dense latency"
        log(f"latency target {self.what} at batch {target.batch} ({target.runtime}); dense {dense_t:.2f} ms")
        if target.ms is not None and dense_t <= target.ms:
            raise PlanError(
                f"latency_target {target.ms:g} ms is already met: the dense model takes {dense_t:.2f} ms at batch "
                f"{target.batch} ({target.runtime}) on this machine; set a lower ms or use macs_target"
            )
        self.dense_loops = [dense_t]
        self.history: list[dict[str, Any]] = []
        # (MACs fraction, latency fraction, result); a result far over the budget is not kept (memory)
        self.tried: list[tuple[float, float, Result | None]] = []
        self.round_to: int | None = None  # None: the config's own (auto)
        self.rounding: dict[str, Any] | None = None

    def goal(self) -> float:
        if self.target.fraction is not None:
            return self.target.fraction
        assert self.target.ms is not None
        return self.target.ms / statistics.median(self.dense_loops)

    # The search stops in the upper half of the tolerance window and aims at its middle: a loop's
    # figure moves by a few percent from the next, and a candidate accepted at the window's
    # bottom re-measures below it (VGG-16-BN in ONNX Runtime: accepted at −4.2%, timed −5.3%).
    def inside(self, ratio: float) -> bool:
        return self.goal() * (1 - self.tol / 2) <= ratio <= self.goal()

    def candidate(self, frac: float, round_to: int | None = None) -> Result:
        upd: dict[str, Any] = {"macs_target": min(frac, 1.0)}
        if round_to is not None:
            upd["round_to"] = round_to
        return self.apply(
            self.model, self.example_inputs, self.base.model_copy(update=upd), self.calib_data, self.sensitivity
        )

    def judge(self, frac: float, result: Result, cand_timer: Callable[[], float], d: Timing, c: Timing) -> bool:
        """Record one timed candidate; a candidate inside the window is timed once more (one
        loop's figure moves by a few percent from the next) and judged on both loops' mean."""
        self.dense_loops.append(d.median_ms)
        ratio = c.median_ms / d.median_ms
        row = {
            "macs_fraction": round(frac, 4),
            "measured_ms": round(c.median_ms, 3),
            "dense_ms": round(d.median_ms, 3),
            "latency_fraction": round(ratio, 4),
        }
        self.log(f"  MACs {frac:.3f} of dense: {c.median_ms:.2f} ms, {ratio:.3f} of the dense {d.median_ms:.2f} ms")
        if self.inside(ratio):
            d, c = interleaved([self.dense_timer, cand_timer], self.runs, warmup=1)
            self.dense_loops.append(d.median_ms)
            ratio = (ratio + c.median_ms / d.median_ms) / 2
            row["confirmed_fraction"] = round(ratio, 4)
            self.log(f"    again: {c.median_ms / d.median_ms:.3f} of the dense latency; {ratio:.3f} on both loops")
        self.tried.append((frac, ratio, result if ratio <= self.goal() * (1 + self.tol) else None))
        self.history.append(row)
        return self.inside(ratio)

    def trial(self, frac: float) -> bool:
        """Prune for ``frac`` of the MACs (widths as the search decided), time it, judge it."""
        result = self.candidate(frac, self.round_to)
        cand_timer = timers([result[0]], self.inputs, self.target.runtime)[0]
        d, c = interleaved([self.dense_timer, cand_timer], self.runs, warmup=2)
        return self.judge(frac, result, cand_timer, d, c)

    def first(self, frac: float) -> bool:
        """The first guess with ``round_to: auto``. Widths rounded to a multiple of 8 can run much
        faster for the same MACs (ONNX Runtime's and oneDNN's kernels pick their paths by channel
        count), so the guess is pruned both ways, rounded (auto) and free (1), and timed in one
        loop: the whole search then runs on whichever costs less time per MAC kept."""
        rounded, plain = self.candidate(frac), self.candidate(frac, round_to=1)
        t8, t1 = timers([rounded[0], plain[0]], self.inputs, self.target.runtime)
        d, c8, c1 = interleaved([self.dense_timer, t8, t1], self.runs, warmup=2)
        f8, f1 = c8.median_ms / d.median_ms, c1.median_ms / d.median_ms
        # rounding buys speed when it costs clearly less time per MAC kept (MACs are what
        # accuracy follows) and its steps are fine enough to search
        per_mac = (f8 / rounded[1].macs_after) / (f1 / plain[1].macs_after)
        fine = rounded[1].macs_after >= 0.9 * plain[1].macs_after
        self.rounding = {
            "round_to": "auto",
            "macs_fraction": round(frac, 4),
            "latency_fraction": round(f8, 4),
            "unrounded_fraction": round(f1, 4),
            "time_per_mac": round(per_mac, 4),
            "kept": per_mac < 0.97 and fine,
        }
        self.log(
            f"  widths rounded (auto) at MACs {frac:.3f}: {f8:.3f} of the dense latency, free {f1:.3f} "
            f"({per_mac:.2f}× the time per MAC)"
        )
        if self.rounding["kept"]:
            return self.judge(frac, rounded, t8, d, c8)
        self.round_to = 1
        return self.judge(frac, plain, t1, d, c1)

    def best(self) -> Result:
        """The candidate with the most MACs that meets the budget, its plan recording the search."""
        fits = [(f, r, res) for f, r, res in self.tried if r <= self.goal() and res is not None]
        if not fits:
            last = self.history[-1]
            raise PlanError(
                f"latency_target {self.what} was not reached in {ROUNDS} rounds (last: {last['measured_ms']:.2f} ms, "
                f"{last['latency_fraction']:.3f} of the dense latency, at {last['macs_fraction']:.3f} of the MACs); "
                "set a higher budget, or prune with macs_target"
            )
        frac, ratio, (work, plan, graph) = max(fits, key=lambda t: t[0])
        dense_ref = statistics.median(self.dense_loops)
        goal, target = self.goal(), self.target
        budget = {
            "latency_target_ms": target.ms if target.ms is not None else round(goal * dense_ref, 3),
            "latency_target_fraction": round(goal, 4),
            "batch": target.batch,
            "runtime": target.runtime,
            "tolerance": self.tol,
            "dense_ms": round(dense_ref, 3),
            "measured_ms": round(ratio * dense_ref, 3),
            "latency_fraction": round(ratio, 4),
            "margin": round((goal - ratio) / goal, 4),
            "macs_fraction": round(frac, 4),
            "rounds": self.history,
            **({"rounding": self.rounding} if self.rounding else {}),
            **({k: v for k, v in plan.budget.items() if k not in ("target",)} if plan.budget else {}),
        }
        return work, dataclasses.replace(plan, budget=budget), graph


def _next(lo: tuple[float, float] | None, hi: tuple[float, float], goal: float, frac: float) -> float:
    """The next MACs fraction: a secant on log(ms) against log(fraction) between the bracket's ends."""
    if lo is None:  # everything so far was too slow: go down by the measured ratio
        return max(frac * (goal / hi[1]) ** 1.2, 0.01)
    (f0, t0), (f1, t1) = lo, hi
    if f1 <= f0 or t1 <= t0:
        return f0
    slope = (math.log(t1) - math.log(t0)) / (math.log(f1) - math.log(f0))
    guess = math.exp(math.log(f0) + (math.log(goal) - math.log(t0)) / max(slope, 1e-3))
    return min(max(guess, f0 + 0.1 * (f1 - f0)), f1 - 0.1 * (f1 - f0))
