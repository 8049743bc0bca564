"""What every ``cuttree`` command shares: argument types and groups, the config, the torch model
named on the command line, the data, the JSON report, the one-line warnings, and which frontend a
command line is for (decided once, by :func:`frontend_of`)."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from cuttree.cli.keras import is_keras_file
from cuttree.config import Config, parse_set
from cuttree.errors import CuttreeWarning
from cuttree.files import cuttree_file as io
from cuttree.files.trust import build_model

NOOP_FIX = "pass --allow-noop to write the unchanged model"
#: commands whose ``--model`` names a Keras file (beside ``--arch`` for a torch model); the others
#: take a file and are for Keras when it is a ``.keras``/``.h5`` file
MODEL_OPTION = ("prune", "layers", "run", "sensitivity")


def frontend_of(args: argparse.Namespace) -> str:
    """``"keras"`` or ``"torch"``: the frontend this command line is for, decided here, once."""
    if args.command in MODEL_OPTION:
        return "keras" if args.model is not None else "torch"
    return "keras" if is_keras_file(getattr(args, "model", None) or getattr(args, "file", None)) else "torch"


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (the rule and where to read more), not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"cuttree: error: {message}; see '{self.prog} --help'\n")


def shape_arg(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape; write it as 1,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"'{text}' has a non-positive size; write it as 1,3,224,224")
    return shape


def json_arg(text: str) -> dict[str, Any]:
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"'{text}' is not JSON; write e.g. '{{\"num_classes\": 10}}'") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"'{text}' is not a JSON object")
    return v


def config_from(args: argparse.Namespace, need_target: bool = True) -> Config:
    sets = parse_set(args.set or [])
    if not need_target:  # fine-tuning alone: whatever target the config names is not used
        sets.update(ratio=0.0, threshold=None, macs_target=None, params_target=None, latency_target=None)
    if args.config:
        return Config.from_yaml(args.config, sets)
    return Config(**sets)


def torch_model(args: argparse.Namespace) -> torch.nn.Module:
    # The user names the architecture on their own command line, so any importable callable is allowed.
    mod = args.arch.partition(":")[0]
    model = build_model(args.arch, args.arch_kwargs, trusted=[mod])
    if args.weights:
        io.load_weights(model, args.weights)
    return model


def write_json(path: Path, command: str, cfg: Config | None, **fields: Any) -> Path:
    """A torch command's ``report.json`` (:func:`cuttree.reports.report.write_json`)."""
    from cuttree.reports.report import write_json

    return write_json(path, command, "torch", cfg, **fields)


def model_args(sp: argparse.ArgumentParser, keras_too: bool = False) -> None:
    sp.add_argument("--arch", required=not keras_too, help="import path of the model, e.g. torchvision.models:resnet18")
    if keras_too:
        sp.add_argument("--model", help="a Keras model file (.keras or .h5), pruned on your KERAS_BACKEND")
    sp.add_argument(
        "--arch-kwargs", type=json_arg, default={}, help="JSON keyword arguments, e.g. '{\"num_classes\": 10}'"
    )
    sp.add_argument("--weights", help="state dict: .safetensors, or .pt/.pth (loaded with weights_only=True)")
    sp.add_argument(
        "--input-shape",
        type=shape_arg,
        required=not keras_too,
        help="example input shape, e.g. 1,3,224,224 (Keras: defaults to the model's own, batch 1)",
    )


def data_args(sp: argparse.ArgumentParser) -> None:
    from cuttree.datasets.images import DATASETS

    names = ", ".join(f"{n}:PATH" if n == "imagefolder" else n for n in sorted(DATASETS))
    sp.add_argument(
        "--data",
        required=True,
        help=f"one of {names}; eval also stsb (sentence encoders), and for perplexity wikipedia-eval, botchan, python-docs or text:PATH",
    )
    sp.add_argument("--limit", type=int, default=None, help="use this many images per split")
    sp.add_argument(
        "--normalize",
        choices=["imagenet", "none", "raw255"],
        default=None,
        help="CIFAR-10 scaling: imagenet (default; the pretrained torch ResNets), none ([0, 1]), raw255 (0–255)",
    )


def dataset(args: argparse.Namespace, split: str, augment: bool = True) -> Any:
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


def logger(args: argparse.Namespace) -> Any:
    return (lambda msg: None) if getattr(args, "quiet", False) else (lambda msg: print(msg, flush=True))


def noop_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--allow-noop",
        action="store_true",
        help="write the model even if the config prunes nothing (default: exit 6 with the reason, nothing written)",
    )


def trust_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module whose architectures a .cuttree file may name (repeatable; torchvision.models and "
        "cuttree.models are always trusted), or for a Keras file a module to import first, which registers its "
        "custom layers. A file is never trusted by what it says about itself",
    )


def one_line_warning(
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
        said = f"warning from {origin(filename)}: {kind}{text}"
    print(said, file=sys.stderr if file is None else file)


def origin(filename: str) -> str:
    """The library a warning was raised in: the folder under site-packages, else the file.

    >>> origin("/x/lib/python3.11/site-packages/keras/src/models/functional.py"), origin("/home/me/train.py")
    ('keras', 'train.py')
    """
    parts = Path(filename).parts
    if "site-packages" in parts and parts.index("site-packages") + 1 < len(parts):
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    return Path(filename).name
