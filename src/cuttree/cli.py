"""The ``cuttree`` command: a thin shell over the Python API.

Every user error ends in one line on stderr (``cuttree: error: …``) and exit status 2; no
output file is written unless the whole job succeeded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from cuttree import io
from cuttree.api import measurements_table, module_names, prune
from cuttree.config import Config, parse_set
from cuttree.errors import CuttreeError
from cuttree.measure import Measurements


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


def _config(args: argparse.Namespace) -> Config:
    sets = parse_set(args.set or [])
    if args.config:
        return Config.from_yaml(args.config, sets)
    return Config(**sets)


def _model(args: argparse.Namespace) -> torch.nn.Module:
    # The user names the architecture on their own command line, so any importable callable is allowed.
    mod = args.arch.partition(":")[0]
    model = io.build_model(args.arch, args.arch_kwargs, trusted=[mod])
    if args.weights:
        io.load_weights(model, args.weights)
    return model


def cmd_prune(args: argparse.Namespace) -> int:
    cfg = _config(args)
    out = Path(args.out)
    if out.suffix != ".cuttree":
        raise ValueError(f"--out '{out}' must end in .cuttree")
    model = _model(args)
    torch.manual_seed(cfg.seed)
    x = (torch.randn(*args.input_shape),)
    r = prune(model, x, cfg)
    print(r.plan.table(limit=args.rows))
    print()
    print(r.table())
    extra = {"input_shape": list(args.input_shape)}
    io.save(r, out, arch=args.arch, arch_kwargs=args.arch_kwargs, extra=extra)
    cfg_path = out.with_suffix(".config.yaml")
    io.atomic_write(cfg_path, lambda p: p.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
    print(f"\nwrote {out} and {cfg_path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
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
    from cuttree.graph.groups import build_graph

    model = _model(args)
    graph = build_graph(model, (torch.zeros(*args.input_shape),))
    print(f"{len(graph.groups)} prunable groups ({sum(g.size for g in graph.groups)} channels):")
    for g in graph.groups:
        print(f"  {g.name:40s} {g.size:6d} channels  owners: {', '.join(g.owners)}")
    print("kept whole (why):")
    for name, why in graph.protected.items():
        print(f"  {name:40s} {why}")
    print(f"modules: {len(module_names(model))}; ops cuttree cannot prune through: {graph.unsupported or 'none'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cuttree.demo import run_demo

    return run_demo(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cuttree", description="Prune neural networks and measure the result.")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--arch", required=True, help="import path of the model, e.g. torchvision.models:resnet18")
        sp.add_argument(
            "--arch-kwargs", type=_json_obj, default={}, help="JSON keyword arguments, e.g. '{\"num_classes\": 10}'"
        )
        sp.add_argument("--weights", help="state dict: .safetensors, or .pt/.pth (loaded with weights_only=True)")
        sp.add_argument("--input-shape", type=_shape, required=True, help="example input shape, e.g. 1,3,224,224")

    sp = sub.add_parser("prune", help="prune a model and write a .cuttree file")
    model_args(sp)
    sp.add_argument("--config", help="YAML config (mode, threshold, min_samples, ratio, …)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    sp.add_argument("--out", required=True, help="output .cuttree file")
    sp.add_argument("--rows", type=int, default=40, help="plan rows to print")
    sp.set_defaults(func=cmd_prune)

    sp = sub.add_parser("inspect", help="print a .cuttree file's plan and measurements")
    sp.add_argument("file")
    sp.add_argument("--rows", type=int, default=None, help="plan rows to print (default: all)")
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("layers", help="list a model's prunable groups and the layers kept whole")
    model_args(sp)
    sp.set_defaults(func=cmd_layers)

    sp = sub.add_parser("demo", help="the main job on the embedded default data")
    sp.add_argument("--out-dir", default="runs/demo")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, FileNotFoundError, CuttreeError) as e:
        msg = " ".join(str(e).split())
        print(f"cuttree: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
