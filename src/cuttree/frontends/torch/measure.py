"""Measure a model: parameters, MACs, size on disk, latency.

MACs come from ``torch.utils.flop_counter`` (FLOPs / 2; convolutions, matrix products and
attention, as that counter counts them). Size on disk is the byte length of the model's
safetensors file. Latency is the median (and interquartile range) of ``runs`` forward
passes after ``warmup`` passes, in eval mode without gradients, on the model's device; two models
compared are timed interleaved in one loop (:func:`compare`). On a GPU each pass is timed by CUDA
events and waited for (:func:`timer`), so the figure is the work done, not the time to queue it.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cuttree.core.results import Measurements
from cuttree.core.timing import Timing, interleaved
from cuttree.frontends.torch.util import (
    as_inputs,
    eval_mode,
    frozen,
    inference,
    model_device,
    primary_output,
    run_model,
    state_dict_for_save,
)


def count_params(model: nn.Module) -> int:
    """Distinct parameters' element count (a shared parameter counts once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: Sequence[Any]) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs``, attention products included.

    torch's FLOP counter has no formula for the CPU's fused attention kernel, and
    ``nn.MultiheadAttention``'s eval fast path is one op it cannot see into; so the CPU kernel
    gets the counter's own attention formula, and multi-head attention runs as the equivalent
    :class:`~cuttree.frontends.torch.attention.PrunableMultiheadAttention` (as it is traced).
    """
    from torch.utils.flop_counter import sdpa_flop_count

    from cuttree.frontends.torch.attention import traceable

    def attention_flops(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return int(sdpa_flop_count(q, k, v))

    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flops}
    with (
        eval_mode(model),
        frozen(model),
        torch.no_grad(),
        traceable(model),
        FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter,
    ):
        run_model(model, example_inputs)
    return int(counter.get_total_flops()) // 2


def size_on_disk(model: nn.Module) -> int:
    """Bytes of the model's weights as :func:`cuttree.save` stores them: a safetensors file, with
    mostly-zero tensors compressed (:func:`cuttree.files.cuttree_file.compress`), so a sparse model's figure is
    its file's.

    >>> import torch
    >>> m = torch.nn.Linear(1000, 100)
    >>> dense = size_on_disk(m)
    >>> with torch.no_grad():
    ...     _ = m.weight.mul_(torch.rand_like(m.weight) > 0.9)
    >>> size_on_disk(m) < dense / 3
    True
    """
    from safetensors.torch import save

    from cuttree.files.cuttree_file import compress

    return len(save(compress(state_dict_for_save(model))[0]))


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished the work queued on it (nothing to wait for on the CPU)."""
    if device.type != "cpu":
        torch.get_device_module(device.type).synchronize(device)


def timer(fn: Callable[[], object], device: torch.device) -> Callable[[], float]:
    """A call that runs ``fn`` once, finished on ``device``, and returns its milliseconds: CUDA
    events on CUDA, the wall clock around a device synchronise elsewhere.

    >>> t = timer(lambda: None, torch.device("cpu"))
    >>> t() >= 0.0
    True
    """

    def timed() -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        return (time.perf_counter() - t0) * 1000.0

    return timed


def time_ms(fn: Callable[[], object], device: torch.device, runs: int, warmup: int = 2) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``fn`` after ``warmup`` untimed ones (:func:`timer`).

    >>> len(time_ms(lambda: None, torch.device("cpu"), runs=3))
    3
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    t = timer(fn, device)
    return [t() for _ in range(runs)]


def latency_ms(model: nn.Module, example_inputs: Sequence[Any], runs: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of a forward pass, on the model's device."""
    with eval_mode(model), torch.inference_mode():
        return statistics.median(time_ms(lambda: model(*example_inputs), model_device(model), runs, warmup))


def latencies(models: Sequence[nn.Module], example_inputs: Sequence[Any], runs: int, warmup: int = 3) -> list[Timing]:
    """Each model's forward pass timed ``runs`` times interleaved in one loop after the same
    warm-up (:func:`cuttree.core.timing.interleaved`): figures that can be compared with each other."""
    with ExitStack() as stack:
        for m in models:
            stack.enter_context(eval_mode(m))
        stack.enter_context(torch.inference_mode())
        timers = [timer(functools.partial(m, *example_inputs), model_device(m)) for m in models]
        return interleaved(timers, runs, warmup)


def measure(model: nn.Module, example_inputs: Sequence[Any], latency_runs: int = 10) -> Measurements:
    """All figures for ``model`` on ``example_inputs`` (latency skipped when ``latency_runs`` is 0),
    the model timed alone; :func:`compare` times two models side by side.

    >>> import torch
    >>> m = measure(torch.nn.Linear(4, 2), (torch.zeros(3, 4),), latency_runs=0)
    >>> (m.params, m.macs)
    (10, 24)
    """
    example_inputs = as_inputs(example_inputs)
    m = _static(model, example_inputs)
    if latency_runs <= 0:
        return m
    return m.with_timing(latencies([model], example_inputs, latency_runs)[0], "alone")


def compare(
    before: nn.Module, after: nn.Module, example_inputs: Sequence[Any], latency_runs: int = 10
) -> tuple[Measurements, Measurements]:
    """Figures for two models on the same inputs, their latencies timed interleaved.

    >>> import torch
    >>> a, b = compare(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2), (torch.zeros(3, 4),), latency_runs=3)
    >>> (a.macs, b.macs, a.latency_timing, b.latency_timing)
    (48, 24, 'interleaved', 'interleaved')
    """
    example_inputs = as_inputs(example_inputs)
    ma, mb = _static(before, example_inputs), _static(after, example_inputs)
    if latency_runs <= 0:
        return ma, mb
    ta, tb = latencies([before, after], example_inputs, latency_runs)
    return ma.with_timing(ta, "interleaved"), mb.with_timing(tb, "interleaved")


def _static(model: nn.Module, example_inputs: Sequence[Any]) -> Measurements:
    first = next((x for x in example_inputs if isinstance(x, torch.Tensor)), None)
    return Measurements(
        params=count_params(model),
        macs=count_macs(model, example_inputs),
        size_bytes=size_on_disk(model),
        latency_ms=None,
        batch_size=int(first.shape[0]) if first is not None and first.dim() else 1,
        threads=torch.get_num_threads(),
    )


def evaluate(
    model: nn.Module,
    data: Any,
    mode: str = "classification",
    batch_size: int = 256,
    ignore_index: int = 255,
    on_batch: Callable[[int], object] | None = None,
) -> dict[str, float]:
    """The task metric on ``data`` (a dataset of ``(x, y)``): top-1/top-5 accuracy in % for
    classification; pixel accuracy and mean IoU in % for segmentation (``ignore_index`` skipped).
    ``on_batch(n)`` is called after each batch of ``n`` samples (a progress bar).

    >>> import torch
    >>> m = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.eye(2)); _ = m.bias.zero_()
    >>> data = [(torch.tensor([1.0, 0.0]), 0), (torch.tensor([0.0, 1.0]), 0)]
    >>> evaluate(m, data)["top1"]
    50.0
    """
    from torch.utils.data import default_collate

    n = len(data)
    device = model_device(model)
    correct1 = correct5 = total = 0
    conf: torch.Tensor | None = None
    with eval_mode(model), inference(model):
        for s in range(0, n, batch_size):
            x, y = default_collate([data[i] for i in range(s, min(s + batch_size, n))])
            out = model(x.to(device))
            if on_batch is not None:
                on_batch(len(y))
            logits = primary_output(out)
            y = y.to(device)
            if mode == "segmentation":
                k = logits.shape[1]
                pred = logits.argmax(1)
                valid = y != ignore_index
                idx = y[valid].long() * k + pred[valid]
                c = torch.bincount(idx, minlength=k * k).reshape(k, k).cpu()
                conf = c if conf is None else conf + c
                continue
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hit = top == y.view(-1, 1)
            correct1 += int(hit[:, 0].sum())
            correct5 += int(hit.any(1).sum())
            total += len(y)
    if mode == "segmentation":
        assert conf is not None
        inter = conf.diag().double()
        union = conf.sum(0).double() + conf.sum(1).double() - inter
        present = conf.sum(1) > 0
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
        return {
            "miou": float(iou[present].mean() * 100),
            "pixel_acc": float(inter.sum() / conf.sum().clamp(min=1) * 100),
            **{f"iou_{i}": float(v * 100) for i, v in enumerate(iou.tolist())},
        }
    return {"top1": 100.0 * correct1 / max(total, 1), "top5": 100.0 * correct5 / max(total, 1)}
