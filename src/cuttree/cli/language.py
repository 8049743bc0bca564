"""``cuttree prune`` and ``eval`` on a causal language model: ``--hf DIR`` (a ``save_pretrained``
folder) or ``--gguf FILE``, with its tokenizer; text as windows of token ids
(:mod:`cuttree.datasets.lm_text`).

- ``prune --hf DIR --set method=unstructured --set criterion=wanda --set ratio=0.5 --out OUT``:
  calibrated on ``--calib-windows`` windows of ``--calib-text`` (held-out Wikipedia articles by default);
  ``OUT`` a ``.cuttree`` file or a new folder for ``from_pretrained`` (model and tokenizer).
- ``eval [MODEL.cuttree --tokenizer T | --hf DIR | --gguf FILE] --metric perplexity --data wikipedia-eval``:
  perplexity over ``--windows`` windows of ``--length`` tokens; ``--before`` a dense model to
  put beside it, timed interleaved (prefill and decode tokens/s) with ``--speed``.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from cuttree.cli.common import NOOP_FIX
from cuttree.config import Config
from cuttree.files.atomic import check_writable


def lm_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--hf", metavar="DIR", help="a Hugging Face causal LM folder (save_pretrained), with its tokenizer")
    sp.add_argument("--gguf", metavar="FILE", help="a GGUF file (llama.cpp), read by transformers, float32")
    sp.add_argument("--length", type=int, default=512, help="tokens per text window (default 512)")


def calib_args(sp: argparse.ArgumentParser, training: bool = False) -> None:
    what = "calibration and fine-tuning" if training else "calibration"
    sp.add_argument(
        "--calib-text",
        default="wikipedia-calib",
        help=f"language models: the {what} text: wikipedia-calib (the default), python-docs, botchan or text:PATH",
    )
    sp.add_argument("--calib-windows", type=int, default=32, help="language models: calibration windows (default 32)")


LM_CRITERION = "wanda"  #: the criterion a language model is pruned with when the config names none


def lm_config(cfg: Config) -> Config:
    """``cfg`` with criterion ``wanda`` where it names none: weights alone remove the channels
    that carry a language model's massive activations (docs/llm.md), and these commands always
    have calibration text.

    >>> lm_config(Config(ratio=0.5)).criterion, lm_config(Config(ratio=0.5, criterion="l1")).criterion
    ('wanda', 'l1')
    """
    if "criterion" in cfg.model_fields_set:
        return cfg
    return Config(**{**cfg.to_dict(), "criterion": LM_CRITERION})


def source(args: argparse.Namespace) -> str | None:
    """The language model named by ``--hf`` or ``--gguf`` (one of them at most), else ``None``."""
    if args.hf and args.gguf:
        raise ValueError("give --hf DIR or --gguf FILE, not both")
    if args.gguf and not str(args.gguf).endswith(".gguf"):
        raise ValueError(f"--gguf '{args.gguf}' is not a .gguf file; give a GGUF file, or --hf for a model folder")
    return args.hf or args.gguf


def cmd_prune(args: argparse.Namespace, cfg: Config) -> int:
    """Prune (or sparsify) a causal LM calibrated on text windows; write OUT."""
    import cuttree
    from cuttree.datasets.lm_text import text, windows
    from cuttree.files.hf_models import load_causal_lm

    if args.arch is not None or args.model is not None:
        raise ValueError("give --hf/--gguf (a language model) or --arch/--model, not both")
    out = Path(args.out)
    check_writable(out, folder=out.suffix != ".cuttree")
    if out.suffix != ".cuttree" and out.exists():
        raise FileExistsError(f"--out '{out}' exists; give a new folder (from_pretrained) or a .cuttree file")
    cfg = lm_config(cfg)
    model, tokenizer = load_causal_lm(source(args))  # type: ignore[arg-type]
    dense_config = model.config.to_dict()  # type: ignore[union-attr, operator]  # what a plan is made for
    calib = windows(tokenizer, text(args.calib_text), args.length, args.calib_windows)
    batches = [w[None] for w in calib]
    if cfg.method == "unstructured":
        with _progress():  # one line per decoder layer: its time and the peak memory
            r = cuttree.sparsify(model, cfg, calib_data=batches, inplace=True)
        model = cuttree.strip(r.model)
        print(f"sparsity {r.sparsity:.1%} of the weights of {len(r.masks)} layers")
        plan = cuttree.PruningPlan(groups=())
    else:
        p = cuttree.prune(model, (calib[:1],), cfg, calib_data=batches)
        model, plan = p.model, p.plan
        print(p.plan.table(limit=args.rows))
        print(f"\n{p.table()}")
    if out.suffix == ".cuttree":
        # the dense architecture the plan was made for (depth pruning patches num_hidden_layers)
        cuttree.save(model, out, arch="cuttree.models:causal_lm", arch_kwargs={"config": dense_config}, plan=plan)
    else:
        from cuttree.files.huggingface import save_pretrained

        save_pretrained(model, out, probe=(calib[:1, :16],))
        tokenizer.save_pretrained(out)
    print(f"wrote {out}")
    return 0


def cmd_run(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """The whole job on a causal LM: pruned calibrated on ``--calib-windows`` windows of
    ``--calib-text``, distilled from the dense model on every window of that text, perplexity on
    ``--windows`` windows of ``--data``; the run folder gets the tokenizer beside ``model.cuttree``,
    and ``pretrained/`` where the widths are uniform."""
    from cuttree.cli.common import logger
    from cuttree.datasets.lm_text import TextWindows, text, windows
    from cuttree.files.hf_models import load_causal_lm
    from cuttree.recover.job import run_job

    if args.arch is not None or args.model is not None:
        raise ValueError("give --hf/--gguf (a language model) or --arch/--model, not both")
    named, cfg = source(args), lm_config(cfg)
    check_writable(Path(args.out), folder=True)
    model, tokenizer = load_causal_lm(named)  # type: ignore[arg-type]
    dense_config = model.config.to_dict()  # type: ignore[union-attr, operator]  # what the plan is made for
    train = windows(tokenizer, text(args.calib_text), args.length)
    test = windows(tokenizer, text(args.data), args.length, args.windows)
    report = run_job(
        model, (train[:1],), cfg, TextWindows(train), TextWindows(test), args.out, "cuttree.models:causal_lm",
        {"config": dense_config}, logger(args), data_name=args.data, progress=not args.quiet,
        noop_fix=None if args.allow_noop else NOOP_FIX, resume=args.resume, source=named,
        calib_data=[w[None] for w in train[: args.calib_windows]],
    )  # fmt: skip
    tokenizer.save_pretrained(args.out)
    if report.get("pretrained"):
        tokenizer.save_pretrained(Path(args.out) / report["pretrained"])
    return report


@contextmanager
def _progress() -> Iterator[None]:
    """cuttree's INFO log lines (the layer-by-layer progress) on stderr while the block runs."""
    log = logging.getLogger("cuttree")
    handler, level = logging.StreamHandler(sys.stderr), log.level
    handler.setFormatter(logging.Formatter("  %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity (and with ``--speed`` tokens/s) of a causal LM, beside ``--before`` if given."""
    from cuttree.datasets.lm_text import text, windows
    from cuttree.frontends.torch.language import perplexity, speeds
    from cuttree.reports.report import write_json

    if args.metric != "perplexity":
        raise ValueError(f"--metric {args.metric} is for images; a language model is measured with --metric perplexity")
    model, tokenizer, name = _model(args)
    test = windows(tokenizer, text(args.data), args.length, args.windows)
    models = {"after": model}
    if args.before:
        from cuttree.files.hf_models import load_causal_lm

        models = {"before": load_causal_lm(args.before)[0], "after": model}
    figures: dict[str, dict[str, Any]] = {
        k: {"perplexity": perplexity(m, test, batch_size=1)} for k, m in models.items()
    }
    if args.speed:
        for k, s in speeds(models, test, batch=1, seq=args.length).items():
            figures[k] |= s
    figures["after"]["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    for k, f in figures.items():
        speed = (
            f", prefill {f['prefill_tokens_per_s']:.0f} tokens/s, decode {f['decode_tokens_per_s']:.1f} tokens/s"
            if "prefill_tokens_per_s" in f
            else ""
        )
        print(f"{k}: perplexity {f['perplexity']:.3f}{speed}")
    print(f"on {args.data}: {len(test)} windows of {args.length} tokens ({len(test) * (args.length - 1):,} predicted)")
    report = Path(args.report) if args.report else Path(f"{Path(name).with_suffix('')}.eval.json")
    write_json(report, "eval", "torch", None, model=name, data=args.data, windows=len(test), length=args.length,
               before=figures.get("before"), after=figures["after"])  # fmt: skip
    print(f"wrote {report}")
    return 0


def _model(args: argparse.Namespace) -> tuple[nn.Module, Any, str]:
    from cuttree.files import cuttree_file as io
    from cuttree.files.hf_models import load_causal_lm

    named = source(args)
    if named is not None:
        if args.model is not None:
            raise ValueError(f"give the model once: '{args.model}' or --hf/--gguf '{named}'")
        model, tokenizer = load_causal_lm(named)
        return model, tokenizer, named.rstrip("/")
    if args.model is None:
        raise ValueError("eval needs a model: a .cuttree file (with --tokenizer), --hf DIR or --gguf FILE")
    if not args.tokenizer:
        raise ValueError(
            f"'{args.model}' holds no tokenizer; give --tokenizer (the dense model's folder or .gguf file)"
        )
    from transformers import AutoTokenizer

    t = Path(args.tokenizer)
    kw = {"gguf_file": t.name} if t.suffix == ".gguf" else {}
    tokenizer = AutoTokenizer.from_pretrained(t.parent if kw else t, **kw)
    return io.load(args.model, trusted=args.trust).eval(), tokenizer, str(args.model)
