"""``cuttree finetune`` and ``eval``: recover a pruned model's accuracy (resumable, under
torchrun too) and measure it on a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

import cuttree.cli.keras as cli_keras
from cuttree.cli import language
from cuttree.cli.common import (
    config_from,
    data_args,
    dataset,
    logger,
    trust_arg,
    write_json,
)
from cuttree.files import cuttree_file as io
from cuttree.files.atomic import check_writable


def cmd_finetune(args: argparse.Namespace) -> int:
    from cuttree.core.keep_best import warn_if_worse
    from cuttree.recover.devices import deterministic_env, init_distributed, rank_device
    from cuttree.recover.sharding import gathered
    from cuttree.recover.train import finetune, weights_digest

    cfg = config_from(args, need_target=False)
    if args.frontend == "keras":
        return cli_keras.cmd_finetune(args, cfg, dataset(args, "train", augment=False), dataset(args, "test"))
    if cfg.finetune.deterministic:
        deterministic_env()
    rank, size = init_distributed(args.device)
    if rank == 0:
        check_writable(args.out, folder=True)
    device = rank_device(args.device)
    meta = io.read_metadata(args.model)
    model = io.load(args.model, trusted=args.trust).to(device).train()
    teacher = None
    if args.teacher:
        teacher = io.build_from_file(meta, args.model, trusted=args.trust)
        io.load_weights(teacher, args.teacher)
        teacher.to(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = dataset(args, "test")
    before = _evaluate(args, model, test, cfg.mode, cfg.finetune.ignore_index, "before") if rank == 0 else {}
    torch.manual_seed(cfg.seed)
    state = finetune(
        model,
        dataset(args, "train"),
        cfg,
        teacher=teacher,
        run_dir=out,
        resume=args.resume,
        log=logger(args) if rank == 0 else (lambda m: None),
        max_steps=args.max_steps,
        progress=not args.quiet,
    )
    if state["step"] < state["total"]:
        print(f"stopped at step {state['step']}/{state['total']}; continue with --resume")
        return 0
    model = gathered(model, lambda: io.load(args.model, trusted=args.trust).to(device))  # FSDP2: whole again
    digest = weights_digest(model)
    if rank == 0:
        io.save(model, out / "model.cuttree", arch=meta["arch"], arch_kwargs=meta.get("arch_kwargs"), plan=meta["plan"])
        m = _evaluate(args, model, test, cfg.mode, cfg.finetune.ignore_index, "after")
        print(f"{_metrics(m)} on {args.data} test ({len(test):,} samples), before fine-tuning {_metrics(before)}")
        warn_if_worse(before, m)
        report = write_json(
            out / "report.json",
            "finetune",
            cfg,
            model="model.cuttree",
            source=str(args.model),
            arch=meta["arch"],
            data=args.data,
            before={"metric": before},
            after={"metric": m},
            steps=state["total"],
            history=state["history"],
            validation=state["validation"],
            weights_sha256=digest,
            processes=size,
        )
        print(f"wrote {out / 'model.cuttree'} and {report}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cuttree.recover.devices import rank_device

    if args.metric == "perplexity" or language.source(args) is not None:
        return language.cmd_eval(args)
    if args.model is None:
        raise ValueError("eval needs a model file (.cuttree, .keras or .h5), or --hf/--gguf for a language model")
    if args.frontend == "keras":
        return cli_keras.cmd_eval(args, dataset(args, args.split))
    device = rank_device(args.device)
    meta = io.read_metadata(args.model)
    model = io.load(args.model, trusted=args.trust).to(device)
    report_path = Path(args.report) if args.report else Path(args.model).with_suffix(".eval.json")
    if args.data == "stsb":  # a sentence encoder: Spearman of cosine similarity against the scores
        from cuttree.datasets.text import minilm_tokenizer, spearman, stsb

        pairs = stsb(args.split, limit=args.limit)
        m = {"spearman": spearman(model.cpu(), minilm_tokenizer(), pairs)}
        n, names = len(pairs), list[str]()
    else:
        mode = args.mode or meta["plan"].config.get("mode", "classification")
        data = dataset(args, args.split)
        ignore = int(meta["plan"].config.get("finetune", {}).get("ignore_index", 255))
        m = _evaluate(args, model, data, mode, ignore, "eval")
        n, names = len(data), getattr(data, "classes", None) or []
    print(f"{_metrics(m)} on {args.data} {args.split} ({n:,} samples)")
    for k, v in m.items():
        if k.startswith("iou_"):
            i = int(k[4:])
            print(f"  IoU {names[i] if i < len(names) else i}: {v:.2f}")
    write_json(
        report_path,
        "eval",
        None,
        model=str(args.model),
        data=args.data,
        split=args.split,
        samples=n,
        after={"metric": m},
    )
    print(f"wrote {report_path}")
    return 0


def _metrics(m: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in m.items() if not k.startswith("iou_"))


def _evaluate(args: argparse.Namespace, model: torch.nn.Module, data: Any, mode: str, ignore: int, label: str) -> Any:
    """The metric on ``data`` with a progress bar; a model that cannot run on the data's samples
    (a 3-channel model on 1-channel images) is a one-line error, not a traceback."""
    from cuttree.frontends.torch.measure import evaluate
    from cuttree.reports.progress import Progress

    x0 = data[0][0]
    try:
        with torch.inference_mode():
            model.eval()(x0.unsqueeze(0).to(next(model.parameters()).device))
    except RuntimeError as e:
        why = str(e).strip().splitlines()[0]
        raise ValueError(
            f"the model cannot run on --data {args.data} samples of shape {tuple(x0.shape)} ({why}); "
            "evaluate it on data shaped like its training data"
        ) from None
    with Progress(len(data), f"{label} on {args.data}", quiet=getattr(args, "quiet", False)) as bar:
        return evaluate(model, data, mode, ignore_index=ignore, on_batch=bar.advance)


def add_finetune(sub: Any) -> None:
    sp = sub.add_parser("finetune", help="fine-tune a .cuttree model (resumable; runs under torchrun) or a .keras one")
    sp.add_argument("model", help="a .cuttree file, or a .keras/.h5 file")
    trust_arg(sp)
    data_args(sp)
    sp.add_argument(
        "--teacher", help="the unpruned model to distil from: weights (.safetensors/.pt), or a .keras file for Keras"
    )
    sp.add_argument("--config", help="YAML config (its finetune: section is used)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    sp.add_argument("--out", required=True, help="run folder (checkpoints, model.cuttree)")
    sp.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    sp.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (testing)")
    sp.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: cuda:LOCAL_RANK), cuda:1, …")
    sp.add_argument("--quiet", action="store_true", help="no per-step log lines")
    sp.set_defaults(func=cmd_finetune)


def add_eval(sub: Any) -> None:
    sp = sub.add_parser("eval", help="evaluate a .cuttree (or .keras/.h5) model on a dataset, or a language model")
    sp.add_argument("model", nargs="?", help="a .cuttree file, or a .keras/.h5 file")
    trust_arg(sp)
    data_args(sp)
    sp.add_argument("--split", default="test")
    sp.add_argument("--mode", choices=["classification", "segmentation"], default=None)
    sp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    sp.add_argument("--report", default=None, help="where to write the JSON result (default: MODEL.eval.json)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    language.lm_args(sp)
    sp.add_argument("--metric", choices=["task", "perplexity"], default="task", help="perplexity: a language model")
    sp.add_argument("--windows", type=int, default=32, help="perplexity: windows of --length tokens (default 32)")
    sp.add_argument("--tokenizer", help="perplexity of a .cuttree file: the dense model's folder or .gguf file")
    sp.add_argument("--before", help="perplexity: the dense model (folder or .gguf) to put beside it")
    sp.add_argument("--speed", action="store_true", help="perplexity: also prefill and decode tokens/s, interleaved")
    sp.set_defaults(func=cmd_eval)
