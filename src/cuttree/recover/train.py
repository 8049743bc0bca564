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
  one GPU per process: ``cuda:LOCAL_RANK``) after pruning; only rank 0 writes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, default_collate

from cuttree.config import Config, FinetuneConfig
from cuttree.core.keep_best import ending
from cuttree.errors import warn
from cuttree.files.cuttree_file import checksum
from cuttree.frontends.torch.calibrate import (
    is_causal_lm,
    logits_of,
    loss_and_logits,
    split_batch,
    takes_labels,
    text_labels,
    to_device,
)
from cuttree.frontends.torch.util import model_device, state_dict_for_save
from cuttree.recover import rng, validation
from cuttree.recover.batching import forward
from cuttree.recover.checkpoints import CHECKPOINT, load_checkpoint, save_checkpoint

Log = Callable[[str], None]


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside ``torchrun``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device: str | torch.device = "cpu") -> tuple[int, int]:
    """Join the ``torchrun`` process group if this process was started by one: nccl when the
    model runs on CUDA, gloo otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    return world()


def rank_device(requested: str) -> torch.device:
    """The device this process trains on: ``cuda`` under ``torchrun`` means ``cuda:LOCAL_RANK``.

    >>> rank_device("cpu")
    device(type='cpu')
    """
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device '{requested}' is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: this machine has no CUDA GPU; use --device cpu")
        torch.cuda.set_device(device)
    return device


def deterministic_env() -> None:
    """What ``finetune.deterministic`` needs before CUDA starts (cuBLAS reads it once)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def lr_at(step: int, total: int, steps_per_epoch: int, ft: FinetuneConfig) -> float:
    """The learning rate of ``step`` (0-based) out of ``total``.

    >>> from cuttree.config import FinetuneConfig
    >>> lr_at(0, 100, 10, FinetuneConfig(lr=0.1)), round(lr_at(50, 100, 10, FinetuneConfig(lr=0.1)), 4)
    (0.1, 0.05)
    """
    if step < ft.warmup_steps:
        return ft.lr * (step + 1) / ft.warmup_steps
    if ft.schedule == "cosine":
        return ft.lr * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    if ft.schedule == "step":
        return ft.lr * ft.gamma ** math.floor(step / max(1, round(ft.step_epochs * steps_per_epoch)))
    return ft.lr


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, dim: int = 1, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)) over the class dim ``dim``, mean over the rest,
    or over the positions where ``mask`` (the other dims' shape) is nonzero."""
    t = temperature
    log_s = F.log_softmax(student / t, dim=dim)
    log_t = F.log_softmax(teacher / t, dim=dim)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim)
    if mask is not None:
        m = mask.to(kl.dtype)
        return (kl * m).sum() / m.sum().clamp(min=1) * t * t
    return kl.mean() * t * t


class Precision:
    """How one run computes: the autocast dtype (``None``: full precision) and, with float16,
    the gradient scaler that float16 cannot train without (made here, so never missing).

    >>> p = Precision("fp16", torch.device("cpu"))
    >>> p.dtype, p.scaler is not None
    (torch.float16, True)
    >>> Precision("auto", torch.device("cpu")).dtype is None  # CPU autocast is rarely faster
    True
    """

    def __init__(self, amp: str, device: torch.device) -> None:
        kind = amp
        bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
        if kind == "auto":
            kind = ("bf16" if bf16_ok else "fp16") if device.type == "cuda" else "off"
        if kind == "bf16" and not bf16_ok:
            raise ValueError(f"finetune.amp=bf16: {device} does not support bfloat16; set finetune.amp=fp16 or auto")
        if kind not in ("off", "bf16", "fp16"):
            raise ValueError(f"finetune.amp={amp!r}: must be auto, off, bf16 or fp16")
        self.device_type = device.type
        self.dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[kind]
        self.scaler = torch.amp.GradScaler(device.type) if kind == "fp16" else None

    def autocast(self) -> Any:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        """Backward and optimizer step; with float16 through the scaler (skips a step on inf/NaN)."""
        if self.scaler is None:
            loss.backward()
            opt.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _labels(y: torch.Tensor | None) -> torch.Tensor:
    if y is None:
        raise ValueError(
            "a training batch has no labels; give (x, y) pairs or dicts with 'labels' (only a causal language "
            "model, whose loss is next-token prediction on its input, trains on text alone)"
        )
    return y


def _deterministic(device: torch.device) -> None:
    """Reproducible kernels (what a bit-exact resume on a GPU needs); process-wide, as asked for."""
    if device.type == "cuda":
        deterministic_env()
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


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
    from cuttree.reports.progress import Progress, on_terminal

    ft = cfg.finetune
    rank, size = world()
    device = model_device(model)
    data = validation.split(train_data, val_data, ft.val_fraction, cfg.seed)
    train_data = data.train
    n = len(train_data)  # type: ignore[arg-type]
    steps_per_epoch = n // (ft.batch_size * size)
    if steps_per_epoch < 1:
        raise ValueError(
            f"training data has {n} samples, fewer than one batch of {ft.batch_size} per process; "
            "lower finetune.batch_size or pass more data"
        )
    total = max(1, math.ceil(ft.epochs * steps_per_epoch))
    run = Path(run_dir) if run_dir is not None else None
    if ft.deterministic:
        _deterministic(device)
    net: nn.Module = model
    if size > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    opt = _optimizer(model, ft)
    precision = Precision(ft.amp, device)
    order = {"seed": cfg.seed, "samples": n, "batch_size": ft.batch_size, "processes": size}
    state: dict[str, Any] = {"step": 0, "history": [], "data_order": order}
    if resume:
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
        rng.restore(rng_state, device, train_data)
        log(f"resumed at step {state['step']}/{total}")
    live = progress and rank == 0 and on_terminal()
    say = (lambda m: None) if live else log  # a live bar shows what these lines would say
    best = validation.Best(run, state.get("validation"), write=rank == 0)
    if data.val is not None and not best.history:
        best.offer(model, 0, *validation.score(model, data.val, cfg))
        state["validation"] = best.state()  # a run killed before its first epoch ends resumes with it
        say(f"validation ({data.source}, {len(data.val):,} samples): {best.metric} {best.value:.4g} before fine-tuning")
    if teacher is not None:
        teacher.eval()
    lm = is_causal_lm(model)
    step = int(state["step"])
    done_here = 0
    running = float(state.get("running_loss", 0.0))  # the displayed loss continues across a resume
    val_info = f"  val {best.metric} {best.history[-1][1]:.4g}" if best.history else ""
    t_start = time.perf_counter()
    bar = Progress(total, "fine-tune", terminal=True, quiet=not live)
    with bar:
        bar.advance(step)
        while step < total and (max_steps is None or done_here < max_steps):
            epoch, in_epoch = divmod(step, steps_per_epoch)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))[rank::size]
            idx = perm[in_epoch * ft.batch_size : (in_epoch + 1) * ft.batch_size].tolist()
            x, y = split_batch(default_collate([train_data[i] for i in idx]), "training")
            x = to_device(x, device)
            y = text_labels(x) if y is None and lm else _labels(y).to(device)
            if on_step is not None:
                on_step(step)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, steps_per_epoch, ft)
            net.train()
            with precision.autocast():
                loss = _loss(model, net, teacher, x, y, cfg)
            opt.zero_grad(set_to_none=True)
            precision.step(loss, opt)
            step += 1
            done_here += 1
            value = loss.item()
            running = value if step == 1 else 0.9 * running + 0.1 * value
            if live:
                bar.advance(info=f"loss {running:.4f}{val_info}")
            elif step % max(1, steps_per_epoch // 10) == 0 or step == total:
                eta = (time.perf_counter() - t_start) / done_here * (total - step)
                log(
                    f"step {step}/{total} epoch {step / steps_per_epoch:.2f} loss {running:.4f} "
                    f"lr {opt.param_groups[0]['lr']:.5f} eta {int(eta) // 60}:{int(eta) % 60:02d}"
                )
            state["history"].append({"step": step, "loss": value})
            if data.val is not None and (step % steps_per_epoch == 0 or step == total):
                best.offer(model, step, *validation.score(model, data.val, cfg))
                val_info = f"  val {best.metric} {best.history[-1][1]:.4g}"
                say(f"step {step}/{total}: validation {best.metric} {best.history[-1][1]:.4g}")
                state["validation"] = best.state()
            if (
                run is not None
                and rank == 0
                and ft.checkpoint_every
                and (step % ft.checkpoint_every == 0 or step == total)
            ):
                state["step"] = step
                state["running_loss"] = running
                state["scaler"] = precision.state_dict()
                save_checkpoint(run, model, opt, state, rng.capture(device, train_data))
    state["step"] = step
    state["total"] = total
    state["validation"] = {**data.describe(), **best.state(), "kept": "last"}
    if data.val is not None and step == total:
        state["validation"]["kept"] = _keep_best(model, best, ft.keep_best and on_step is None, log)
    return state


def _loss(
    model: nn.Module, net: nn.Module, teacher: nn.Module | None, x: Any, y: torch.Tensor, cfg: Config
) -> torch.Tensor:
    """One batch's training loss: the task's, blended with distillation from ``teacher`` by
    ``finetune.distill`` (over the classes; a Hugging Face model's are its logits' last dim, a
    language model's averaged over the tokens that are not padding). ``net`` runs the forward
    pass in ``model``'s place (a DDP wrapper)."""
    ft = cfg.finetune
    loss, out = loss_and_logits(model, x, y, cfg, call=net)
    if teacher is None or ft.distill == 0:
        return loss
    with torch.no_grad():
        t_out = logits_of(forward(teacher, x))
    token_mask = x.get("attention_mask") if isinstance(x, dict) and out.dim() == 3 else None
    class_dim = -1 if takes_labels(model) else 1  # Hugging Face logits end in the classes (tokens, vocabulary)
    kd = distill_loss(out.float(), t_out.float(), ft.temperature, dim=class_dim, mask=token_mask)
    return (1 - ft.distill) * loss + ft.distill * kd


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
    from cuttree.recover.batching import forward, n_samples

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
