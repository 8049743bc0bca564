"""``cuttree run``, ``sensitivity``, ``report`` and ``demo``: the whole job (prune, fine-tune,
report), the analysis it can allocate from, and its report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

import cuttree.cli.keras as cli_keras
from cuttree.cli import language
from cuttree.cli.common import (
    NOOP_FIX,
    config_from,
    data_args,
    dataset,
    logger,
    model_args,
    noop_arg,
    torch_model,
    trust_arg,
)
from cuttree.config import Config
from cuttree.core.sensitivity import Sensitivity
from cuttree.files.atomic import check_writable


def cmd_run(args: argparse.Namespace) -> int:
    from cuttree.recover.devices import deterministic_env, rank_device
    from cuttree.recover.job import report_table, run_job

    cfg = config_from(args)
    sens = _sensitivity_file(args, cfg)
    if language.source(args) is not None:
        if sens is not None:
            raise ValueError(
                "allocation: sensitivity is not available for language models yet; set allocation: uniform"
            )
        report = language.cmd_run(args, cfg)
    elif args.frontend == "keras":
        if args.resume:
            raise ValueError("--resume continues torch runs only (Keras fine-tuning keeps no checkpoint); drop it")
        # Keras fine-tuning crops and flips each batch itself (cuttree.recover.batching): unaugmented arrays
        report = cli_keras.cmd_run(args, cfg, dataset(args, "train", augment=False), dataset(args, "test"), sens)
    else:
        if args.arch is None or args.input_shape is None:
            raise ValueError(
                "run needs --arch and --input-shape for a torch model, or --model my.keras for a Keras one"
            )
        check_writable(args.out, folder=True)
        if cfg.finetune.deterministic:
            deterministic_env()
        device = rank_device(args.device)
        model = torch_model(args).to(device)
        torch.manual_seed(cfg.seed)
        x = (torch.randn(*args.input_shape).to(device),)
        report = run_job(
            model,
            x,
            cfg,
            dataset(args, "train"),
            dataset(args, "test"),
            args.out,
            args.arch,
            args.arch_kwargs,
            logger(args),
            sensitivity=sens,
            data_name=args.data,
            progress=not args.quiet,
            noop_fix=None if args.allow_noop else NOOP_FIX,
            resume=args.resume,
        )
    print(report_table(report))
    from cuttree.reports.report import write_report

    html_path, md_path = write_report(args.out)
    model_file = "model.keras" if args.frontend == "keras" else "model.cuttree"
    extras = ", the tokenizer" if language.source(args) is not None else ""
    if report.get("pretrained"):
        extras += f", {report['pretrained']}/ (from_pretrained)"
    print(f"\nwrote {args.out}/: {model_file}{extras}, report.json, {html_path.name}, {md_path.name}, config.yaml")
    return 0


def _sensitivity_file(args: argparse.Namespace, cfg: Config) -> Sensitivity | None:
    """The ``--sensitivity`` file that ``allocation: sensitivity`` needs, loaded (else ``None``)."""
    if cfg.allocation != "sensitivity":
        return None
    if not args.sensitivity:
        raise ValueError(
            "allocation: sensitivity needs --sensitivity FILE: make it with `cuttree sensitivity` on the same "
            "model, or set allocation: uniform"
        )
    return Sensitivity.load(args.sensitivity)


def cmd_report(args: argparse.Namespace) -> int:
    from cuttree.reports.report import write_report

    html_path, md_path = write_report(args.run)
    print(f"wrote {html_path} and {md_path}")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    cfg = config_from(args, need_target=False)
    out = Path(args.out)
    if out.suffix != ".json":
        raise ValueError(f"--out '{out}' must end in .json")
    try:
        ratios = tuple(float(r) for r in args.ratios.split(","))
    except ValueError:
        raise ValueError(f"--ratios '{args.ratios}' is not a list of numbers; write it as 0.25,0.5,0.75") from None
    data = dataset(args, args.split, augment=False)
    if args.frontend == "keras":
        if args.arch is not None:
            raise ValueError("give --model (a .keras/.h5 file) or --arch (a torch model), not both")
        s = cli_keras.sensitivity(args, cfg, data, ratios)
    else:
        if args.arch is None or args.input_shape is None:
            raise ValueError(
                "sensitivity needs --arch and --input-shape for a torch model, or --model my.keras for a Keras one"
            )
        s = _torch_sensitivity(args, cfg, data, ratios)
    print(s.table())
    s.save(out)
    print(f"\nwrote {out} ({len(s.groups)} groups × {len(s.ratios)} ratios, {s.seconds:.0f} s of measuring)")
    return 0


def _torch_sensitivity(args: argparse.Namespace, cfg: Config, data: Any, ratios: tuple[float, ...]) -> Sensitivity:
    from cuttree.api import sensitivity

    model = torch_model(args).eval()
    return sensitivity(
        model,
        (torch.zeros(*args.input_shape),),
        cfg,
        data,
        ratios=ratios,
        samples=args.samples,
        cache_dir=args.cache_dir,
        quiet=args.quiet,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from cuttree.demo import run_demo

    return run_demo(args)


def add_demo(sub: Any) -> None:
    sp = sub.add_parser("demo", help="the main job on the embedded default data")
    sp.add_argument("--out-dir", default=None, help="run folder (default runs/demo, runs/demo-DATA for other data)")
    sp.add_argument("--data", default="digits", help="digits (default, shipped by scikit-learn), cifar10, mnist")
    sp.add_argument("--limit", type=int, default=None, help="images per split (cifar10/mnist)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    sp.add_argument("--quiet", action="store_true", help="no per-step log lines")
    sp.set_defaults(func=cmd_demo)


def add_run(sub: Any) -> None:
    sp = sub.add_parser("run", help="prune, fine-tune (with distillation) and report: the whole job")
    model_args(sp, keras_too=True)
    trust_arg(sp)
    data_args(sp)
    sp.add_argument("--config", help="YAML config")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    sp.add_argument("--out", required=True, help="run folder")
    sp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    sp.add_argument(
        "--sensitivity", default=None, help="a `cuttree sensitivity` file, for --set allocation=sensitivity"
    )
    sp.add_argument("--quiet", action="store_true", help="no per-step log lines")
    sp.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in --out (torch models; same config)"
    )
    language.lm_args(sp)
    language.calib_args(sp, training=True)
    sp.add_argument(
        "--windows", type=int, default=32, help="language models: evaluation windows of --data (default 32)"
    )
    noop_arg(sp)
    sp.set_defaults(func=cmd_run)


def add_report(sub: Any) -> None:
    sp = sub.add_parser("report", help="write report.html (self-contained) and report.md from a run's report.json")
    sp.add_argument("run", help="a run folder (with report.json) or a report .json file")
    sp.set_defaults(func=cmd_report)


def add_sensitivity(sub: Any) -> None:
    sp = sub.add_parser(
        "sensitivity", help="the metric after pruning each group alone at several ratios (cached; resumable)"
    )
    model_args(sp, keras_too=True)
    trust_arg(sp)
    data_args(sp)
    sp.add_argument("--split", default="train", help="the split to score on (default train: keep test for the end)")
    sp.add_argument("--samples", type=int, default=1000, help="validation samples scored (a fixed random subset)")
    sp.add_argument("--ratios", default="0.25,0.5,0.75", help="ratios each group is pruned at, e.g. 0.25,0.5,0.75")
    sp.add_argument("--config", help="YAML config (mode, criterion, …; its budget is not used)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    sp.add_argument("--out", required=True, help="output .json (what `run --sensitivity` reads)")
    sp.add_argument("--cache-dir", default=None, help="cache folder (default $CUTTREE_CACHE or ~/.cache/cuttree)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    sp.set_defaults(func=cmd_sensitivity)
