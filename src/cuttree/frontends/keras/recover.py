"""Recovery for Keras models on any backend: BN recalibration, fine-tuning with ``model.fit``
and distillation from the unpruned model, and evaluation (top-1, mean IoU).

Data are numpy arrays ``(x, y)`` (channels last, as the model takes them). Fine-tuning runs a
fixed number of steps (``finetune.epochs`` × samples / ``batch_size``, fractions allowed) over a
seeded shuffle, with random crop (pad 4) and horizontal flip for images when ``augment`` is set;
the learning rate follows ``finetune.schedule`` (cosine, step or constant, with warm-up). The
distillation loss is Hinton's: (1 − α)·CE(y, student) + α·T²·KL(teacher_T ‖ student_T), with α
= ``finetune.distill`` and T = ``finetune.temperature``; a model that ends in a softmax is read
as log-probabilities, so both logits and probabilities work.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from cuttree.config import Config
from cuttree.core.keep_best import ending
from cuttree.errors import warn
from cuttree.frontends.keras.calibrate import model_input, quiet_numpy_copy, to_numpy
from cuttree.frontends.keras.surgery import leaf_layers
from cuttree.recover.batching import batch_at, held_out, shuffled_order


@dataclass(frozen=True)
class Arrays:
    """A dataset as the Keras side reads it: channels-last numpy inputs ``x`` and labels ``y``.
    Its length is the number of samples; iterating gives ``(x, y)`` batches of 64, as
    calibration reads them.

    >>> data = Arrays(np.zeros((100, 4, 4, 3), "float32"), np.zeros(100, "int64"))
    >>> len(data), [len(x) for x, _ in data]
    (100, [64, 36])
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(0, len(self.x), 64):
            yield self.x[i : i + 64], self.y[i : i + 64]


def outputs_probabilities(model: Any) -> bool:
    """Whether the model's last layer applies a softmax (its outputs are probabilities)."""
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    return getattr(act, "__name__", "") == "softmax" or type(last).__name__ == "Softmax"


def _logits(out: Any, probs: bool) -> Any:
    return keras.ops.log(keras.ops.clip(out, 1e-7, 1.0)) if probs else out


def evaluate(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    mode: str = "classification",
    batch_size: int = 256,
    ignore_index: int = 255,
) -> float:
    """Top-1 accuracy (classification) or mean IoU over the classes present (segmentation), in %."""
    if len(x) == 0:
        raise ValueError("evaluation data is empty; pass at least one sample")
    correct = 0
    conf: np.ndarray | None = None
    for i in range(0, len(x), batch_size):
        pred = to_numpy(model(model_input(model, x[i : i + batch_size].astype("float32")), training=False))
        target = np.asarray(y[i : i + batch_size])
        if mode == "classification":
            correct += int((pred.argmax(-1) == target).sum())
            continue
        k = pred.shape[-1]
        conf = np.zeros((k, k), dtype=np.int64) if conf is None else conf
        p, t = pred.argmax(-1).reshape(-1), target.reshape(-1)
        keep = t != ignore_index
        np.add.at(conf, (t[keep], p[keep]), 1)
    if mode == "classification":
        return 100.0 * correct / len(x)
    assert conf is not None
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    present = conf.sum(1) > 0
    return float(100.0 * np.mean(inter[present] / np.maximum(union[present], 1)))


def recalibrate_bn(model: Any, x: np.ndarray, batches: int = 20, batch_size: int = 64, seed: int = 0) -> int:
    """Re-estimate every BatchNormalization's moving statistics on ``batches`` batches of ``x``
    (an exact average: momentum k/(k+1) at batch k). Returns the number of layers updated."""
    bns = [layer for layer in leaf_layers(model).values() if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        return 0
    rng = np.random.default_rng(seed)
    saved = [b.momentum for b in bns]
    for b in bns:
        b.moving_mean.assign(keras.ops.zeros(b.moving_mean.shape))
        b.moving_variance.assign(keras.ops.ones(b.moving_variance.shape))
    try:
        for k in range(batches):
            for b in bns:
                b.momentum = k / (k + 1)
            idx = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
            model(model_input(model, x[idx].astype("float32")), training=True)
    finally:
        for b, m in zip(bns, saved, strict=True):
            b.momentum = m
    return len(bns)


class Batches(keras.utils.PyDataset):
    """``steps`` seeded, shuffled batches (reshuffled each pass), optionally augmented
    (:mod:`cuttree.recover.batching`)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, steps: int, seed: int, augment: bool) -> None:
        super().__init__()
        self.x, self.y, self.batch_size, self.steps, self.augment = x, y, batch_size, steps, augment
        self.order = shuffled_order(len(x), batch_size, steps, seed)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return batch_at(self.x, self.y, self.order, i, self.batch_size, self.augment)


class _Distill(keras.Model):
    """The student, trained on (1 − α)·CE + α·T²·KL to a frozen teacher."""

    def __init__(self, student: Any, teacher: Any | None, alpha: float, temperature: float) -> None:
        super().__init__(name="cuttree_finetune")  # TensorFlow refuses scope names that start with "_"
        self.student, self.teacher = student, teacher
        self.alpha, self.t = alpha, temperature
        self.s_probs = outputs_probabilities(student)
        self.t_probs = teacher is not None and outputs_probabilities(teacher)
        self.ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def call(self, x: Any, training: bool = False) -> Any:
        return self.student(model_input(self.student, x), training=training)

    def compute_loss(
        self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True
    ) -> Any:
        s = _logits(y_pred, self.s_probs)
        loss = self.ce(y, s)
        if self.teacher is None or self.alpha == 0:
            return loss
        t = _logits(self.teacher(model_input(self.teacher, x), training=False), self.t_probs)
        p_t = keras.ops.softmax(t / self.t)
        log_p_s = keras.ops.log_softmax(s / self.t)
        kd = keras.ops.mean(keras.ops.sum(p_t * (keras.ops.log(keras.ops.clip(p_t, 1e-9, 1.0)) - log_p_s), axis=-1))
        return (1 - self.alpha) * loss + self.alpha * self.t**2 * kd


def _schedule(cfg: Config, steps: int, steps_per_epoch: int) -> Any:
    ft = cfg.finetune
    if ft.schedule == "cosine":
        lr: Any = keras.optimizers.schedules.CosineDecay(ft.lr, decay_steps=max(steps - ft.warmup_steps, 1))
        if ft.warmup_steps:
            lr = keras.optimizers.schedules.CosineDecay(
                0.0, decay_steps=max(steps - ft.warmup_steps, 1), warmup_target=ft.lr, warmup_steps=ft.warmup_steps
            )
        return lr
    if ft.schedule == "step":
        every = max(int(ft.step_epochs * steps_per_epoch), 1)
        bounds = list(range(every, steps, every))
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            bounds, [ft.lr * ft.gamma**i for i in range(len(bounds) + 1)]
        )
    return ft.lr


class _KeepBest(keras.callbacks.Callback):
    """Scores the student on the validation arrays before the first step, every ``every`` steps
    and at the last, and keeps the weights of the best score (:mod:`cuttree.recover.validation`)."""

    def __init__(self, student: Any, x: np.ndarray, y: np.ndarray, cfg: Config, every: int, steps: int) -> None:
        super().__init__()
        self.student, self.x, self.y, self.cfg, self.every, self.steps = student, x, y, cfg, every, steps
        self.history: list[list[float]] = []
        self.best_step, self.best_value, self.best_weights = 0, -np.inf, None

    def offer(self, step: int) -> None:
        value = evaluate(self.student, self.x, self.y, self.cfg.mode, ignore_index=self.cfg.finetune.ignore_index)
        self.history.append([step, value])
        if value > self.best_value:
            self.best_step, self.best_value, self.best_weights = step, value, self.student.get_weights()

    def on_train_begin(self, logs: Any = None) -> None:
        self.offer(0)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        step = batch + 1
        if step % self.every == 0 or step == self.steps:
            self.offer(step)


def finetune(
    model: Any,
    cfg: Config,
    x: np.ndarray,
    y: np.ndarray,
    teacher: Any | None = None,
    augment: bool = True,
    callbacks: list[Any] | None = None,
    verbose: int = 0,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place on ``(x, y)`` with ``cfg.finetune``; returns the steps, the
    last loss and the validation record.

    The model is scored on ``val`` (default: ``finetune.val_fraction`` of ``(x, y)``, held out)
    before the first step, after every epoch and at the end; with ``finetune.keep_best`` it ends
    with the weights that scored best, those it started with included, and warns when fine-tuning
    did not beat where it started, as the torch frontend does (:mod:`cuttree.recover.validation`).
    """
    ft = cfg.finetune
    if ft.distill > 0 and teacher is None:
        raise ValueError(f"finetune.distill={ft.distill} needs the unpruned model: pass teacher= or set distill: 0")
    source = "given" if val is not None else "none"
    if val is None and ft.val_fraction > 0:
        train_idx, val_idx = held_out(len(x), ft.val_fraction, cfg.seed)
        if len(val_idx):
            val, x, y, source = (x[val_idx], y[val_idx]), x[train_idx], y[train_idx], "held out"
    steps_per_epoch = max(len(x) // ft.batch_size, 1)
    steps = max(round(ft.epochs * steps_per_epoch), 1)
    lr = _schedule(cfg, steps, steps_per_epoch)
    if ft.optimizer == "sgd":
        opt = keras.optimizers.SGD(lr, momentum=ft.momentum, nesterov=True, weight_decay=ft.weight_decay or None)
    else:
        opt = keras.optimizers.AdamW(lr, weight_decay=ft.weight_decay)
    keras.utils.set_random_seed(cfg.seed)
    wrapper = _Distill(model, teacher, ft.distill, ft.temperature)
    wrapper.compile(optimizer=opt, jit_compile=False)
    from cuttree.frontends.keras.sparsity import GradualPruning

    for cb in callbacks or []:
        if isinstance(cb, GradualPruning) and cb.target is None:
            cb.target = model  # mask the student, never the teacher inside the wrapper
    data = Batches(x, y, ft.batch_size, steps, cfg.seed, augment)
    schedule = [cb for cb in callbacks or [] if isinstance(cb, GradualPruning)]
    best = _KeepBest(model, *val, cfg, steps_per_epoch, steps) if val is not None else None
    frozen = teacher.trainable if teacher is not None else None
    if teacher is not None:
        teacher.trainable = False  # the wrapper tracks it: without this the optimizer would train it too
    try:
        with quiet_numpy_copy():  # Keras's own conversions inside fit, on the torch backend
            hist = wrapper.fit(
                data, epochs=1, verbose=verbose, callbacks=[*(callbacks or []), *([best] if best else [])]
            )
    finally:
        if teacher is not None:
            teacher.trainable = bool(frozen)
    record: dict[str, Any] = {"source": source, "samples": len(val[0]) if val is not None else 0, "kept": "last"}
    if best is not None:
        metric = "miou" if cfg.mode == "segmentation" else "top1"
        # a sparsity schedule changes the model between scores, so they are not compared
        kept, warning = ending(best.history, best.best_step, True, ft.keep_best and not schedule, metric)
        if kept == "best":
            with quiet_numpy_copy():
                model.set_weights(best.best_weights)
        if warning is not None:
            warn(warning)
        record.update(metric=metric, higher=True, best_step=best.best_step, best=best.best_value, kept=kept)
        record["history"] = best.history
    return {"steps": steps, "loss": float(hist.history["loss"][-1]), "validation": record}
