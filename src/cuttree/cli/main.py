"""The ``cuttree`` command: a thin shell over the Python API.

Every user error ends in one line on stderr (``cuttree: error: …``) and a non-zero exit status
that says its kind (:data:`cuttree.errors.EXIT_CODES`: 2 bad argument, 3 missing file, 4 corrupt
file, 5 untraceable model, …); no output file is written unless the whole job succeeded.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml

import cuttree.cli.keras as cli_keras
from cuttree import __version__
from cuttree.api import make_plan, prune
from cuttree.config import Config, parse_set
from cuttree.core.results import measurements_table
from cuttree.core.shortfall import refuse_noop
from cuttree.errors import CuttreeError, CuttreeWarning, PlanError, exit_code
from cuttree.files import cuttree_file as io
from cuttree.files.atomic import check_writable
from cuttree.files.trust import build_model
from cuttree.frontends.torch.measure import Measurements
from cuttree.frontends.torch.trace import module_names


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape; write it as 1,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"'{text}' has a non-positive size; write it as 1,3,224,224")
    return shape


def _json_obj(text: str) -> dict[str, Any]:
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"'{text}' is not JSON; write e.g. '{{\"num_classes\": 10}}'") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"'{text}' is not a JSON object")
    return v


def _config(args: argparse.Namespace, need_target: bool = True) -> Config:
    sets = parse_set(args.set or [])
    if not need_target:  # fine-tuning alone: whatever target the config names is not used
        sets.update(ratio=0.0, threshold=None, macs_target=None, params_target=None, latency_target=None)
    if args.config:
        return Config.from_yaml(args.config, sets)
    return Config(**sets)


def _model(args: argparse.Namespace) -> torch.nn.Module:
    # The user names the architecture on their own command line, so any importable callable is allowed.
    mod = args.arch.partition(":")[0]
    model = build_model(args.arch, args.arch_kwargs, trusted=[mod])
    if args.weights:
        io.load_weights(model, args.weights)
    return model


NOOP_FIX = "pass --allow-noop to write the unchanged model"


def cmd_prune(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.model is not None:
        if args.arch is not None:
            raise ValueError("give --model (a .keras/.h5 file) or --arch (a torch model), not both")
        return cli_keras.cmd_prune(args, cfg)
    if args.arch is None or args.input_shape is None:
        raise ValueError("prune needs --arch and --input-shape for a torch model, or --model my.keras for a Keras one")
    out = Path(args.out)
    if out.suffix != ".cuttree":
        raise ValueError(f"--out '{out}' must end in .cuttree")
    check_writable(out)
    model = _model(args)
    torch.manual_seed(cfg.seed)
    x = (torch.randn(*args.input_shape),)
    r = prune(model, x, cfg)
    print(r.plan.table(limit=args.rows))
    if not args.allow_noop:
        try:
            refuse_noop(r.plan, NOOP_FIX)
        except PlanError:
            print(f"\n{r.table()}")  # the figures of what was not written
            raise
    extra = {"input_shape": list(args.input_shape)}
    io.save(r, out, arch=args.arch, arch_kwargs=args.arch_kwargs, extra=extra)
    r.after = dataclasses.replace(r.after, size_bytes=out.stat().st_size)  # the file written, as reported
    cfg_path = out.with_suffix(".config.yaml")
    io.atomic_write(cfg_path, lambda p: p.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
    report = _write_json(
        out.with_suffix(".report.json"),
        "prune",
        cfg,
        model=out.name,
        arch=args.arch,
        before=r.before.to_dict(),
        after=r.after.to_dict(),
        timings=r.timings,
    )
    print(f"\n{r.table()}\n\nwrote {out}, {cfg_path} and {report}")
    return 0


def _write_json(path: Path, command: str, cfg: Config | None, **fields: Any) -> Path:
    """A torch command's ``report.json`` (:func:`cuttree.reports.report.write_json`)."""
    from cuttree.reports.report import write_json

    return write_json(path, command, "torch", cfg, **fields)


def cmd_inspect(args: argparse.Namespace) -> int:
    if cli_keras.is_keras_file(args.file):
        return cli_keras.cmd_inspect(args)
    meta = io.read_metadata(args.file)
    plan = meta["plan"]
    print(f"file: {args.file}")
    print(f"arch: {meta['arch']} {json.dumps(meta.get('arch_kwargs', {}))}")
    print(f"versions: {json.dumps(meta.get('versions', {}))}")
    print(f"config: {json.dumps(plan.config)}\n")
    print(plan.table(limit=args.rows))
    if "before" in meta and "after" in meta:
        print()
        print(measurements_table(Measurements(**meta["before"]), Measurements(**meta["after"])))
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    if args.model is not None:
        if args.arch is not None:
            raise ValueError("give --model (a .keras/.h5 file) or --arch (a torch model), not both")
        return cli_keras.cmd_layers(args)
    if args.arch is None or args.input_shape is None:
        raise ValueError("layers needs --arch and --input-shape for a torch model, or --model my.keras for a Keras one")
    model = _model(args)
    x = (torch.zeros(*args.input_shape),)
    with warnings.catch_warnings():  # the probe plan's own shortfall is not this command's business
        warnings.filterwarnings("ignore", message="nothing pruned")
        plan, graph = make_plan(model, x, Config(ratio=0.5, round_to=1, latency_runs=0))
    print(graph.table(checked=[g.name for g in plan.groups if g.size > 1 and len(g.keep) == g.size]))
    print(f"modules: {len(module_names(model))}; ops cuttree cannot prune through: {graph.unsupported or 'none'}")
    return 0


def data_args(sp: argparse.ArgumentParser) -> None:
    from cuttree.datasets.images import DATASETS

    names = ", ".join(f"{n}:PATH" if n == "imagefolder" else n for n in sorted(DATASETS))
    sp.add_argument("--data", required=True, help=f"one of {names}; eval also stsb (sentence encoders)")
    sp.add_argument("--limit", type=int, default=None, help="use this many images per split")
    sp.add_argument(
        "--normalize",
        choices=["imagenet", "none", "raw255"],
        default=None,
        help="CIFAR-10 scaling: imagenet (default; the pretrained torch ResNets), none ([0, 1]), raw255 (0–255)",
    )


def _data(args: argparse.Namespace, split: str, augment: bool = True) -> Any:
    from cuttree.datasets.images import DATASETS, load_dataset

    name, _, path = args.data.partition(":")
    kw: dict[str, Any] = {}
    if args.limit:
        loader = DATASETS.get(name)
        if loader is not None and "limit" not in inspect.signature(loader).parameters:
            raise ValueError(f"--limit: the {name} loader reads every sample it is given; drop --limit")
        kw["limit"] = args.limit
    if path:
        kw["path"] = path
    if getattr(args, "normalize", None) is not None:
        if name not in ("cifar10", "torchvision-cifar10"):
            raise ValueError(f"--normalize applies to cifar10, not to --data {name}; drop it")
        kw["normalize"] = args.normalize
    if name in ("cifar10", "torchvision-cifar10") and split == "train" and augment:
        kw["augment"] = True  # random crop with padding 4 and horizontal flip, the usual CIFAR recipe
    return load_dataset(name, split, **kw)


def _log(args: argparse.Namespace) -> Any:
    return (lambda msg: None) if getattr(args, "quiet", False) else (lambda msg: print(msg, flush=True))


def cmd_run(args: argparse.Namespace) -> int:
    from cuttree.recover.job import metric_name, report_table, run_job
    from cuttree.recover.train import deterministic_env, rank_device

    cfg = _config(args)
    sens = _sensitivity_file(args, cfg)
    if args.model is not None:
        if args.resume:
            raise ValueError("--resume continues torch runs only (Keras fine-tuning keeps no checkpoint); drop it")
        # Keras fine-tuning crops and flips each batch itself (cuttree.recover.batching): unaugmented arrays
        return cli_keras.cmd_run(args, cfg, _data(args, "train", augment=False), _data(args, "test"), sens)
    if args.arch is None or args.input_shape is None:
        raise ValueError("run needs --arch and --input-shape for a torch model, or --model my.keras for a Keras one")
    check_writable(args.out, folder=True)
    if cfg.finetune.deterministic:
        deterministic_env()
    device = rank_device(args.device)
    model = _model(args).to(device)
    torch.manual_seed(cfg.seed)
    x = (torch.randn(*args.input_shape).to(device),)
    report = run_job(
        model,
        x,
        cfg,
        _data(args, "train"),
        _data(args, "test"),
        args.out,
        args.arch,
        args.arch_kwargs,
        _log(args),
        sensitivity=sens,
        data_name=args.data,
        progress=not args.quiet,
        noop_fix=None if args.allow_noop else NOOP_FIX,
        resume=args.resume,
    )
    print(report_table(report, metric_name(cfg)))
    from cuttree.reports.report import write_report

    html_path, md_path = write_report(args.out)
    print(f"\nwrote {args.out}/: model.cuttree, report.json, {html_path.name}, {md_path.name}, config.yaml")
    return 0


def _sensitivity_file(args: argparse.Namespace, cfg: Config) -> Any:
    """The ``--sensitivity`` file that ``allocation: sensitivity`` needs, loaded (else ``None``)."""
    if cfg.allocation != "sensitivity":
        return None
    from cuttree.core.sensitivity import Sensitivity

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
    cfg = _config(args, need_target=False)
    out = Path(args.out)
    if out.suffix != ".json":
        raise ValueError(f"--out '{out}' must end in .json")
    try:
        ratios = tuple(float(r) for r in args.ratios.split(","))
    except ValueError:
        raise ValueError(f"--ratios '{args.ratios}' is not a list of numbers; write it as 0.25,0.5,0.75") from None
    data = _data(args, args.split, augment=False)
    if args.model is not None:
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


def _torch_sensitivity(args: argparse.Namespace, cfg: Config, data: Any, ratios: tuple[float, ...]) -> Any:
    from cuttree.api import sensitivity

    model = _model(args).eval()
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


def cmd_finetune(args: argparse.Namespace) -> int:
    from cuttree.core.keep_best import warn_if_worse
    from cuttree.recover.train import deterministic_env, finetune, init_distributed, rank_device, weights_digest

    cfg = _config(args, need_target=False)
    if cli_keras.is_keras_file(args.model):
        return cli_keras.cmd_finetune(args, cfg, _data(args, "train", augment=False), _data(args, "test"))
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
    test = _data(args, "test")
    before = _evaluate(args, model, test, cfg.mode, cfg.finetune.ignore_index, "before") if rank == 0 else {}
    torch.manual_seed(cfg.seed)
    state = finetune(
        model,
        _data(args, "train"),
        cfg,
        teacher=teacher,
        run_dir=out,
        resume=args.resume,
        log=_log(args) if rank == 0 else (lambda m: None),
        max_steps=args.max_steps,
        progress=not args.quiet,
    )
    if state["step"] < state["total"]:
        print(f"stopped at step {state['step']}/{state['total']}; continue with --resume")
        return 0
    digest = weights_digest(model)
    if rank == 0:
        io.save(model, out / "model.cuttree", arch=meta["arch"], arch_kwargs=meta.get("arch_kwargs"), plan=meta["plan"])
        m = _evaluate(args, model, test, cfg.mode, cfg.finetune.ignore_index, "after")
        print(f"{_metrics(m)} on {args.data} test ({len(test):,} samples), before fine-tuning {_metrics(before)}")
        warn_if_worse(before, m, cfg.mode)
        report = _write_json(
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
    from cuttree.recover.train import rank_device

    if cli_keras.is_keras_file(args.model):
        return cli_keras.cmd_eval(args, _data(args, args.split))
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
        data = _data(args, args.split)
        ignore = int(meta["plan"].config.get("finetune", {}).get("ignore_index", 255))
        m = _evaluate(args, model, data, mode, ignore, "eval")
        n, names = len(data), getattr(data, "classes", None) or []
    print(f"{_metrics(m)} on {args.data} {args.split} ({n:,} samples)")
    for k, v in m.items():
        if k.startswith("iou_"):
            i = int(k[4:])
            print(f"  IoU {names[i] if i < len(names) else i}: {v:.2f}")
    _write_json(
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


def cmd_export(args: argparse.Namespace) -> int:
    from cuttree.files.onnx import export_onnx
    from cuttree.reports.progress import Progress

    if args.onnx is None:
        raise ValueError("export needs a format: --onnx OUT.onnx")
    meta = io.read_metadata(args.model)
    shape = args.input_shape or (meta.get("extra") or {}).get("input_shape")
    if shape is None:
        raise ValueError(f"'{args.model}' does not record its input shape; pass --input-shape, e.g. 1,3,224,224")
    with Progress(2, "export", quiet=args.quiet) as bar:
        model = io.load(args.model, trusted=args.trust)
        bar.advance(info="loaded")
        torch.manual_seed(0)
        r = export_onnx(model, (torch.randn(*shape),), args.onnx, atol=args.atol, fold=not args.no_fold)
        bar.advance(info="exported and checked")
    print(
        f"wrote {r.path}: ONNX Runtime matches torch within {r.max_abs_diff:.2g} (max abs, float32, batch sizes "
        f"{' and '.join(map(str, r.batch_sizes))}; tolerance {r.atol:g}); opset {r.opset}, {r.exporter} exporter"
        + (", batch norm folded" if r.folded_batchnorm else "")
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cuttree.demo import run_demo

    return run_demo(args)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (the rule and where to read more), not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"cuttree: error: {message}; see '{self.prog} --help'\n")


def _noop_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--allow-noop",
        action="store_true",
        help="write the model even if the config prunes nothing (default: exit 6 with the reason, nothing written)",
    )


def _trust_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module whose architectures a .cuttree file may name (repeatable; torchvision.models and "
        "cuttree.models are always trusted), or for a Keras file a module to import first, which registers its "
        "custom layers. A file is never trusted by what it says about itself",
    )


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cuttree", description="Prune neural networks and measure the result.")
    p.add_argument("--version", action="version", version=f"cuttree {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp: argparse.ArgumentParser, keras_too: bool = False) -> None:
        sp.add_argument(
            "--arch", required=not keras_too, help="import path of the model, e.g. torchvision.models:resnet18"
        )
        if keras_too:
            sp.add_argument("--model", help="a Keras model file (.keras or .h5), pruned on your KERAS_BACKEND")
        sp.add_argument(
            "--arch-kwargs", type=_json_obj, default={}, help="JSON keyword arguments, e.g. '{\"num_classes\": 10}'"
        )
        sp.add_argument("--weights", help="state dict: .safetensors, or .pt/.pth (loaded with weights_only=True)")
        sp.add_argument(
            "--input-shape",
            type=_shape,
            required=not keras_too,
            help="example input shape, e.g. 1,3,224,224 (Keras: defaults to the model's own, batch 1)",
        )

    sp = sub.add_parser("prune", help="prune a model and write a .cuttree file (or a .keras file for a Keras model)")
    model_args(sp, keras_too=True)
    _trust_arg(sp)
    sp.add_argument("--config", help="YAML config (mode, threshold, min_samples, ratio, …)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    sp.add_argument("--out", required=True, help="output .cuttree file (.keras for --model)")
    sp.add_argument(
        "--sparse-storage",
        action="store_true",
        help="Keras: store mostly-zero weights compressed (smaller; only cuttree reads the file). "
        ".cuttree files always do",
    )
    sp.add_argument("--rows", type=int, default=40, help="plan rows to print")
    _noop_arg(sp)
    sp.set_defaults(func=cmd_prune)

    sp = sub.add_parser("inspect", help="print a .cuttree (or cuttree-written .keras) file's plan and measurements")
    sp.add_argument("file")
    sp.add_argument("--rows", type=int, default=None, help="plan rows to print (default: all)")
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("layers", help="list a model's prunable groups and the layers kept whole")
    model_args(sp, keras_too=True)
    _trust_arg(sp)
    sp.set_defaults(func=cmd_layers)

    sp = sub.add_parser("demo", help="the main job on the embedded default data")
    sp.add_argument("--out-dir", default=None, help="run folder (default runs/demo, runs/demo-DATA for other data)")
    sp.add_argument("--data", default="digits", help="digits (default, shipped by scikit-learn), cifar10, mnist")
    sp.add_argument("--limit", type=int, default=None, help="images per split (cifar10/mnist)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    sp.add_argument("--quiet", action="store_true", help="no per-step log lines")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("run", help="prune, fine-tune (with distillation) and report: the whole job")
    model_args(sp, keras_too=True)
    _trust_arg(sp)
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
    _noop_arg(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("report", help="write report.html (self-contained) and report.md from a run's report.json")
    sp.add_argument("run", help="a run folder (with report.json) or a report .json file")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser(
        "sensitivity", help="the metric after pruning each group alone at several ratios (cached; resumable)"
    )
    model_args(sp, keras_too=True)
    _trust_arg(sp)
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

    sp = sub.add_parser("finetune", help="fine-tune a .cuttree model (resumable; runs under torchrun) or a .keras one")
    sp.add_argument("model", help="a .cuttree file, or a .keras/.h5 file")
    _trust_arg(sp)
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

    sp = sub.add_parser("export", help="export a .cuttree model to ONNX, checked against torch with ONNX Runtime")
    sp.add_argument("model", help="a .cuttree file")
    _trust_arg(sp)
    sp.add_argument("--onnx", help="output .onnx file (written only if ONNX Runtime matches torch)")
    sp.add_argument(
        "--input-shape", type=_shape, default=None, help="example input shape (default: the one the file records)"
    )
    sp.add_argument("--atol", type=float, default=1e-4, help="largest accepted difference, max abs (default 1e-4)")
    sp.add_argument("--no-fold", action="store_true", help="keep batch norm as its own op (default: folded)")
    sp.add_argument("--quiet", action="store_true", help="no progress lines")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("eval", help="evaluate a .cuttree (or .keras/.h5) model on a dataset")
    sp.add_argument("model", help="a .cuttree file, or a .keras/.h5 file")
    _trust_arg(sp)
    data_args(sp)
    sp.add_argument("--split", default="test")
    sp.add_argument("--mode", choices=["classification", "segmentation"], default=None)
    sp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    sp.add_argument("--report", default=None, help="where to write the JSON result (default: MODEL.eval.json)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    sp.set_defaults(func=cmd_eval)
    return p


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """Print a warning on one line: cuttree's own as ``cuttree: warning: …`` (a CLI user has no
    line of code to look at), another library's as ``warning from LIBRARY: …``, so that nobody
    takes a library's note about its own code for cuttree's advice."""
    text = " ".join(str(message).split())
    if issubclass(category, CuttreeWarning):
        said = f"cuttree: warning: {text}"
    else:
        kind = "" if category is UserWarning else f"{category.__name__}: "
        said = f"warning from {_origin(filename)}: {kind}{text}"
    print(said, file=sys.stderr if file is None else file)


def _origin(filename: str) -> str:
    """The library a warning was raised in: the folder under site-packages, else the file.

    >>> _origin("/x/lib/python3.11/site-packages/keras/src/models/functional.py"), _origin("/home/me/train.py")
    ('keras', 'train.py')
    """
    parts = Path(filename).parts
    if "site-packages" in parts and parts.index("site-packages") + 1 < len(parts):
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    return Path(filename).name


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return int(args.func(args))
    except (ValueError, TypeError, OSError, CuttreeError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"cuttree: error: {msg}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("cuttree: interrupted; every file written is complete (partial ones are not kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
