"""Example inputs as users write them: a bare tensor is one input; other shapes get a one-line error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cuttree


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))


@pytest.mark.parametrize("form", ["tensor", "tuple", "list"])
def test_a_tensor_a_tuple_and_a_list_are_the_same_inputs(form: str) -> None:
    x = torch.randn(2, 3, 8, 8)
    given = {"tensor": x, "tuple": (x,), "list": [x]}[form]
    cfg = cuttree.Config(ratio=0.5, latency_runs=0)
    r = cuttree.prune(net(), given, cfg)  # type: ignore[arg-type]
    plan, _ = cuttree.make_plan(net(), given, cfg)  # type: ignore[arg-type]
    m = cuttree.measure(net(), given, 0)  # type: ignore[arg-type]
    assert r.model[0].out_channels == 4 and len(plan.groups) == 1 and m.macs == cuttree.measure(net(), (x,), 0).macs
    assert m.batch_size == 2


@pytest.mark.parametrize(
    ("given", "expect"),
    [
        ({"x": torch.zeros(1, 3, 8, 8)}, "example inputs given as a dict"),
        (3, "example inputs must be a tensor or a tuple of inputs, got int"),
        ("1,3,8,8", "got str"),
    ],
)
def test_other_forms_are_one_line_errors(given: object, expect: str) -> None:
    with pytest.raises(TypeError, match=expect) as e:
        cuttree.prune(net(), given, cuttree.Config(ratio=0.5))  # type: ignore[arg-type]
    assert "\n" not in str(e.value)
