"""Where does a pruned model's time go in ONNX Runtime, and how fast could it be at best?

For one model of ``bench/_build.py`` pruned with the defaults at ``--ratios`` (``--layers`` adds
per-layer overrides as JSON, ``--round-to`` overrides the rounding), both the dense and the pruned
model are exported with ``cuttree.export_onnx`` and profiled in ONNX Runtime (2 intra-op threads,
batch 32, ``enable_profiling``; per-node kernel time, median of ``--runs`` after 2). Each
Conv/Gemm node is paired with the Conv2d/Linear layer whose weight it holds, and its MACs are
that layer's.

Printed: the dense model's shares of kernel time and of MACs by kind of node (1×1 convs,
depthwise/grouped convs, other convs, Gemm); then per plan the MAC reduction, the kernel-time
speed-up of the Conv/Gemm nodes and their ratio (the two models profiled one after the other, not
interleaved as ``bench/onnx_speed.py`` times them: a figure to see where the time goes, not the
acceptance figure), and the ratio the same plan would reach if every node's time fell exactly in
proportion to its own MACs ("proportional kernels"). That last figure depends only on the dense
profile and the plan. It is below 1 where nodes lose different fractions of their MACs (a
depthwise conv loses ``r``, a 1×1 conv between two pruned groups ``1 − (1 − r)²``) and hold
different shares of the time than of the MACs: the speed-up is a time-weighted mean of the nodes'
reductions, the MAC reduction a MAC-weighted one.

    python bench/onnx_profile.py [--model mobilenet_v2] [--ratios 0.3,0.5] [--runs 10]
        [--layers '{"features.2.conv.2": {"ratio": 0}}'] [--round-to 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cuttree
from _build import build
from cuttree.files.onnx import export_onnx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--round-to", type=int, default=None, help="override the default round_to")
    ap.add_argument("--layers", default="{}", help="per-layer overrides, JSON (Config.layers)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    dense, size = build(a.model)
    x1 = (torch.randn(1, 3, size, size),)
    xb = np.random.default_rng(0).standard_normal((32, 3, size, size), dtype=np.float32)
    kw: dict[str, Any] = {"layers": json.loads(a.layers)}
    if a.round_to:
        kw["round_to"] = a.round_to
    base, other = profile(dense, x1, xb, a.runs)
    print(f"{a.model}, batch 32, 2 threads, ONNX Runtime kernel times (median of {a.runs} after 2)")
    print(f"settings beyond the ratio: {kw}\n")
    shares(base, other)
    print("\n| ratio | MAC reduction | kernel speed-up | speed-up ÷ MACs | proportional kernels: speed-up ÷ MACs |")
    print("|---|---|---|---|---|")
    for ratio in (float(r) for r in a.ratios.split(",")):
        pruned = cuttree.prune(dense, x1, cuttree.Config(ratio=ratio, latency_runs=0, **kw)).model
        nodes, _ = profile(pruned, x1, xb, a.runs)
        td = tp = ideal = 0.0
        md = mp = 0
        for layer, (t, m, _) in base.items():  # the same layer in both models
            t2, m2, _ = nodes[layer]
            td, tp, md, mp = td + t, tp + t2, md + m, mp + m2
            ideal += t * m2 / m
        red = md / mp
        print(f"| {ratio:g} | {red:.2f}× | {td / tp:.2f}× | {td / tp / red:.2f} | {td / ideal / red:.2f} |", flush=True)


def profile(
    model: torch.nn.Module, x1: tuple[torch.Tensor], xb: np.ndarray, runs: int
) -> tuple[dict[int, tuple[float, int, str]], list[float]]:
    """Per Conv2d/Linear layer (by its place in the order torch runs them): the median kernel
    milliseconds of its node, its MACs and its kind; and the kernel milliseconds of the other
    nodes.

    The MACs are the model's own (its Conv2d and Linear layers in the order they run): ONNX
    Runtime pads the weights of a conv whose channel counts are off its block, and records the
    padded shapes. Node names change where a conv leaves the NCHWc path, and the nodes run in
    another order than torch's (a downsample first), so each node takes the first layer left, in
    torch's order, whose weight it holds (:func:`fits`).
    """
    import onnxruntime as ort

    layers = layer_macs(model, torch.from_numpy(xb))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        export_onnx(model, x1, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(d) / "profile")
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: xb}
        for _ in range(runs + 2):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, list[float]] = defaultdict(list)
    weights: dict[str, list[int] | None] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"].removesuffix("_kernel_time")
        times[name].append(e["dur"] / 1000)
        if name in weights:
            continue
        op = e["args"].get("op_name")  # FusedConv: conv + activation off the NCHWc path
        if op in ("Conv", "FusedConv"):
            weights[name] = next(iter(e["args"]["input_type_shape"][1].values()))
        else:
            weights[name] = [] if op == "Gemm" else None
    out: dict[int, tuple[float, int, str]] = {}
    other: list[float] = []
    for name, ts in times.items():
        w = weights[name]
        if w is None:
            other.append(statistics.median(ts[2:]))
            continue
        i = next((i for i, (_, _, shape) in enumerate(layers) if i not in out and fits(w, shape)), None)
        assert i is not None, f"node {name} (weight {w}) matches no Conv2d/Linear layer left"
        out[i] = (statistics.median(ts[2:]), *layers[i][:2])
    assert len(out) == len(layers), f"layers without a node: {set(range(len(layers))) - set(out)}"
    return out, other


def fits(node: list[int], layer: tuple[int, ...]) -> bool:
    """Whether a node's recorded weight shape is a layer's weight, up to ONNX Runtime's padding of
    channel counts to its block (16 at most). A Gemm node (``node`` empty) is any Linear layer."""
    if not node:
        return len(layer) == 2
    if len(node) != 4 or len(layer) != 4:
        return False
    return all(0 <= n - c < 16 for n, c in zip(node[:2], layer[:2], strict=True)) and list(node[2:]) == list(layer[2:])


def layer_macs(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[int, str, tuple[int, ...]]]:
    """MACs, kind and weight shape of each Conv2d and Linear layer, in the order they run on ``x``."""
    seen: list[tuple[int, str, tuple[int, ...]]] = []

    def hook(mod: torch.nn.Conv2d | torch.nn.Linear, _: Any, y: torch.Tensor) -> None:
        w = mod.weight
        if isinstance(mod, torch.nn.Linear):
            seen.append((y.shape[0] * w.numel(), "Gemm", tuple(w.shape)))
            return
        kind = "grouped/depthwise conv" if mod.groups > 1 else "1×1 conv" if w.shape[2:] == (1, 1) else "k×k conv"
        seen.append((y.shape[0] * y.shape[2] * y.shape[3] * w.numel(), kind, tuple(w.shape)))

    kinds = (torch.nn.Conv2d, torch.nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def shares(nodes: dict[int, tuple[float, int, str]], other: list[float]) -> None:
    t_all = sum(t for t, _, _ in nodes.values()) + sum(other)
    m_all = sum(m for _, m, _ in nodes.values())
    by: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    by["other nodes"][0] = sum(other)
    for t, m, kind in nodes.values():
        by[kind][0] += t
        by[kind][1] += m
    print(f"dense: {t_all:.1f} ms of kernel time, {m_all / 1e9:.2f} GMACs")
    print("| node kind | share of the time | share of the MACs |\n|---|---|---|")
    for k, (tk, mk) in sorted(by.items(), key=lambda kv: -kv[1][0]):
        print(f"| {k} | {tk / t_all:.1%} | {mk / m_all:.1%} |")


if __name__ == "__main__":
    main()
