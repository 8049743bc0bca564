"""A latency budget met by measuring: ``latency_target: {ms: X, batch: B, runtime: eager | onnxruntime}``.

MACs are a proxy; what a user has is a latency budget on their machine. So the target is met by
measurement, here: the planner is asked for a MACs fraction, the candidate is pruned and timed
(eager torch, or ONNX Runtime on the exported deploy form) interleaved with the dense model in
one loop, and the fraction is corrected from what was measured (a secant step on the log of
latency against the log of MACs, bracketed), until the candidate is within ``tolerance`` below
the budget or a few rounds are spent. Where ``round_to`` is 1, the last candidate is also tried
with widths rounded to a multiple of 8 (what vectorised kernels like) and kept if it is also
within the budget's tolerance with at least as many MACs. The plan records the budget, what was measured and the margin
(``plan.budget``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from cuttree._util import eval_mode, to_numpy
from cuttree.config import Config
from cuttree.errors import PlanError
from cuttree.graph.groups import DependencyGraph
from cuttree.plan import PruningPlan
from cuttree.timing import Timing, interleaved

ROUNDS = 7


def timers(models: Sequence[nn.Module], inputs: Sequence[torch.Tensor], runtime: str) -> list[Callable[[], float]]:
    """A call per model that runs one forward pass on ``inputs`` and returns its milliseconds
    (eval-mode semantics; the models' own training flags are left as they are)."""
    from cuttree.measure import timer

    if runtime == "eager":
        out = []
        for m in models:

            def run(m: nn.Module = m) -> None:
                with eval_mode(m), torch.inference_mode():
                    m(*inputs)

            out.append(timer(run, torch.device("cpu")))
        return out
    from cuttree.deploy import fold_batchnorm
    from cuttree.export import onnx_bytes

    names = [f"input_{i}" for i in range(len(inputs))]
    return [
        session_timer(onnx_bytes(fold_batchnorm(m, tuple(inputs)), tuple(inputs), names, 18)[0], inputs) for m in models
    ]


def session_timer(onnx: bytes | str, inputs: Sequence[torch.Tensor]) -> Callable[[], float]:
    """A call that runs an ONNX model (bytes or a file path) once in ONNX Runtime on ``inputs``, with
    as many intra-op threads as torch uses, and returns its milliseconds."""
    import onnxruntime as ort

    from cuttree.measure import timer

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
    feed = {i.name: to_numpy(x) for i, x in zip(session.get_inputs(), inputs, strict=True)}
    return timer(lambda: session.run(None, feed), torch.device("cpu"))


def measure_pair(
    first: Callable[[], float], candidate: nn.Module, inputs: Sequence[torch.Tensor], runtime: str, runs: int
) -> tuple[Timing, Timing]:
    """``first`` (a timer) and ``candidate`` timed interleaved in one loop after the same warm-up."""
    a, b = interleaved([first, timers([candidate], inputs, runtime)[0]], runs, warmup=2)
    return a, b


def meet_latency(
    model: nn.Module,
    example_inputs: Sequence[Any],
    config: Config,
    calib_data: Iterable[Any] | None,
    sensitivity: Any,
    apply: Callable[[nn.Module, Sequence[Any], Config, Any, Any], tuple[nn.Module, PruningPlan, DependencyGraph]],
    log: Callable[[str], object] = lambda m: None,
) -> tuple[nn.Module, PruningPlan, DependencyGraph]:
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
    first = example_inputs[0]
    if not isinstance(first, torch.Tensor) or any(not isinstance(x, torch.Tensor) for x in example_inputs):
        raise PlanError("latency_target needs example inputs that are tensors with a batch dimension")
    inputs = [
        torch.randn(target.batch, *x.shape[1:], generator=torch.Generator().manual_seed(0)) for x in example_inputs
    ]
    runs = max(config.latency_runs, 5)
    base = config.model_copy(update={"latency_target": None})
    goal, tol = target.ms, target.tolerance

    def candidate(frac: float, round_to: int | None = None) -> tuple[nn.Module, PruningPlan, DependencyGraph]:
        upd: dict[str, Any] = {"macs_target": min(frac, 1.0)}
        if round_to is not None:
            upd["round_to"] = round_to
        return apply(model, example_inputs, base.model_copy(update=upd), calib_data, sensitivity)

    dense_timer = timers([model], inputs, target.runtime)[0]  # one session for the dense model, reused
    dense_t = interleaved([dense_timer], runs, warmup=2)[0].median_ms
    log(f"latency target {goal:g} ms at batch {target.batch} ({target.runtime}); dense {dense_t:.2f} ms")
    history: list[dict[str, float]] = []
    if dense_t <= goal:
        raise PlanError(
            f"latency_target {goal:g} ms is already met: the dense model takes {dense_t:.2f} ms at batch {target.batch} "
            f"({target.runtime}) on this machine; set a lower ms or use macs_target"
        )
    frac = goal / dense_t  # first guess: latency proportional to MACs
    lo: tuple[float, float] | None = None  # (fraction, ms) measured under the goal
    hi: tuple[float, float] = (1.0, dense_t)  # measured over it
    best: tuple[nn.Module, PruningPlan, DependencyGraph, float, float] | None = None
    for _ in range(ROUNDS):
        work, plan, graph = candidate(frac)
        d, c = measure_pair(dense_timer, work, inputs, target.runtime, runs)
        ms = c.median_ms
        history.append(
            {"macs_fraction": round(frac, 4), "measured_ms": round(c.median_ms, 3), "dense_ms": round(d.median_ms, 3)}
        )
        log(f"  MACs {frac:.3f} of dense: {c.median_ms:.2f} ms (dense in the same loop {d.median_ms:.2f} ms)")
        if ms <= goal:
            if best is None or frac > best[3]:
                best = (work, plan, graph, frac, c.median_ms)
            lo = (frac, ms)
            if ms >= goal * (1 - tol):
                break
        else:
            hi = (frac, ms)
        frac = _next(lo, hi, goal, frac)
    if best is None:
        raise PlanError(
            f"latency_target {goal:g} ms was not reached in {ROUNDS} rounds (last: {history[-1]['measured_ms']:.2f} ms "
            f"at {history[-1]['macs_fraction']:.3f} of the MACs); set a higher ms, or prune with macs_target"
        )
    work, plan, graph, frac, ms = best
    rounded = None
    if config.round_to == 1:
        w8, p8, g8 = candidate(frac, round_to=8)
        a, b = measure_pair(timers([work], inputs, target.runtime)[0], w8, inputs, target.runtime, runs)
        rounded = {"round_to": 8, "measured_ms": round(b.median_ms, 3), "unrounded_ms": round(a.median_ms, 3)}
        # kept only if it is as good a use of the budget: within it, and at least as many MACs
        # (what accuracy follows) for the time
        rounded["kept"] = goal * (1 - tol) <= b.median_ms <= goal and p8.macs_after >= plan.macs_after
        if rounded["kept"]:
            work, plan, graph, ms = w8, p8, g8, b.median_ms
    budget = {
        "latency_target_ms": goal,
        "batch": target.batch,
        "runtime": target.runtime,
        "tolerance": tol,
        "dense_ms": round(dense_t, 3),
        "measured_ms": round(ms, 3),
        "margin": round((goal - ms) / goal, 4),
        "macs_fraction": round(frac, 4),
        "rounds": history,
        **({"rounding": rounded} if rounded else {}),
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
