"""``cuttree prune``, ``inspect``, ``layers`` and ``export``: make a pruned file, read it back,
list what a model's groups are, and export it to ONNX."""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

import cuttree.cli.keras as cli_keras
from cuttree.api import make_plan, prune
from cuttree.cli import language
from cuttree.cli.common import (
    NOOP_FIX,
    config_from,
    model_args,
    noop_arg,
    shape_arg,
    torch_model,
    trust_arg,
    write_json,
)
from cuttree.config import Config
from cuttree.core.results import Measurements, measurements_table
from cuttree.core.shortfall import refuse_noop
from cuttree.errors import PlanError
from cuttree.files import cuttree_file as io
from cuttree.files.atomic import check_writable
from cuttree.frontends.torch.trace import module_names


def cmd_prune(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    if language.source(args) is not None:
        return language.cmd_prune(args, cfg)
    if args.frontend == "keras":
        if args.arch is not None:
            raise ValueError("give --model (a .keras/.h5 file) or --arch (a torch model), not both")
        return cli_keras.cmd_prune(args, cfg)
    if args.arch is None or args.input_shape is None:
        raise ValueError("prune needs --arch and --input-shape for a torch model, or --model my.keras for a Keras one")
    out = Path(args.out)
    if out.suffix != ".cuttree":
        raise ValueError(f"--out '{out}' must end in .cuttree")
    check_writable(out)
    model = torch_model(args)
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
    report = write_json(
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


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.frontend == "keras":
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
    if args.frontend == "keras":
        if args.arch is not None:
            raise ValueError("give --model (a .keras/.h5 file) or --arch (a torch model), not both")
        return cli_keras.cmd_layers(args)
    if args.arch is None or args.input_shape is None:
        raise ValueError("layers needs --arch and --input-shape for a torch model, or --model my.keras for a Keras one")
    model = torch_model(args)
    x = (torch.zeros(*args.input_shape),)
    with warnings.catch_warnings():  # the probe plan's own shortfall is not this command's business
        warnings.filterwarnings("ignore", message="nothing pruned")
        plan, graph = make_plan(model, x, Config(ratio=0.5, round_to=1, latency_runs=0))
    print(graph.table(checked=[g.name for g in plan.groups if g.size > 1 and len(g.keep) == g.size]))
    print(f"modules: {len(module_names(model))}; ops cuttree cannot prune through: {graph.unsupported or 'none'}")
    return 0


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


def add_prune(sub: Any) -> None:
    sp = sub.add_parser(
        "prune",
        help="prune a model and write a .cuttree file (a .keras file for a Keras model, a from_pretrained "
        "folder for a language model)",
    )
    model_args(sp, keras_too=True)
    trust_arg(sp)
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
    language.lm_args(sp)
    language.calib_args(sp)
    noop_arg(sp)
    sp.set_defaults(func=cmd_prune)


def add_inspect(sub: Any) -> None:
    sp = sub.add_parser("inspect", help="print a .cuttree (or cuttree-written .keras) file's plan and measurements")
    sp.add_argument("file")
    sp.add_argument("--rows", type=int, default=None, help="plan rows to print (default: all)")
    sp.set_defaults(func=cmd_inspect)


def add_layers(sub: Any) -> None:
    sp = sub.add_parser("layers", help="list a model's prunable groups and the layers kept whole")
    model_args(sp, keras_too=True)
    trust_arg(sp)
    sp.set_defaults(func=cmd_layers)


def add_export(sub: Any) -> None:
    sp = sub.add_parser("export", help="export a .cuttree model to ONNX, checked against torch with ONNX Runtime")
    sp.add_argument("model", help="a .cuttree file")
    trust_arg(sp)
    sp.add_argument("--onnx", help="output .onnx file (written only if ONNX Runtime matches torch)")
    sp.add_argument(
        "--input-shape", type=shape_arg, default=None, help="example input shape (default: the one the file records)"
    )
    sp.add_argument("--atol", type=float, default=1e-4, help="largest accepted difference, max abs (default 1e-4)")
    sp.add_argument("--no-fold", action="store_true", help="keep batch norm as its own op (default: folded)")
    sp.add_argument("--quiet", action="store_true", help="no progress lines")
    sp.set_defaults(func=cmd_export)
