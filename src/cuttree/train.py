"""Recover accuracy: fine-tuning with optional distillation, resumable, DDP-aware.

- Loss: the task loss by ``mode`` (cross-entropy on logits, or per pixel with ``ignore_index``),
  plus, with ``distill`` = α > 0 and a teacher, α·T²·KL(teacher ‖ student) at temperature T, the
  task term weighted 1 − α.
- Data order: epoch *e* visits ``randperm(n, seed · 1000 + e)``, split across DDP ranks, so the
  order is a pure function of (seed, epoch) and a resumed run needs no sampler state.
- Learning rate: a pure function of the step (cosine, step, constant; linear warm-up).
- Checkpoints: ``checkpoint.safetensors`` (model, optimizer tensors, RNG state) then
  ``checkpoint.json`` (step, optimizer settings, history), each written atomically; resuming
  from them ends with exactly the weights of an uninterrupted run.
- Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP (gloo on CPU, nccl on GPU)
  after pruning; only rank 0 writes.
"""

from __future__ import annotations

import json
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

from cuttree._util import primary_output
from cuttree.calibrate import task_loss
from cuttree.config import Config, FinetuneConfig
from cuttree.io import atomic_write, load_state

Log = Callable[[str], None]


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside ``torchrun``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the ``torchrun`` process group if this process was started by one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world()


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


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)) over the class dim (1), mean over the rest."""
    t = temperature
    log_s = F.log_softmax(student / t, dim=1)
    log_t = F.log_softmax(teacher / t, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)
    return kl.mean() * t * t


def _autocast(ft: FinetuneConfig, device: torch.device) -> Any:
    kind = ft.amp
    if kind == "auto":
        kind = "fp16" if device.type == "cuda" else "off"  # CPU autocast is rarely faster
    if kind == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if kind == "fp16" else torch.bfloat16)


def _optimizer(model: nn.Module, ft: FinetuneConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if ft.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=ft.lr, weight_decay=ft.weight_decay)
    return torch.optim.SGD(
        params, lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay, nesterov=ft.momentum > 0
    )


def _save_checkpoint(run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{idx}.{k}"] = v.detach().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {**state, "param_groups": sd["param_groups"]}
    atomic_write(run_dir / "checkpoint.safetensors", lambda p: save_file(tensors, str(p)))
    atomic_write(run_dir / "checkpoint.json", lambda p: p.write_text(json.dumps(meta)))


def _load_checkpoint(run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    meta = json.loads((run_dir / "checkpoint.json").read_text())
    tensors = load_file(str(run_dir / "checkpoint.safetensors"))
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(run_dir))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return meta


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
) -> dict[str, Any]:
    """Fine-tune ``model`` in place on ``train_data`` (pairs ``(x, y)``); returns the history.

    ``max_steps`` stops early (as a kill would) after that many steps of this call;
    ``on_step(step)`` runs before each step (a gradual sparsity schedule updates masks there).
    """
    ft = cfg.finetune
    rank, size = world()
    device = next(model.parameters()).device
    n = len(train_data)  # type: ignore[arg-type]
    steps_per_epoch = n // (ft.batch_size * size)
    if steps_per_epoch < 1:
        raise ValueError(
            f"training data has {n} samples, fewer than one batch of {ft.batch_size} per process; "
            "lower finetune.batch_size or pass more data"
        )
    total = max(1, math.ceil(ft.epochs * steps_per_epoch))
    run = Path(run_dir) if run_dir is not None else None
    net: nn.Module = model
    if size > 1:
        net = nn.parallel.DistributedDataParallel(model)
    opt = _optimizer(model, ft)
    state: dict[str, Any] = {"step": 0, "history": []}
    if resume:
        if run is None or not (run / "checkpoint.json").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in '{run}'; start without --resume")
        state = _load_checkpoint(run, model, opt)
        log(f"resumed at step {state['step']}/{total}")
    if teacher is not None:
        teacher.eval()
    step = int(state["step"])
    done_here = 0
    running = 0.0
    t_start = time.perf_counter()
    while step < total and (max_steps is None or done_here < max_steps):
        epoch, in_epoch = divmod(step, steps_per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))[rank::size]
        idx = perm[in_epoch * ft.batch_size : (in_epoch + 1) * ft.batch_size].tolist()
        x, y = default_collate([train_data[i] for i in idx])
        x, y = x.to(device), y.to(device)
        if on_step is not None:
            on_step(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, steps_per_epoch, ft)
        net.train()
        with _autocast(ft, device):
            out = primary_output(net(x))
            loss = task_loss(out, y, cfg.mode, ft.ignore_index)
            if teacher is not None and ft.distill > 0:
                with torch.no_grad():
                    t_out = primary_output(teacher(x))
                loss = (1 - ft.distill) * loss + ft.distill * distill_loss(out.float(), t_out.float(), ft.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        done_here += 1
        running = loss.item() if step == 1 else 0.9 * running + 0.1 * loss.item()
        if step % max(1, steps_per_epoch // 10) == 0 or step == total:
            eta = (time.perf_counter() - t_start) / done_here * (total - step)
            log(
                f"step {step}/{total} epoch {step / steps_per_epoch:.2f} loss {running:.4f} "
                f"lr {opt.param_groups[0]['lr']:.5f} eta {int(eta) // 60}:{int(eta) % 60:02d}"
            )
        state["history"].append({"step": step, "loss": loss.item()})
        if run is not None and rank == 0 and ft.checkpoint_every and (step % ft.checkpoint_every == 0 or step == total):
            state["step"] = step
            _save_checkpoint(run, model, opt, state)
    state["step"] = step
    state["total"] = total
    return state


def recalibrate_bn(model: nn.Module, data: Dataset[Any], cfg: Config) -> int:
    """Re-estimate batch-norm statistics on at least ``min_samples`` samples; returns how many."""
    from cuttree.calibrate import batches

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
            for x, _ in batches(loader, cfg, need_labels=False):
                model(x.to(next(model.parameters()).device))
                seen += len(x)
    finally:
        for bn, mo in zip(bns, momenta, strict=True):
            bn.momentum = mo
        for mod, f in flags.items():
            mod.training = f
    return seen
