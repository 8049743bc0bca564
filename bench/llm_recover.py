"""Language models, part 2, acceptance 2 and 3: prune SmolLM2-135M-Instruct to at most 60% of its
MACs, distil it from the dense model on text within a stated CPU time, and measure what came back.

- **Model and texts**: as ``bench/llm_structured.py`` (float32, ``torch.set_num_threads(2)``).
  Pruning calibrates on the first ``--calib`` windows of ``wikipedia-calib``; fine-tuning trains
  on every window of ``wikipedia-calib`` but the last ``--val`` (held out: validation, which keeps
  the best weights); perplexity is measured on ``--windows`` windows of ``wikipedia-eval``, never
  trained on. Windows of ``--length`` tokens.
- **Pruning**: ``macs_target`` (default 0.6), ``criterion: wanda``, ``uniform: true`` (one width
  per layer type, so that ``save_pretrained`` can describe it), ``units`` from ``--units``; the
  hidden width kept whole (``ignore: [model.embed_tokens]``) unless ``--hidden``; ``--reconstruct``
  refits the layers that lost inputs by least squares before training.
- **Recovery**: ``cuttree.finetune`` with the dense model as teacher: AdamW, ``--lr`` with
  warm-up and cosine decay, logit distillation (``distill`` α, temperature 1), batches of
  ``--batch`` windows, as many steps as ``--minutes`` allow at the speed of the first steps; it
  stops every ``--every`` steps (resumed from its checkpoint) to measure the perplexity, so the
  curve of perplexity against tokens seen is printed as it goes.
- **Speed**: prefill (1 × 256 tokens) and greedy decode (32 tokens after a 32-token prompt)
  tokens/s, dense and pruned timed interleaved (``cuttree.frontends.torch.language.speeds``).
- **Prompts**: a few fixed prompts answered greedily (32 new tokens) by the dense, the one-shot
  pruned and the recovered model.
- **Files**: the recovered model saved with ``save_pretrained`` and reloaded by plain
  ``from_pretrained`` in a fresh process in which ``cuttree`` cannot be imported, to the same
  perplexity.

    python bench/llm_recover.py [--minutes 45] [--macs 0.6] [--units channels,heads,query heads] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "Aristotle was a Greek philosopher who",
    "The three primary colours are",
]


def _answers(model: Any, tokenizer: Any) -> list[str]:
    out = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = tokenizer(p, return_tensors="pt")["input_ids"]
            gen = model.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=0)
            out.append(tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip().replace("\n", " "))
    return out


def _reloaded_perplexity(folder: Path, ev: torch.Tensor) -> float:
    """Perplexity of the saved folder, loaded by plain ``from_pretrained`` in a process without cuttree."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(ev, Path(tmp) / "ev.pt")
        script = (
            "import sys, math, torch; sys.modules['cuttree'] = None\n"
            "torch.set_num_threads(2)\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}).eval()\n"
            f"ev = torch.load({str(Path(tmp) / 'ev.pt')!r}, weights_only=True)\n"
            "nll, n = 0.0, 0\n"
            "with torch.no_grad():\n"
            "    for i in range(0, len(ev), 4):\n"
            "        x = ev[i:i + 4]\n"
            "        out = m(x, labels=x)\n"
            "        k = x.shape[0] * (x.shape[1] - 1)\n"
            "        nll, n = nll + float(out.loss) * k, n + k\n"
            "print(math.exp(nll / n))\n"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--macs", type=float, default=0.6)
    ap.add_argument("--units", default="channels,heads,query heads")
    ap.add_argument("--minutes", type=float, default=45.0)
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--val", type=int, default=16)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument(
        "--reconstruct", action="store_true", help="reconstruct: true (least-squares refit before training)"
    )
    ap.add_argument("--hidden", action="store_true", help="let the hidden width go too (kept whole by default)")
    ap.add_argument("--distill", type=float, default=1.0)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--out", default="runs/llm_recover")
    ap.add_argument("--json", default="")
    return ap.parse_args()


def _config(args: argparse.Namespace, calib: int) -> Any:
    import cuttree

    return cuttree.Config(
        macs_target=args.macs, criterion="wanda", units=[u.strip() for u in args.units.split(",")], uniform=True,
        min_samples=8, calib_samples=calib, latency_runs=0, reconstruct=args.reconstruct,
        ignore=[] if args.hidden else ["model.embed_tokens"],
        finetune={"optimizer": "adamw", "lr": args.lr, "weight_decay": 0.0, "batch_size": args.batch,
                  "distill": args.distill, "temperature": 1.0, "warmup_steps": 20, "checkpoint_every": args.every,
                  "val_fraction": 0.0},
    )  # fmt: skip


def _prune(dense: Any, calib: torch.Tensor, ev: torch.Tensor, cfg: Any) -> tuple[Any, dict[str, Any]]:
    import cuttree
    from cuttree.frontends.torch.language import perplexity

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = cuttree.prune(dense, (calib[:1],), cfg, calib_data=[w[None] for w in calib])
    model = r.model
    info = {
        "seconds": time.perf_counter() - t,
        "macs_fraction": r.after.macs / r.before.macs,
        "params": r.after.params,
        "params_fraction": r.after.params / r.before.params,
        "layers": model.config.num_hidden_layers,
        "intermediate_size": model.model.layers[0].mlp.gate_proj.out_features,
        "heads": model.model.layers[0].self_attn.q_proj.out_features // model.model.layers[0].self_attn.head_dim,
        "kv_heads": model.model.layers[0].self_attn.k_proj.out_features // model.model.layers[0].self_attn.head_dim,
        "perplexity_one_shot": perplexity(model, ev),
    }
    print(json.dumps({"pruned": info}), flush=True)
    return model, info


def _recover(
    model: Any, dense: Any, train: torch.Tensor, val: torch.Tensor, ev: torch.Tensor, cfg: Any, args: Any, out: Path
) -> dict[str, Any]:
    """Distil within ``--minutes`` (the step budget from the speed of a few probe steps on a copy),
    stopping every ``--every`` steps to measure the perplexity: the curve."""
    import cuttree
    from cuttree.frontends.torch.language import perplexity

    samples: Any = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in train]
    held: Any = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in val]
    probe_cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"checkpoint_every": 0})})
    t = time.perf_counter()
    # no validation data in the probe: its pass over the held-out windows is not a step
    # (with it the probe read 19.5 s a step; the run that followed took 12.9 s a step)
    cuttree.finetune(copy.deepcopy(model), samples, probe_cfg, teacher=dense, log=lambda m: None, max_steps=4)
    per_step = (time.perf_counter() - t) / 4
    total = max(args.every, int(args.minutes * 60 / per_step) // args.every * args.every)
    epochs = total / (len(samples) // args.batch)
    cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"epochs": epochs})})
    curve: list[dict[str, Any]] = [{"step": 0, "tokens": 0, "perplexity": perplexity(model, ev), "seconds": 0.0}]
    trained, state = 0.0, {}
    while curve[-1]["step"] < total:
        t = time.perf_counter()
        state = cuttree.finetune(
            model, samples, cfg, teacher=dense, run_dir=out / "finetune", resume=bool(curve[-1]["step"]),
            log=lambda m: None, max_steps=args.every, val_data=held,
        )  # fmt: skip
        trained += time.perf_counter() - t
        step, history = state["step"], state["history"]
        curve.append({"step": step, "tokens": step * args.batch * args.length, "perplexity": perplexity(model, ev),
                      "seconds": round(trained, 1), "loss": history[-1]["loss"] if history else None})  # fmt: skip
        print(json.dumps(curve[-1]), flush=True)
    return {"steps": total, "epochs": epochs, "seconds_per_step_probe": per_step, "seconds": trained,
            "curve": curve, "validation": state.get("validation")}  # fmt: skip


def main() -> None:
    args = _args()
    torch.set_num_threads(2)
    from cuttree.datasets.lm_text import text, windows
    from cuttree.files.hf_models import load_causal_lm, smollm2
    from cuttree.files.huggingface import save_pretrained
    from cuttree.frontends.torch.language import perplexity, speeds

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense, tokenizer = load_causal_lm(smollm2())
    ev = windows(tokenizer, text("wikipedia-eval"), args.length, args.windows)
    train = windows(tokenizer, text("wikipedia-calib"), args.length)
    calib, val, train = train[: args.calib], train[-args.val :], train[: -args.val]
    report: dict[str, Any] = {"protocol": vars(args), "train_windows": len(train), "val_windows": len(val)}
    report["dense"] = {"perplexity": perplexity(dense, ev), "params": sum(p.numel() for p in dense.parameters())}
    print(json.dumps({"dense": report["dense"], "train_tokens": train.numel()}), flush=True)
    cfg = _config(args, len(calib))
    model, report["pruned"] = _prune(dense, calib, ev, cfg)
    report["finetune"] = _recover(model, dense, train, val, ev, cfg, args, out)
    final = perplexity(model, ev)
    report["recovered"] = {"perplexity": final, "x_dense": final / report["dense"]["perplexity"]}
    report["speed"] = speeds({"dense": dense, "pruned": model}, ev, runs=5)
    report["prompts"] = {
        "prompts": PROMPTS,
        "dense": _answers(dense, tokenizer),
        "recovered": _answers(model, tokenizer),
    }
    folder = save_pretrained(model, out / "recovered", (ev[:1, :16],))
    tokenizer.save_pretrained(folder)
    report["reloaded_perplexity"] = _reloaded_perplexity(folder, ev)
    print(json.dumps({k: report[k] for k in ("recovered", "speed", "prompts", "reloaded_perplexity")}), flush=True)
    d, p, ft = report["speed"]["dense"], report["speed"]["pruned"], report["finetune"]
    print(
        f"\ndense ppl {report['dense']['perplexity']:.2f}; pruned to {report['pruned']['macs_fraction']:.1%} MACs "
        f"({report['pruned']['params_fraction']:.1%} params): one-shot {report['pruned']['perplexity_one_shot']:.2f}, "
        f"after {ft['curve'][-1]['tokens']:,} tokens ({ft['seconds'] / 60:.0f} min) {final:.2f} = "
        f"{final / report['dense']['perplexity']:.2f}x dense; prefill "
        f"{p['prefill_tokens_per_s'] / d['prefill_tokens_per_s']:.2f}x, decode "
        f"{p['decode_tokens_per_s'] / d['decode_tokens_per_s']:.2f}x; reloaded {report['reloaded_perplexity']:.4f}"
    )
    if math.isfinite(final) and args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
