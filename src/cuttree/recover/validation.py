"""Validation during fine-tuning: a held-out split, a score, and the best weights kept.

Fine-tuning can make a model worse (a learning rate too high for the optimizer, a recipe that
does not suit the model), and a run that keeps its last weights would keep that silently. So
fine-tuning scores the model on a validation split before its first step, after every epoch and
at its end, and :class:`Best` keeps the weights that scored best, the model before fine-tuning
included; the caller ends with those (``finetune.keep_best``) and says so when they are not the
last ones.

- The split: the validation data the caller gives, or ``finetune.val_fraction`` of the training
  data held out by a seeded permutation (:func:`split`), read without augmentation when the
  dataset can drop it (a ``without_augmentation()`` method, as cuttree's image loaders have).
- The score: the task metric (top-1, mean IoU) for ``(x, y)`` samples; for keyword inputs (a
  language model's text) the mean loss, where lower is better (:func:`score`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cuttree.config import Config
from cuttree.recover.batching import Subset, held_out

if TYPE_CHECKING:
    import torch
    from torch import nn

BEST = "best.safetensors"


@dataclass(frozen=True)
class Split:
    """The data fine-tuning trains on, the data it validates on (``None``: no validation), and
    where the latter came from: ``given``, ``held out`` or ``none``."""

    train: Any
    val: Any | None
    source: str

    def describe(self) -> dict[str, Any]:
        """What a report says about the validation split."""
        return {"source": self.source, "samples": len(self.val) if self.val is not None else 0}


def split(train: Any, val: Any | None, fraction: float, seed: int) -> Split:
    """``val`` if given; otherwise ``fraction`` of ``train`` held out (at least one sample, the
    same ones for the same seed), or no validation when ``fraction`` is 0 or ``train`` has fewer
    than two samples.

    >>> s = split(list(range(10)), None, 0.2, seed=0)
    >>> len(s.train), len(s.val), s.source, sorted(s.val[i] for i in range(2)) == sorted(split(list(range(10)), None, 0.2, 0).val[i] for i in range(2))
    (8, 2, 'held out', True)
    >>> split(list(range(10)), None, 0.0, seed=0).source
    'none'
    """
    if val is not None:
        return Split(train, val, "given")
    kept, out = held_out(len(train), fraction, seed)
    if not len(out):
        return Split(train, None, "none")
    plain = train.without_augmentation() if hasattr(train, "without_augmentation") else train
    return Split(Subset(train, kept.tolist()), Subset(plain, out.tolist()), "held out")


def score(model: nn.Module, data: Any, cfg: Config, batch_size: int = 256) -> tuple[str, float, bool]:
    """``(name, value, higher_is_better)`` of ``model`` on ``data``: the task metric (``top1`` or
    ``miou``) for ``(x, y)`` samples, the mean ``loss`` for keyword inputs (text).

    >>> import torch
    >>> m = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.eye(2)); _ = m.bias.zero_()
    >>> score(m, [(torch.tensor([1.0, 0.0]), 0), (torch.tensor([0.0, 1.0]), 0)], Config(ratio=0.5))
    ('top1', 50.0, True)
    """
    from torch.utils.data import default_collate

    from cuttree.frontends.torch.calibrate import is_causal_lm, loss_and_logits, split_batch, text_labels, to_device
    from cuttree.frontends.torch.measure import evaluate
    from cuttree.frontends.torch.util import eval_mode, inference, model_device

    first, labels = split_batch(default_collate([data[0]]), "validation")
    if not isinstance(first, dict) and labels is None:
        raise ValueError(
            "a validation batch has no labels; give (x, y) pairs or dicts with 'labels' (only a causal language "
            "model's text needs none), or set finetune.val_fraction: 0 to fine-tune without validation"
        )
    if not isinstance(first, dict):
        key = "miou" if cfg.mode == "segmentation" else "top1"
        return key, evaluate(model, data, cfg.mode, batch_size, cfg.finetune.ignore_index)[key], True
    device, lm = model_device(model), is_causal_lm(model)
    batch_size = min(batch_size, cfg.finetune.batch_size)  # text: a window's logits span the vocabulary
    total, weight = 0.0, 0
    with eval_mode(model), inference(model):
        for s in range(0, len(data), batch_size):
            x, y = split_batch(
                default_collate([data[i] for i in range(s, min(s + batch_size, len(data)))]), "validation"
            )
            x = to_device(x, device)
            y = text_labels(x) if y is None and lm else y
            if y is None:
                raise ValueError("a validation batch has no labels; give dicts with 'labels' (or a causal LM's text)")
            loss, _ = loss_and_logits(model, x, y.to(device), cfg)
            n = len(next(iter(x.values())))
            total, weight = total + float(loss) * n, weight + n
    return "loss", total / max(weight, 1), False


class Best:
    """The best validation score seen so far, its step, and its weights: on the CPU, and in
    ``run_dir/best.safetensors`` when there is a run folder (so that a resumed run has them).

    >>> import torch
    >>> m = torch.nn.Linear(1, 1)
    >>> b = Best(None)
    >>> b.offer(m, 0, "top1", 50.0, True), b.offer(m, 10, "top1", 40.0, True), b.step
    (True, False, 0)
    """

    def __init__(self, run_dir: Path | None, state: dict[str, Any] | None = None, write: bool = True) -> None:
        self.run_dir, self.write = run_dir, write
        s = state or {}
        self.metric: str | None = s.get("metric")
        self.higher: bool = bool(s.get("higher", True))
        self.step: int | None = s.get("best_step")
        self.value: float | None = s.get("best")
        self.history: list[list[float]] = [list(h) for h in s.get("history", [])]
        self.weights: dict[str, torch.Tensor] | None = None
        if self.step is not None and run_dir is not None and (run_dir / BEST).is_file():
            from safetensors.torch import load_file

            self.weights = load_file(str(run_dir / BEST))

    def offer(self, model: nn.Module, step: int, metric: str, value: float, higher: bool) -> bool:
        """Record the score of ``model`` at ``step``; keep its weights if it is the best so far."""
        self.metric, self.higher = metric, higher
        self.history.append([step, value])
        better = self.value is None or (value > self.value if higher else value < self.value)
        if better:
            from cuttree.frontends.torch.util import state_dict_for_save

            self.step, self.value = step, value
            self.weights = {k: v.clone() for k, v in state_dict_for_save(model).items()}
            if self.run_dir is not None and self.write:
                from safetensors.torch import save_file

                from cuttree.files.atomic import atomic_write

                weights = self.weights
                atomic_write(self.run_dir / BEST, lambda p: save_file(weights, str(p)))
        return better

    @property
    def first(self) -> float | None:
        """The score before fine-tuning (the first one recorded)."""
        return self.history[0][1] if self.history else None

    def restore(self, model: nn.Module) -> None:
        """Load the best weights into ``model``."""
        from cuttree.files.cuttree_file import load_state

        if self.weights is None:
            raise ValueError("no validation score was recorded, so there are no best weights to restore")
        load_state(model, self.weights, "the best weights")

    def state(self) -> dict[str, Any]:
        """What a checkpoint and a report keep of it (JSON)."""
        return {
            "metric": self.metric,
            "higher": self.higher,
            "best_step": self.step,
            "best": self.value,
            "history": self.history,
        }
