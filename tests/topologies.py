"""A registry of small models, one per topology a dependency graph must get right."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cuttree.models import resnet20

Zoo = dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]]
TOPOLOGIES: Zoo = {}


def topology(
    fn: Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]],
) -> Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    TOPOLOGIES[fn.__name__] = fn
    return fn


def cbr(i: int, o: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU())


def img(c: int = 3, s: int = 16, n: int = 2) -> tuple[torch.Tensor, ...]:
    return (torch.randn(n, c, s, s),)


class Head(nn.Module):
    def __init__(self, c: int, k: int = 5) -> None:
        super().__init__()
        self.fc = nn.Linear(c, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.a = nn.Sequential(cbr(16, 12), nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.b = nn.Sequential(cbr(16, 12), nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.a(x))
        x = F.relu(x + self.b(x))
        return self.head(x)


@topology
def residual() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return Residual(), img()


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(3, 12)
        self.c = cbr(20, 16, 1)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c(torch.cat([self.a(x), self.b(x)], 1)))


@topology
def concat() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return Concat(), img()


class SplitShuffle(nn.Module):
    """ShuffleNet-style unit: chunk, branch, concat, channel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.branch = nn.Sequential(cbr(8, 8, 1), cbr(8, 8, 3, g=8), cbr(8, 8, 1))
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(y)


@topology
def split_shuffle() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return SplitShuffle(), img()


@topology
def depthwise_grouped() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    m = nn.Sequential(cbr(3, 16), cbr(16, 16, 3, g=16), cbr(16, 32, 1), cbr(32, 32, 3, g=4), cbr(32, 16, 1), Head(16))
    return m, img()


class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


@topology
def squeeze_excite() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return nn.Sequential(cbr(3, 16), SE(16), cbr(16, 16), SE(16), Head(16)), img()


class Attention(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(12, d)
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.out = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        y = self.norm(h)
        h = h + self.attn(y, y, y, need_weights=False)[0]
        h = h + self.mlp(h)
        return self.out(h.mean(1))


@topology
def attention() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return Attention(), (torch.randn(2, 7, 12),)


class Shared(nn.Module):
    """One conv module used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.shared = cbr(16, 16)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shared(self.shared(self.stem(x))))


@topology
def shared_module() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return Shared(), img()


class TwoInOut(nn.Module):
    """Two inputs, a dict of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(1, 16)
        self.mid = cbr(16, 24)
        self.cls, self.seg = Head(24, 4), nn.Conv2d(24, 3, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.mid(self.a(x) + self.b(y))
        return {"cls": self.cls(h), "seg": self.seg(h)}


@topology
def multi_io() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return TwoInOut(), (torch.randn(2, 3, 16, 16), torch.randn(2, 1, 16, 16))


class Flatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(cbr(3, 8), nn.MaxPool2d(4))
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(torch.flatten(self.f(x), 1))))


@topology
def flatten_linear() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return Flatten(), img()


class ChannelsLast(nn.Module):
    """Linear layers on (N, H, W, C) tokens, then the pool of an NCHW view: torchvision Swin's head.
    The pool restrides its output in place (``as_strided_``), which must not pin the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 16)  # the only prunable group
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.embed(x.permute(0, 2, 3, 1)))
        return self.fc(F.adaptive_avg_pool2d(h.permute(0, 3, 1, 2), 1).flatten(1))


@topology
def channels_last_pool() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return ChannelsLast(), img()


class EncDec(nn.Module):
    """Encoder–decoder with a transposed conv, a skip concat, pooling indices and GroupNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = cbr(3, 16)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.mid = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(1, 16), nn.PReLU(16))
        self.unpool = nn.MaxUnpool2d(2)
        self.up = nn.ConvTranspose2d(16, 8, 3, padding=1)
        self.dec = cbr(24, 8)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        p, idx = self.pool(e)
        u = self.up(self.unpool(self.mid(p), idx))
        return self.out(self.dec(torch.cat([u, e], 1)))


@topology
def encoder_decoder() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return EncDec(), img()


@topology
def cifar_resnet_option_a() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return resnet20(), (torch.randn(2, 3, 32, 32),)
