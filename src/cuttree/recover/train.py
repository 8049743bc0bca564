"""Recover accuracy: fine-tuning with optional distillation, resumable, DDP-aware.

- Data: samples ``(x, y)``, or dicts of keyword inputs (``model(**x)``) with ``labels``. A model
  that takes ``labels`` (Hugging Face) computes its own loss; a causal language model needs no
  labels: it learns next-token prediction on its input, padding (``attention_mask == 0``) ignored.
- Loss: the task loss by ``mode`` (cross-entropy on logits, or per pixel with ``ignore_index``),
  plus, with ``distill`` = α > 0 and a teacher, α·T²·KL(teacher ‖ student) at temperature T, the
  task term weighted 1 − α. A Hugging Face model's classes are its logits' last dim (a causal
  LM's vocabulary at every token, averaged over the tokens that are not padding).
- Data order: epoch *e* visits ``randperm(n, seed · 1000 + e)``, split across DDP ranks, so the
  order is a pure function of (seed, epoch) and a resumed run needs no sampler state.
- Learning rate: a pure function of the step (cosine, step, constant; linear warm-up).
- Mixed precision (``amp``): ``auto`` is bfloat16 autocast on a GPU that supports it, float16
  on one that does not, full precision on the CPU. float16 always comes with a gradient scaler
  (:class:`Precision` makes one whenever it picks float16), whose state is checkpointed.
- Checkpoints: one file, ``checkpoint.safetensors``, written atomically: the model and optimizer
  tensors, every RNG the run draws from (torch's CPU generator, the CUDA generator of the model's
  device, Python's and numpy's global generators, the training data's own ``generator`` if it
  has one), and in its metadata the step, optimizer settings, scaler state, the data order's seed
  and the history, with a SHA-256 checksum of it all. One file, so a kill can never leave tensors
  of one step beside the state of another; a kill mid-write leaves the previous checkpoint.
  Resuming ends with exactly the weights of an uninterrupted run. On a GPU that needs ``finetune.deterministic: true`` (cuDNN's deterministic kernels, no
  autotuning, ``torch.use_deterministic_algorithms`` in warn-only mode, and
  ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which must be set before CUDA starts: the CLI does so).
- Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP (gloo on CPU, nccl on GPU,
  one GPU per process: ``cuda:LOCAL_RANK``) after pruning, or with ``finetune.parallel: fsdp``
  sharded in place by FSDP2 (:mod:`cuttree.recover.sharding`); only rank 0 writes. The loss
  logged is the mean over the processes: the whole batch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from cuttree.config import Config, FinetuneConfig
from cuttree.core.keep_best import ending
from cuttree.errors import warn
from cuttree.files.cuttree_file import checksum
from cuttree.frontends.torch.util import model_device, state_dict_for_save
from cuttree.recover import rng, validation
from cuttree.recover.batching import forward
from cuttree.recover.checkpoints import CHECKPOINT, load_checkpoint
from cuttree.recover.devices import Precision, deterministic, world
from cuttree.recover.loop import Log, Loop
from cuttree.recover.sharding import wrap


def _optimizer(model: nn.Module, ft: FinetuneConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if ft.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=ft.lr, weight_decay=ft.weight_decay)
    return torch.optim.SGD(
        params, lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay, nesterov=ft.momentum > 0
    )


def finetune(
    model: nn.Module,
    train_data: Dataset[Any],
    cfg: Config,
    teacher: nn.Module | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    log: Log = print,
    max_steps: int | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = False,
    val_data: Dataset[Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place on ``train_data`` (pairs ``(x, y)``); returns the history.

    The model is scored on ``val_data`` (default: ``finetune.val_fraction`` of ``train_data``,
    held out) before the first step, after every epoch and at the end; with
    ``finetune.keep_best`` it ends with the weights that scored best, the ones it started with
    included, and a warning says when fine-tuning did not beat where it started
    (:mod:`cuttree.recover.validation`). ``max_steps`` stops early (as a kill would) after that many
    steps of this call; ``on_step(step)`` runs before each step (a gradual sparsity schedule
    updates masks there, so the scores of different steps are not compared). Progress is a
    ``log`` line every tenth of an epoch; with ``progress`` on a terminal, a live bar (with the
    running loss and ETA) instead.

    >>> import torch, cuttree
    >>> _ = torch.manual_seed(0); net = torch.nn.Linear(4, 2)
    >>> data = [(x, int(x[0] > 0)) for x in torch.randn(200, 4)]
    >>> cfg = cuttree.Config(ratio=0.5, finetune={"batch_size": 20, "epochs": 10, "lr": 0.5})
    >>> v = cuttree.finetune(net, data, cfg, log=lambda m: None)["validation"]
    >>> v["source"], v["samples"], v["metric"], v["best"] > v["history"][0][1] + 20
    ('held out', 20, 'top1', True)
    """
    from cuttree.reports.progress import on_terminal

    ft = cfg.finetune
    rank, size = world()
    device = model_device(model)
    data = validation.split(train_data, val_data, ft.val_fraction, cfg.seed)
    n = len(data.train)  # type: ignore[arg-type]
    steps_per_epoch, total = _steps(n, ft, size)
    run = Path(run_dir) if run_dir is not None else None
    if ft.deterministic:
        deterministic(device)
    net = wrap(model, device, ft.parallel) if size > 1 else model
    opt = _optimizer(model, ft)
    precision = Precision(ft.amp, device)
    order = {"seed": cfg.seed, "samples": n, "batch_size": ft.batch_size, "processes": size}
    state: dict[str, Any] = {"step": 0, "history": [], "data_order": order}
    if resume:
        state = _resumed(run, model, opt, order, precision, data.train)
        log(f"resumed at step {state['step']}/{total}")
    live = progress and rank == 0 and on_terminal()
    best = validation.Best(run, state.get("validation"), write=rank == 0)
    loop = Loop(model, net, teacher, opt, precision, cfg, data, best, run, rank == 0, total, log, live)
    if data.val is not None and not best.history:
        best.offer(model, 0, *validation.score(model, data.val, cfg))
        state["validation"] = best.state()  # a run killed before its first epoch ends resumes with it
        loop.say(
            f"validation ({data.source}, {len(data.val):,} samples): {best.metric} {best.value:.4g} before fine-tuning"
        )
    if teacher is not None:
        teacher.eval()
    step = loop.steps(state, steps_per_epoch, max_steps, on_step)
    state["step"] = step
    state["total"] = total
    state["validation"] = {**data.describe(), **best.state(), "kept": "last"}
    if data.val is not None and step == total:
        state["validation"]["kept"] = _keep_best(model, best, ft.keep_best and on_step is None, log)
    return state


def _steps(n: int, ft: FinetuneConfig, processes: int) -> tuple[int, int]:
    """Steps per epoch and in all, for ``n`` training samples shared by ``processes``."""
    steps_per_epoch = n // (ft.batch_size * processes)
    if steps_per_epoch < 1:
        raise ValueError(
            f"training data has {n} samples, fewer than one batch of {ft.batch_size} per process; "
            "lower finetune.batch_size or pass more data"
        )
    return steps_per_epoch, max(1, math.ceil(ft.epochs * steps_per_epoch))


def _resumed(
    run: Path | None,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    order: dict[str, Any],
    precision: Precision,
    train_data: Dataset[Any],
) -> dict[str, Any]:
    """The state of the run in ``run`` (model, optimizer, scaler and RNGs restored), which must
    have drawn its data in this run's ``order``."""
    if run is None or not (run / CHECKPOINT).is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in '{run}'; start without --resume")
    state, rng_state = load_checkpoint(run, model, opt)
    if state.get("data_order", order) != order:
        raise ValueError(
            f"--resume: the checkpoint's data order is {state['data_order']}, this run's {order}; "
            "resume with the same seed, data, batch size and number of processes"
        )
    state["data_order"] = order
    precision.load_state_dict(state.get("scaler", {}))
    rng.restore(rng_state, model_device(model), train_data)
    return state


def _keep_best(model: nn.Module, best: validation.Best, keep: bool, log: Log) -> str:
    """End with the best-scoring weights if ``keep`` (returns which were kept: "best" or "last"),
    and warn when fine-tuning ended no better than it started."""
    assert best.step is not None and best.metric is not None
    kept, warning = ending(best.history, best.step, best.higher, keep, best.metric)
    if kept == "best":
        best.restore(model)
        log(f"kept the weights of step {best.step} ({best.metric} {best.value:.4g}), the best on validation")
    if warning is not None:
        warn(warning)
    return kept


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the model's weights (each shared tensor once), the same on every process of a
    ``torchrun`` run: under DDP the processes' digests are compared, and a mismatch (processes
    that trained apart) is an error rather than a file that holds one process's weights.

    >>> weights_digest(torch.nn.Linear(2, 2)).startswith("sha256:")
    True
    """
    digest = checksum(state_dict_for_save(model), {})
    _, size = world()
    if size > 1:
        digests: list[Any] = [None] * size
        torch.distributed.all_gather_object(digests, digest)
        if len(set(digests)) > 1:
            raise RuntimeError(
                f"the {size} processes ended with different weights ({len(set(digests))} digests): DDP did not keep "
                "them in step; check that every process ran the same command on the same data"
            )
    return digest


def recalibrate_bn(model: nn.Module, data: Dataset[Any], cfg: Config) -> int:
    """Re-estimate batch-norm statistics on at least ``min_samples`` samples; returns how many."""
    from cuttree.frontends.torch.calibrate import batches
    from cuttree.recover.batching import n_samples

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    loader = (
        default_collate([data[i] for i in range(s, min(s + cfg.finetune.batch_size, len(data)))])  # type: ignore[arg-type]
        for s in range(0, len(data), cfg.finetune.batch_size)  # type: ignore[arg-type]
    )
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    flags = {m: m.training for m in model.modules()}
    seen = 0
    try:
        model.train()
        with torch.no_grad():
            for x, _ in batches(loader, cfg, need_labels=False, device=model_device(model)):
                forward(model, x)
                seen += n_samples(x)
    finally:
        for bn, mo in zip(bns, momenta, strict=True):
            bn.momentum = mo
        for mod, f in flags.items():
            mod.training = f
    return seen
