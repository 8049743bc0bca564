"""Measure a model: parameters, MACs, size on disk, latency.

MACs come from ``torch.utils.flop_counter`` (FLOPs / 2; convolutions, matrix products and
attention, as that counter counts them). Size on disk is the byte length of the model's
safetensors file. Latency is the median wall time of ``runs`` forward passes after
``warmup`` passes, in eval mode without gradients, on the inputs' device.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cuttree._util import eval_mode


@dataclass(frozen=True)
class Measurements:
    """One model's figures; ``latency_ms`` is ``None`` when it was not measured."""

    params: int
    macs: int
    size_bytes: int
    latency_ms: float | None
    batch_size: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    """Distinct parameters' element count (a shared parameter counts once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: Sequence[Any]) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs``."""
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*example_inputs)
    return int(counter.get_total_flops()) // 2


def size_on_disk(model: nn.Module) -> int:
    """Bytes of the model's weights as a safetensors file."""
    from safetensors.torch import save

    return len(save(state_dict_for_save(model)))


def state_dict_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict, contiguous and with shared tensors stored once (safetensors forbids aliasing)."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for k, v in model.state_dict().items():
        key = v.untyped_storage().data_ptr() if v.numel() else id(v)
        if key in seen and v.numel():
            continue
        seen[key] = k
        out[k] = v.detach().contiguous()
    return out


def latency_ms(model: nn.Module, example_inputs: Sequence[Any], runs: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of a forward pass."""
    times = []
    with eval_mode(model), torch.inference_mode():
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            model(*example_inputs)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def measure(model: nn.Module, example_inputs: Sequence[Any], latency_runs: int = 10) -> Measurements:
    """All figures for ``model`` on ``example_inputs`` (latency skipped when ``latency_runs`` is 0).

    >>> import torch
    >>> m = measure(torch.nn.Linear(4, 2), (torch.zeros(3, 4),), latency_runs=0)
    >>> (m.params, m.macs)
    (10, 24)
    """
    first = next((x for x in example_inputs if isinstance(x, torch.Tensor)), None)
    return Measurements(
        params=count_params(model),
        macs=count_macs(model, example_inputs),
        size_bytes=size_on_disk(model),
        latency_ms=latency_ms(model, example_inputs, latency_runs) if latency_runs > 0 else None,
        batch_size=int(first.shape[0]) if first is not None and first.dim() else 1,
        threads=torch.get_num_threads(),
    )
