"""The ``cuttree`` commands for Keras files (``.keras``, ``.h5``), on the user's KERAS_BACKEND.

``prune --model``, ``run --model``, ``finetune`` and ``eval`` of a Keras file, and ``inspect`` of
one that cuttree wrote. Data come from the same loaders as for torch models, as channels-last
numpy arrays; ``--normalize`` sets CIFAR-10's scaling (the MLPerf-Tiny ResNet takes ``raw255``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cuttree.config import Config
from cuttree.core.keep_best import warn_if_worse
from cuttree.core.plan import PruningPlan
from cuttree.core.results import Measurements, measurements_table
from cuttree.core.sensitivity import Sensitivity
from cuttree.core.shortfall import refuse_noop
from cuttree.errors import PlanError
from cuttree.files.atomic import check_writable
from cuttree.reports.report import write_json


def keras_api() -> Any:
    """cuttree.keras, on the user's KERAS_BACKEND (never set here), or a one-line reason why not."""
    try:
        import cuttree.keras as ck
    except ModuleNotFoundError as e:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow (Keras's default)")
        raise ValueError(
            f"Keras files need keras and its backend; importing them failed ({e}); KERAS_BACKEND={backend}: "
            "pip install 'cuttree[keras]' and set KERAS_BACKEND=torch (or install that backend)"
        ) from None
    return ck


def _backend() -> str:
    import keras

    return str(keras.backend.backend())


def load(args: argparse.Namespace, path: str) -> Any:
    """The Keras model in ``path``, after importing the modules named with ``--trust``: the code
    that defines and registers the file's custom layers, which a file never brings itself."""
    ck = keras_api()
    for module in getattr(args, "trust", None) or []:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(
                f"--trust {module}: the module cannot be imported ({e}); check its name and PYTHONPATH"
            ) from None
    return ck.load(path)


def is_keras_file(path: str | None) -> bool:
    return path is not None and str(path).endswith((".keras", ".h5"))


def arrays(args: argparse.Namespace, split: str, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """A loader's dataset as channels-last numpy ``(x, y)``."""
    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        raise ValueError(f"--data {args.data} has no {split} samples; check the data folder or --limit")
    x = np.stack([np.asarray(a) for a, _ in items]).astype("float32")
    if x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    return x, np.asarray([int(b) if np.ndim(b) == 0 else np.asarray(b) for _, b in items])


def _metric(mode: str) -> str:
    return "mean IoU" if mode == "segmentation" else "top-1"


def _key(mode: str) -> str:
    return "miou" if mode == "segmentation" else "top1"


def cmd_prune(args: argparse.Namespace, cfg: Config) -> int:
    ck = keras_api()
    out = Path(args.out)
    if out.suffix != ".keras":
        raise ValueError(f"--out '{out}' must end in .keras for a Keras model (--model {args.model})")
    check_writable(out)
    model = load(args, args.model)
    example = None if args.input_shape is None else np.zeros(args.input_shape, dtype="float32")
    r = ck.prune(model, cfg, example_inputs=example)
    print(r.plan.table(limit=args.rows))
    if not args.allow_noop:
        try:
            refuse_noop(r.plan, "pass --allow-noop to write the unchanged model")
        except PlanError:
            print(f"\n{r.table()}")  # the figures of what was not written
            raise
    ck.save(r, out, sparse_storage=args.sparse_storage)
    r.after = dataclasses.replace(r.after, size_bytes=out.stat().st_size)  # the file written, as reported
    print(f"\n{r.table()}")
    report = write_json(
        out.with_suffix(".report.json"),
        "prune",
        "keras",
        cfg,
        model=out.name,
        source=str(args.model),
        before=r.before.to_dict(),
        after=r.after.to_dict(),
        timings=r.timings,
    )
    print(f"\nwrote {out} and {report} (backend {_backend()})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    meta = keras_api().read_metadata(args.file)
    if "plan" not in meta:
        raise ValueError(f"'{args.file}' has no cuttree plan; it was not written by cuttree prune")
    plan = PruningPlan.from_dict(meta["plan"])
    print(f"file: {args.file} (Keras, saved on the {meta.get('backend')} backend)")
    print(f"config: {json.dumps(plan.config)}\n")
    print(plan.table(limit=args.rows))
    print()
    print(measurements_table(Measurements(**meta["before"]), Measurements(**meta["after"])))
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    ck = keras_api()
    from cuttree.frontends.keras.graph import build_graph

    model = load(args, args.model)
    example = None if args.input_shape is None else np.zeros(args.input_shape, dtype="float32")
    graph, tr = build_graph(model, ck.input_shapes(model, example))
    print(graph.table())
    unknown = ", ".join(f"{p} ({c})" for p, c in tr.unknown.items()) or "none"
    print(f"layers: {len(tr.layers)}; layers without a rule (kept whole): {unknown}")
    return 0


def cmd_eval(args: argparse.Namespace, test: Any) -> int:
    ck = keras_api()
    model = load(args, args.model)
    plan_cfg = ck.read_metadata(args.model).get("plan", {}).get("config", {})
    mode = args.mode or plan_cfg.get("mode", "classification")
    x, y = arrays(args, args.split, test)
    value = ck.evaluate(model, x, y, mode)
    print(f"{_metric(mode)} {value:.2f} on {args.data} {args.split} ({len(x):,} samples)")
    key = _key(mode)
    report = Path(args.report) if args.report else Path(args.model).with_suffix(".eval.json")
    write_json(
        report, "eval", "keras", None, model=str(args.model), data=args.data, split=args.split, samples=len(x),
        after={"metric": {key: value}},
    )  # fmt: skip
    print(f"wrote {report}")
    return 0


def cmd_finetune(args: argparse.Namespace, cfg: Config, train: Any, test: Any) -> int:
    ck = keras_api()
    model = load(args, args.model)
    teacher = load(args, args.teacher) if args.teacher else None
    xtr, ytr = arrays(args, "train", train)
    xt, yt = arrays(args, "test", test)
    before = ck.evaluate(model, xt, yt, cfg.mode)
    state = ck.finetune(model, cfg, xtr, ytr, teacher=teacher, verbose=0 if args.quiet else 2)
    after = ck.evaluate(model, xt, yt, cfg.mode)
    warn_if_worse({_key(cfg.mode): before}, {_key(cfg.mode): after})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ck.save(model, out / "model.keras")
    key = _key(cfg.mode)
    write_json(
        out / "report.json", "finetune", "keras", cfg, model="model.keras", source=str(args.model), data=args.data,
        before={"metric": {key: before}}, after={"metric": {key: after}}, **state,
    )  # fmt: skip
    print(f"{_metric(cfg.mode)} {before:.2f} → {after:.2f} after {state['steps']} steps; wrote {out / 'model.keras'}")
    return 0


def sensitivity(args: argparse.Namespace, cfg: Config, data: Any, ratios: tuple[float, ...]) -> Sensitivity:
    """``cuttree sensitivity --model my.keras``: the analysis on ``--split`` of ``--data``."""
    ck = keras_api()
    model = load(args, args.model)
    example = None if args.input_shape is None else np.zeros(args.input_shape, dtype="float32")
    return ck.sensitivity(
        model, cfg, arrays(args, args.split, data), ratios=ratios, samples=args.samples, example_inputs=example,
        cache_dir=args.cache_dir, quiet=args.quiet,
    )  # fmt: skip


def cmd_run(
    args: argparse.Namespace, cfg: Config, train: Any, test: Any, sensitivity: Sensitivity | None = None
) -> dict[str, Any]:
    """The run job (:func:`cuttree.recover.job.run_job`) on a Keras file: the loaders' datasets
    as channels-last arrays, the model's own input size unless ``--input-shape`` says another."""
    from cuttree.frontends.keras.recover import Arrays
    from cuttree.recover.job import run_job

    keras_api()
    check_writable(args.out, folder=True)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, flush=True))
    original = load(args, args.model)
    example = None if args.input_shape is None else np.zeros(args.input_shape, dtype="float32")
    return run_job(
        original,
        example,
        cfg,
        Arrays(*arrays(args, "train", train)),
        Arrays(*arrays(args, "test", test)),
        args.out,
        log=log,
        sensitivity=sensitivity,
        data_name=args.data,
        progress=not args.quiet,
        noop_fix=None if args.allow_noop else "pass --allow-noop to fine-tune and write the unchanged model",
        source=str(args.model),
    )
