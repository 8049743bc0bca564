"""A causal language model's figures: perplexity over token windows, and its speed in tokens/s.

- **Perplexity**: ``exp`` of the mean negative log-likelihood of every predicted token: in each
  window of N tokens, tokens 2…N are predicted from those before them (N − 1 predictions per
  window, no context carried between windows), the NLL summed in float64 over all windows and
  divided by their count.
- **Prefill tokens/s**: batch × sequence tokens over the time of one forward pass of that batch.
- **Decode tokens/s**: greedy decoding with the key/value cache, ``new`` tokens after a prompt of
  ``prompt`` tokens, batch 1, over the time of the whole generation less that of the prompt's
  forward pass.

Two models are timed interleaved (one run of each in turn, the same warm-up), medians reported,
as the CNN latencies are (:mod:`cuttree.core.timing`).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cuttree.frontends.torch.util import eval_mode, model_device


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> float:
    """The perplexity of ``model`` on ``windows`` (int64, windows × tokens; the module docstring)."""
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows of shape {tuple(windows.shape)}: give a (windows, tokens ≥ 2) tensor of token ids")
    total, count = 0.0, 0
    device = model_device(model)
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(windows), batch_size):
            ids = windows[i : i + batch_size].to(device)
            logits = model(input_ids=ids).logits.float()
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
            total += float(nll.double())
            count += ids[:, 1:].numel()
    return math.exp(total / count)


def token_windows(data: Any) -> torch.Tensor:
    """The evaluation windows of a dataset of text samples (``{"input_ids": …}`` dicts of one
    length, such as :class:`cuttree.datasets.lm_text.TextWindows`) as one (windows, tokens) tensor.

    >>> token_windows([{"input_ids": torch.tensor([1, 2])}, {"input_ids": torch.tensor([3, 4])}]).tolist()
    [[1, 2], [3, 4]]
    """
    if isinstance(getattr(data, "windows", None), torch.Tensor):
        return data.windows  # type: ignore[no-any-return]
    rows = [data[i] for i in range(len(data))]
    ids = [r["input_ids"] if isinstance(r, dict) else r for r in rows]
    if not ids or any(not isinstance(t, torch.Tensor) or t.shape != ids[0].shape or t.dim() != 1 for t in ids):
        raise ValueError(
            "perplexity needs windows of token ids of one length: samples {'input_ids': tensor}, e.g. "
            "cuttree.datasets.lm_text.TextWindows(windows(tokenizer, text, length))"
        )
    return torch.stack(ids)


def _prefill_once(model: nn.Module, ids: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    return time.perf_counter() - t0


def _decode_once(model: nn.Module, prompt: torch.Tensor, new: int) -> float:
    t0 = time.perf_counter()
    model(input_ids=prompt)
    t1 = time.perf_counter()
    model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)  # type: ignore[operator]
    return max(time.perf_counter() - t1 - (t1 - t0), 1e-9)


def speeds(
    models: dict[str, nn.Module],
    windows: torch.Tensor,
    batch: int = 1,
    seq: int = 256,
    prompt: int = 32,
    new: int = 32,
    runs: int = 5,
) -> dict[str, dict[str, Any]]:
    """Prefill and decode tokens/s of each model (medians of ``runs``, the models interleaved)."""
    if len(windows) < batch or windows.shape[1] < max(seq, prompt):
        raise ValueError(f"windows {tuple(windows.shape)} too small for batch {batch} × {seq} tokens")
    ids, start = windows[:batch, :seq], windows[:1, :prompt]
    times: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in models}
    with torch.no_grad():
        for m in models.values():  # warm-up
            m.eval()
            _prefill_once(m, ids.to(model_device(m)))
            _decode_once(m, start.to(model_device(m)), 2)
        for _ in range(runs):
            for name, m in models.items():
                times[name]["prefill"].append(_prefill_once(m, ids.to(model_device(m))))
                times[name]["decode"].append(_decode_once(m, start.to(model_device(m)), new))
    return {
        name: {
            "prefill_tokens_per_s": batch * seq / statistics.median(t["prefill"]),
            "decode_tokens_per_s": new / statistics.median(t["decode"]),
            "prefill": {"batch": batch, "seq": seq},
            "decode": {"prompt": prompt, "new": new},
            "runs": runs,
            "threads": torch.get_num_threads(),
        }
        for name, t in times.items()
    }
