"""The fine-tuning loop, step by step: the learning rate of a step, the batch it draws, the loss
(task and distillation) it descends, and the progress lines and checkpoints between steps.

:func:`cuttree.recover.train.finetune` sets a run up (data split, optimizer, resume) and hands it
to :class:`Loop`; the data order and the learning rate are pure functions of the step, so a run
resumed from a checkpoint draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, default_collate

from cuttree.config import Config, FinetuneConfig
from cuttree.frontends.torch.calibrate import (
    is_causal_lm,
    logits_of,
    loss_and_logits,
    split_batch,
    takes_labels,
    text_labels,
    to_device,
)
from cuttree.frontends.torch.util import model_device
from cuttree.recover import rng, validation
from cuttree.recover.batching import forward
from cuttree.recover.checkpoints import save_checkpoint
from cuttree.recover.devices import Precision, world
from cuttree.recover.sharding import mean_over_processes, sharded

Log = Callable[[str], None]


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


def _labels(y: torch.Tensor | None) -> torch.Tensor:
    if y is None:
        raise ValueError(
            "a training batch has no labels; give (x, y) pairs or dicts with 'labels' (only a causal language "
            "model, whose loss is next-token prediction on its input, trains on text alone)"
        )
    return y


@dataclass
class Loop:
    """One fine-tuning's moving parts, and its steps from wherever the run stands; checkpoints go
    to ``run`` (``None``: no run folder), written by the process that ``write``s."""

    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    teacher: nn.Module | None
    opt: torch.optim.Optimizer
    precision: Precision
    cfg: Config
    data: validation.Split
    best: validation.Best
    run: Path | None
    write: bool  # this process writes the checkpoints (the first; under FSDP2 every process gathers them)
    total: int
    log: Log
    live: bool  # a live bar shows what the step lines would say

    def say(self, message: str) -> None:
        if not self.live:
            self.log(message)

    def steps(
        self, state: dict[str, Any], steps_per_epoch: int, max_steps: int | None, on_step: Callable[[int], None] | None
    ) -> int:
        """Train from ``state["step"]`` to the end (or ``max_steps`` more), recording into ``state``;
        the step it stopped at."""
        from cuttree.reports.progress import Progress

        ft, total, best, val = self.cfg.finetune, self.total, self.best, self.data.val
        device, lm = model_device(self.model), is_causal_lm(self.model)
        step, done_here = int(state["step"]), 0
        running = float(state.get("running_loss", 0.0))  # the displayed loss continues across a resume
        val_info = f"  val {best.metric} {best.history[-1][1]:.4g}" if best.history else ""
        t_start = time.perf_counter()
        bar = Progress(total, "fine-tune", terminal=True, quiet=not self.live)
        with bar:
            bar.advance(step)
            while step < total and (max_steps is None or done_here < max_steps):
                x, y = _batch(self.data.train, step, steps_per_epoch, self.cfg, device, lm)
                if on_step is not None:
                    on_step(step)
                for g in self.opt.param_groups:
                    g["lr"] = lr_at(step, total, steps_per_epoch, ft)
                value = _train_step(self.model, self.net, self.teacher, self.opt, self.precision, x, y, self.cfg)
                step += 1
                done_here += 1
                running = value if step == 1 else 0.9 * running + 0.1 * value
                if self.live:
                    bar.advance(info=f"loss {running:.4f}{val_info}")
                elif step % max(1, steps_per_epoch // 10) == 0 or step == total:
                    eta = (time.perf_counter() - t_start) / done_here * (total - step)
                    self.log(_step_line(step, total, steps_per_epoch, running, self.opt.param_groups[0]["lr"], eta))
                state["history"].append({"step": step, "loss": value})
                if val is not None and (step % steps_per_epoch == 0 or step == total):
                    best.offer(self.model, step, *validation.score(self.model, val, self.cfg))
                    val_info = f"  val {best.metric} {best.history[-1][1]:.4g}"
                    self.say(f"step {step}/{total}: validation {best.metric} {best.history[-1][1]:.4g}")
                    state["validation"] = best.state()
                if (
                    self.run is not None
                    and (self.write or sharded(self.model))
                    and ft.checkpoint_every
                    and (step % ft.checkpoint_every == 0 or step == total)
                ):
                    state |= {"step": step, "running_loss": running, "scaler": self.precision.state_dict()}
                    save_checkpoint(
                        self.run, self.model, self.opt, state, rng.capture(device, self.data.train), self.write
                    )
        return step


def _train_step(
    model: nn.Module,
    net: nn.Module,
    teacher: nn.Module | None,
    opt: torch.optim.Optimizer,
    precision: Precision,
    x: Any,
    y: torch.Tensor,
    cfg: Config,
) -> float:
    """One optimizer step on the batch ``(x, y)``; its loss."""
    net.train()
    with precision.autocast():
        loss = _loss(model, net, teacher, x, y, cfg)
    opt.zero_grad(set_to_none=True)
    precision.step(loss, opt)
    return mean_over_processes(float(loss.item()))  # the whole batch's, as one process would report it


def _batch(
    train_data: Dataset[Any], step: int, steps_per_epoch: int, cfg: Config, device: torch.device, lm: bool
) -> tuple[Any, torch.Tensor]:
    """The batch of ``step`` for this process: epoch *e* visits ``randperm(n, seed · 1000 + e)``,
    split across the ranks, so the order is a pure function of (seed, step)."""
    rank, size = world()
    n, bs = len(train_data), cfg.finetune.batch_size  # type: ignore[arg-type]
    epoch, in_epoch = divmod(step, steps_per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))[rank::size]
    idx = perm[in_epoch * bs : (in_epoch + 1) * bs].tolist()
    x, y = split_batch(default_collate([train_data[i] for i in idx]), "training")
    x = to_device(x, device)
    return x, text_labels(x) if y is None and lm else _labels(y).to(device)


def _step_line(step: int, total: int, steps_per_epoch: int, loss: float, lr: float, eta: float) -> str:
    return (
        f"step {step}/{total} epoch {step / steps_per_epoch:.2f} loss {loss:.4f} "
        f"lr {lr:.5f} eta {int(eta) // 60}:{int(eta) % 60:02d}"
    )


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
