"""Random convolutional networks for property tests: every coupling cuttree must trace, mixed.

:func:`random_net` draws a stack of blocks — conv-BN-ReLU, bias-only convs, depthwise, grouped
and strided convs, residual adds, concatenations, channel splits, squeeze-excite gates,
max-pooling, multi-head self-attention over the spatial positions, group norm, and a head that
runs only in training — and a classifier that either pools or flattens. The same seed gives the
same network.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = ("cbr", "conv", "dw", "grouped", "res", "cat", "split", "se", "pool", "down", "attn", "gn", "aux")


@dataclass
class Spec:
    seed: int
    blocks: list[str] = field(default_factory=list)
    flatten: bool = False

    @property
    def mixes_channels(self) -> bool:
        """Group norm averages over channels: pruning it changes what it computes (by design), so
        the masking oracle does not apply; shapes and prune-nothing still do."""
        return "gn" in self.blocks


def _cbr(i: int, o: int, k: int = 3, groups: int = 1, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(i, o, k, stride, padding=k // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(o), nn.ReLU())


class Block(nn.Module):
    """One drawn block: ``kind`` and the layers it needs, for ``c`` input channels."""

    def __init__(self, kind: str, c: int, rng: random.Random) -> None:
        super().__init__()
        self.kind = kind
        width = rng.choice([4, 6, 8, 12, 16])
        if kind == "cbr":
            self.f, self.out = _cbr(c, width), width
        elif kind == "conv":
            self.f, self.out = nn.Sequential(nn.Conv2d(c, width, 1), nn.ReLU()), width
        elif kind == "dw":
            self.f, self.out = _cbr(c, c, groups=c), c
        elif kind == "grouped":
            g = rng.choice([d for d in (2, 4) if c % d == 0] or [1])
            self.f, self.out = _cbr(c, g * rng.choice([2, 3, 4]), groups=g), 0
            self.out = self.f[0].out_channels
        elif kind == "res":
            self.f = nn.Sequential(_cbr(c, width), nn.Conv2d(width, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
            self.out = c
        elif kind == "cat":
            a, b = rng.choice([4, 8]), rng.choice([4, 6])
            self.f, self.g, self.out = _cbr(c, a), _cbr(c, b, k=1), a + b
        elif kind == "split":
            half = c // 2
            self.f, self.out = _cbr(half, width), width + (c - half)
        elif kind == "se":
            squeeze = max(2, c // 4)
            self.f = nn.Sequential(nn.Conv2d(c, squeeze, 1), nn.ReLU(), nn.Conv2d(squeeze, c, 1), nn.Sigmoid())
            self.out = c
        elif kind == "down":
            self.f, self.out = _cbr(c, width, stride=2), width
        elif kind == "pool":
            self.f, self.out = nn.MaxPool2d(2, ceil_mode=True), c
        elif kind == "attn":
            heads = rng.choice([h for h in (1, 2, 4) if c % h == 0])
            self.f, self.out = nn.MultiheadAttention(c, heads, batch_first=True), c
        elif kind == "gn":
            self.f, self.out = nn.GroupNorm(rng.choice([g for g in (1, 2) if c % g == 0]), c), c
        elif kind == "aux":
            self.f, self.out = nn.Linear(c, 3), c  # a training-only classifier on these features
        else:
            raise ValueError(kind)

    def forward(self, x: torch.Tensor, aux: list[torch.Tensor]) -> torch.Tensor:
        k = self.kind
        if k in ("cbr", "conv", "dw", "grouped", "pool", "down", "gn"):
            return self.f(x)  # type: ignore[no-any-return]
        if k == "res":
            return F.relu(x + self.f(x))
        if k == "cat":
            return torch.cat([self.f(x), self.g(x)], 1)
        if k == "split":
            a, b = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :]
            return torch.cat([self.f(a), b], 1)
        if k == "se":
            return x * self.f(F.adaptive_avg_pool2d(x, 1))
        if k == "attn":
            n, c, h, w = x.shape
            t = x.flatten(2).transpose(1, 2)
            y, _ = self.f(t, t, t, need_weights=False)
            return x + y.transpose(1, 2).reshape(n, c, h, w)
        if self.training:  # "aux"
            aux.append(self.f(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        return x


class RandomNet(nn.Module):
    def __init__(self, spec: Spec, rng: random.Random, size: int) -> None:
        super().__init__()
        c = 3
        blocks = []
        for kind in spec.blocks:
            if kind == "split" and c < 2:
                kind = "cbr"
            b = Block(kind, c, rng)
            blocks.append(b)
            c = b.out
            size = (size + 1) // 2 if kind in ("pool", "down") else size
        self.blocks = nn.ModuleList(blocks)
        self.flatten = spec.flatten
        self.head = nn.Linear(c * size * size if spec.flatten else c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        aux: list[torch.Tensor] = []
        for b in self.blocks:
            x = b(x, aux)
        out = self.head(x.flatten(1) if self.flatten else F.adaptive_avg_pool2d(x, 1).flatten(1))
        return (out, *aux) if aux else out


def random_net(seed: int, size: int = 8) -> tuple[Spec, nn.Module]:
    """A random network (eval mode) and its spec; inputs are ``(n, 3, size, size)``."""
    rng = random.Random(seed)
    spec = Spec(seed, flatten=rng.random() < 0.3)
    first = rng.choice(["cbr", "conv", "cbr", "grouped"])  # never a block that needs its input's channels
    spec.blocks = [first] + [rng.choice(BLOCKS) for _ in range(rng.randint(1, 6))]
    if spec.blocks.count("aux") > 1:  # one training-only head
        spec.blocks = [b for i, b in enumerate(spec.blocks) if b != "aux" or i == spec.blocks.index("aux")]
    torch.manual_seed(seed)
    net = RandomNet(spec, rng, size)
    with torch.no_grad():  # BN statistics and affine terms that are not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return spec, net.eval()
