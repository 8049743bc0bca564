"""Hugging Face zoo: every causal language model class of the installed transformers, built from
a tiny random config, pruned at ratio 0.3 and checked against the zeroing oracle.

Each architecture's default config is shrunk by setting the usual size attributes where the
config has them (hidden 64, 2 layers, 4 heads of 16, 2 key/value heads, MLP 128, vocabulary 128).
Configs that stay large (over 30 M parameters, counted on the meta device), cannot be built, or
whose dense model does not run on 8 tokens with that config are listed as skipped, with why:
those are the recipe's limits, not cuttree's. The others are pruned and run beside a copy of the
dense model in which every channel the plan removes is zeroed; a model whose norms reduce over a
pruned channel stream (LayerNorm over the residual stream) differs by design, and the row says
how many such norms there are. Prints one row per architecture and the counts.

    python bench/hf_zoo.py [--ratio 0.3] [--only llama,gpt2] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import warnings
from typing import Any

import torch

import cuttree
from _oracle import EXACT, norms_over_channels, verdict
from cuttree.frontends.torch.validate import zeroed

TINY = {
    "hidden_size": 64, "n_embd": 64, "d_model": 64, "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2,
    "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "intermediate_size": 128, "ffn_dim": 128, "n_inner": 128, "vocab_size": 128,
    "max_position_embeddings": 64, "n_positions": 64,
}  # fmt: skip
MAX_PARAMS = 30_000_000


def tiny_config(model_type: str) -> Any:
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type)
    for k, v in TINY.items():
        if hasattr(cfg, k) or k in getattr(cfg, "attribute_map", {}):
            try:
                setattr(cfg, k, v)
            except Exception:  # some configs derive or forbid an attribute: keep their own value
                pass
    return cfg


def run(model_type: str, ratio: float) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    row: dict[str, Any] = {"model_type": model_type}
    t0 = time.perf_counter()
    try:
        cfg = tiny_config(model_type)
        with torch.device("meta"):
            n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
        if n > MAX_PARAMS:
            return {**row, "skipped": f"{n / 1e6:.0f} M parameters with the tiny config"}
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).eval()
        ids = torch.randint(0, 100, (1, 8))
        with torch.no_grad():
            model(ids)
    except Exception as e:  # the recipe's limit: the dense model cannot be built or run this way
        return {**row, "skipped": f"dense model: {type(e).__name__}: {str(e)[:120]}"}
    try:
        r = cuttree.prune(model, (ids,), cuttree.Config(ratio=ratio, latency_runs=0))
        with torch.no_grad():
            got, want = r.model(ids).logits, zeroed(model, r.plan)(ids).logits
        row.update(
            ok=tuple(got.shape) == tuple(want.shape),
            params=[r.before.params, r.after.params],
            head_groups=sum(1 for g in r.plan.groups if g.unit == "heads" and g.removed.size),
            query_head_groups=sum(1 for g in r.plan.groups if g.unit == "query heads" and g.removed.size),
            oracle_rel=float((got - want).abs().max()) / (float(want.std()) or 1.0),
            norms_over_pruned=norms_over_channels(model, r.plan),
            unsupported=r.unsupported_ops,
            seconds=round(time.perf_counter() - t0, 1),
        )
    except Exception as e:  # cuttree's failure: reported, and the zoo carries on
        row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:200]}")
    return row


def main() -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--only", default="", help="comma-separated model types (llama,gpt2,…)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")  # each architecture's own notes; the row says what matters
    from transformers.utils import logging

    logging.set_verbosity_error()
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for model_type in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        if only and model_type not in only:
            continue
        row = run(model_type, args.ratio)
        rows.append(row)
        if "skipped" in row:
            print(f"{model_type:26s} skipped: {row['skipped']}", flush=True)
        elif "error" in row:
            print(f"{model_type:26s} FAILED {row['error']}", flush=True)
        else:
            p0, p1 = row["params"]
            oracle = verdict(row["oracle_rel"], row["norms_over_pruned"])
            ops = f" ops without a rule: {','.join(row['unsupported'])}" if row["unsupported"] else ""
            print(
                f"{model_type:26s} {'ok' if row['ok'] else 'NOT OK':6s} params {p1 / p0:6.1%} "
                f"head groups {row['head_groups']} query-head groups {row['query_head_groups']} {oracle}{ops} "
                f"{row['seconds']} s",
                flush=True,
            )
        gc.collect()
    tried = [r for r in rows if "skipped" not in r]
    ok = sum(bool(r.get("ok")) for r in tried)
    exact = sum(r.get("oracle_rel", 1.0) < EXACT for r in tried)
    unexplained = sum(r.get("oracle_rel", 0.0) >= EXACT and not r.get("norms_over_pruned") for r in tried)
    print(
        f"\n{len(rows)} architectures, {len(rows) - len(tried)} skipped (the tiny config's limits); of {len(tried)} "
        f"pruned: {ok} ran with their output shape, {exact} equal the zeroing oracle (relative max error < 1e-4), "
        f"{unexplained} differ without a norm over pruned channels"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
