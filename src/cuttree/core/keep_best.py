"""How a fine-tuning run ends: with its best or its last weights, and what to warn about.

Fine-tuning can make a model worse; each frontend's fine-tuning scores a validation split as it
goes and keeps the best weights (``finetune.keep_best``). The decisions about that record are the
same for every framework, so they live here, once.
"""

from __future__ import annotations

from collections.abc import Sequence

from cuttree.core.results import is_worse, metric_key
from cuttree.errors import warn


def ending(
    history: Sequence[Sequence[float]], best_step: int, higher: bool, keep: bool, metric: str
) -> tuple[str, str | None]:
    """Which weights a fine-tuning run ends with, ``"best"`` or ``"last"``, and the warning to give
    (``None``: none), from its validation ``history`` (``[step, score]`` pairs, the first before
    fine-tuning) and the step that scored best. Both frontends decide here.

    >>> ending([[0, 80.0], [10, 70.0]], 0, True, True, "top1")[0]
    'best'
    >>> ending([[0, 80.0], [10, 70.0]], 0, True, False, "top1")[1].startswith("fine-tuning made the model worse")
    True
    >>> ending([[0, 70.0], [10, 80.0]], 10, True, True, "top1")
    ('last', None)
    """
    last_step, end = history[-1]
    start = history[0][1]
    what = f"validation {metric} {start:.4g} before fine-tuning, {end:.4g} after"
    if keep and best_step != last_step:
        if best_step == 0:
            return "best", (
                f"fine-tuning did not improve the model ({what}): kept the weights from before it "
                "(finetune.keep_best); lower finetune.lr, or train longer with warm-up"
            )
        return "best", None
    if end < start if higher else end > start:
        return (
            "last",
            f"fine-tuning made the model worse ({what}) and kept the last weights (finetune.keep_best is off)",
        )
    return "last", None


def warn_if_worse(before: dict[str, float], after: dict[str, float], split: str = "test") -> bool:
    """Warn when fine-tuning left the task metric worse than where it started (lower top-1 or
    mean IoU, higher perplexity); returns whether it did.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     warn_if_worse({"top1": 80.0}, {"top1": 75.5}), warn_if_worse({"perplexity": 20.0}, {"perplexity": 19.0})
    (True, False)
    >>> print(w[0].message)
    fine-tuning left the model worse on the test split: top1 80.00 before it, 75.50 after; the validation split chose these weights, so the two splits disagree (use a larger validation split: finetune.val_fraction) or the recipe does not suit the model (lower finetune.lr)
    """
    key = metric_key(before)
    if key is None or key not in after or not is_worse(key, before[key], after[key]):
        return False
    warn(
        f"fine-tuning left the model worse on the {split} split: {key} {before[key]:.2f} before it, {after[key]:.2f} "
        "after; the validation split chose these weights, so the two splits disagree (use a larger validation split: "
        "finetune.val_fraction) or the recipe does not suit the model (lower finetune.lr)"
    )
    return True
