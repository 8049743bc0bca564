"""Pruned models are correct in every mode: random networks against an oracle.

For each network from :func:`random_nets.random_net` (seeded):

- pruning nothing (``ratio=0``) gives outputs bit-identical to the original;
- pruning (a random ratio, criterion and, with attention, head ratio) keeps every output's shape
  in eval and in train mode (where a training-only head adds an output);
- the oracle: the physically pruned model computes what the original computes with every removed
  channel zeroed in every tensor of its group (producer rows, norm terms, consumer columns), in
  eval and in train mode (batch statistics). Group norm averages over channels, so pruning it is
  not a masking; such networks get the first two checks only.

``make test`` tries 60 networks, ``CUTTREE_FUZZ=2`` (``make test-slow``) 700. Counts are printed
with ``-s``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from random_nets import random_net
from torch import nn

import cuttree
from cuttree.core.plan import PruningPlan

SCALE = int(os.environ.get("CUTTREE_FUZZ", "1"))
NETS = 60 if SCALE < 2 else 700
COUNTS: Counter[str] = Counter()


def _outputs(model: nn.Module, x: torch.Tensor, train: bool) -> list[torch.Tensor]:
    model = copy.deepcopy(model).train(train)  # a train-mode forward updates BN statistics: not the caller's
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, tuple) else [out]


def _masked(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """The original with each removed channel zeroed wherever its group lives."""
    masked = copy.deepcopy(model)
    state = masked.state_dict(keep_vars=True)
    with torch.no_grad():
        for g in plan.groups:
            gone = g.removed
            for m in g.members:
                idx = torch.as_tensor(m.positions[np.isin(m.channels, gone)], dtype=torch.long)
                if len(idx):
                    state[m.tensor].index_fill_(m.dim, idx, 0)
    return masked


@pytest.mark.parametrize("seed", range(NETS))
def test_random_network(seed: int) -> None:
    spec, net = random_net(seed)
    rng = random.Random(seed)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    example = (x[:1],)
    COUNTS["networks"] += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # groups kept whole are warned about; this test checks the outputs
        nothing = cuttree.prune(net, example, cuttree.Config(ratio=0.0, latency_runs=0))
        head_ratio = rng.choice([None, 0.5]) if "attn" in spec.blocks else None
        cfg = cuttree.Config(
            ratio=rng.uniform(0.2, 0.7), criterion=rng.choice(["l1", "l2"]), head_ratio=head_ratio, latency_runs=0
        )
        r = cuttree.prune(net, example, cfg)
    for train in (False, True):
        want = _outputs(net, x, train)
        assert all(torch.equal(a, b) for a, b in zip(want, _outputs(nothing.model, x, train), strict=True))
        got = _outputs(r.model, x, train)
        assert [t.shape for t in got] == [t.shape for t in want], (spec, train)
    removed = sum(len(g.removed) for g in r.plan.groups)
    COUNTS["channels removed"] += removed
    COUNTS["pruned"] += removed > 0
    COUNTS["with attention heads pruned"] += any(g.unit == "heads" and len(g.removed) for g in r.plan.groups)
    COUNTS["with a training-only head"] += "aux" in spec.blocks
    if spec.mixes_channels:
        COUNTS["shapes only (group norm)"] += 1
        return
    oracle = _masked(net, r.plan)
    for train in (False, True):
        for a, b in zip(_outputs(oracle, x, train), _outputs(r.model, x, train), strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=lambda m, t=train: f"{spec} train={t}: {m}")
    COUNTS["oracle checked"] += 1


def test_the_oracle_catches_a_wrong_surgery() -> None:
    """Masking the wrong channels (or none) must be told apart from the pruned model: the check can fail."""
    _, net = random_net(3)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    r = cuttree.prune(net, (x[:1],), cuttree.Config(ratio=0.5, latency_runs=0))
    g = next(g for g in r.plan.groups if len(g.removed))
    wrong = dataclasses.replace(g, keep=tuple(sorted({*g.keep} - {g.keep[0]} | {int(g.removed[0])})))
    plan = dataclasses.replace(r.plan, groups=tuple(wrong if h is g else h for h in r.plan.groups))
    pruned = _outputs(r.model, x, False)[0]
    assert not torch.allclose(_outputs(_masked(net, plan), x, False)[0], pruned, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(_outputs(net, x, False)[0], pruned, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(_outputs(_masked(net, r.plan), x, False)[0], pruned, atol=1e-5, rtol=1e-4)


def test_zz_print_the_counts(capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nrandom networks: {dict(COUNTS)}; 0 oracle mismatches, 0 shape changes, prune-nothing bit-identical")
    assert COUNTS["networks"] == NETS and COUNTS["pruned"] >= 0.8 * NETS
