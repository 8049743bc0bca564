"""torchvision's window and grid attention (Swin, Swin V2, MaxViT) written so that heads can go.

torchvision computes these with the *residual* width: Swin splits its qkv projection into
``(3, heads, C // heads)`` where ``C`` is the block's input width, and MaxViT reshapes the
attention output back with the input width. Removing heads (or embedding channels) breaks that
equality, so a stock module could only lose heads together with exactly as many embedding
channels. Each class here is a twin of torchvision's: the same parameters and state-dict keys,
the same computation (tested against the stock forward), but with the head width as its own
attribute, so that ``heads × head width`` may differ from the input width. cuttree traces the
stock modules as their twins (:func:`cuttree.frontends.torch.attention.traceable`) and swaps a pruned module to
its twin after surgery; its head count is read back from the per-head tensors.

This module imports torchvision; :mod:`cuttree.frontends.torch.attention` loads it only for models that hold one
of these modules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2


def _shift_mask(x: torch.Tensor, padded: tuple[int, int], window: list[int], shift: list[int]) -> torch.Tensor:
    """The additive mask of a shifted window: −100 between tokens that came from different regions."""
    region = x.new_zeros(padded)
    bands = [((0, -w), (-w, -s), (-s, None)) for w, s in zip(window, shift, strict=True)]
    for i, (h0, h1) in enumerate(bands[0]):
        for j, (w0, w1) in enumerate(bands[1]):
            region[h0:h1, w0:w1] = 3 * i + j
    region = region.view(padded[0] // window[0], window[0], padded[1] // window[1], window[1])
    region = region.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    diff = region.unsqueeze(1) - region.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def _window_attention(m: ShiftedWindowAttention, x: torch.Tensor, logit_scale: torch.Tensor | None) -> torch.Tensor:
    """torchvision's ``shifted_window_attention`` with ``m.num_heads`` heads of ``m.head_dim`` each."""
    heads, width = m.num_heads, int(m.head_dim)
    b, h, w, c = x.shape
    win = list(m.window_size)
    pad_r, pad_b = (win[1] - w % win[1]) % win[1], (win[0] - h % win[0]) % win[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    ph, pw = x.shape[1], x.shape[2]
    shift = [0 if win[0] >= ph else m.shift_size[0], 0 if win[1] >= pw else m.shift_size[1]]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    n_win = (ph // win[0]) * (pw // win[1])
    x = x.view(b, ph // win[0], win[0], pw // win[1], win[1], c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b * n_win, win[0] * win[1], c)
    tokens = x.shape[1]

    bias = m.qkv.bias
    if logit_scale is not None and bias is not None:  # Swin V2 keeps the key bias at zero
        bias = (bias.view(3, heads, width) * bias.new_tensor([1.0, 0.0, 1.0]).view(3, 1, 1)).reshape(-1)
    qkv = F.linear(x, m.qkv.weight, bias).reshape(x.shape[0], tokens, 3, heads, width).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if logit_scale is not None:  # cosine attention
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * width**-0.5) @ k.transpose(-2, -1)
    attn = attn + m.get_relative_position_bias()
    if sum(shift) > 0:
        mask = _shift_mask(x, (ph, pw), win, shift)
        attn = attn.view(x.shape[0] // n_win, n_win, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, tokens, tokens)
    attn = F.dropout(F.softmax(attn, dim=-1), p=m.attention_dropout, training=m.training)
    x = (attn @ v).transpose(1, 2).reshape(x.shape[0], tokens, heads * width)
    x = F.dropout(F.linear(x, m.proj.weight, m.proj.bias), p=m.dropout, training=m.training)
    c = x.shape[-1]
    x = x.view(b, ph // win[0], pw // win[1], win[0], win[1], c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


class PrunableShiftedWindowAttention(ShiftedWindowAttention):
    """torchvision's Swin window attention whose heads × head width may differ from its width.

    >>> from torchvision.models.swin_transformer import ShiftedWindowAttention
    >>> m = ShiftedWindowAttention(8, [2, 2], [1, 1], num_heads=2).eval()
    >>> x = torch.randn(1, 4, 4, 8)
    >>> want = m(x)
    >>> bool(torch.allclose(swapped(m)(x), want, atol=1e-6))
    True
    """

    head_dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _window_attention(self, x, None)


class PrunableShiftedWindowAttentionV2(ShiftedWindowAttentionV2):
    """torchvision's Swin V2 window attention (cosine, continuous position bias), prunable heads."""

    head_dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _window_attention(self, x, self.logit_scale)


class PrunableRelativePositionalMultiHeadAttention(RelativePositionalMultiHeadAttention):
    """torchvision's MaxViT block and grid attention, its output width ``heads × head_dim``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p, _ = x.shape
        heads, width = self.n_heads, self.head_dim
        qkv = self.to_qkv(x).reshape(b, g, p, 3, heads, width).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = q @ (k * self.scale_factor).transpose(-2, -1)
        attn = F.softmax(attn + self.get_relative_positional_bias(), dim=-1)
        out = (attn @ v).permute(0, 1, 3, 2, 4).reshape(b, g, p, heads * width)
        return self.merge(out)


TWINS: dict[type[nn.Module], type[nn.Module]] = {
    ShiftedWindowAttention: PrunableShiftedWindowAttention,
    ShiftedWindowAttentionV2: PrunableShiftedWindowAttentionV2,
    RelativePositionalMultiHeadAttention: PrunableRelativePositionalMultiHeadAttention,
}


def heads_of(m: nn.Module) -> int:
    """The head count the module's per-head tensors say (its relative-position table or logit scale)."""
    if isinstance(m, ShiftedWindowAttentionV2):
        return int(m.logit_scale.shape[0])
    table = m.relative_position_bias_table
    assert isinstance(table, torch.Tensor)
    return int(table.shape[1])


def swapped(m: nn.Module) -> nn.Module:
    """``m`` turned into its twin in place (same tensors), head width recorded; twins unchanged."""
    twin = TWINS.get(type(m))
    if twin is not None:
        if isinstance(m, ShiftedWindowAttention):
            setattr(m, "head_dim", int(m.qkv.weight.shape[0]) // 3 // heads_of(m))  # noqa: B010
        m.__class__ = twin
    return m


def update(m: nn.Module) -> None:
    """After surgery: the twin's class, and head counts read back from the per-head tensors."""
    from cuttree.errors import SurgeryError

    heads = heads_of(m)
    qkv = m.qkv if isinstance(m, ShiftedWindowAttention) else m.to_qkv
    assert isinstance(qkv, nn.Linear)
    if isinstance(m, ShiftedWindowAttention):
        width = int(qkv.weight.shape[0]) // 3 // heads
        setattr(m, "head_dim", width)  # noqa: B010
        m.num_heads = heads
    else:
        width = int(getattr(m, "head_dim"))  # noqa: B009 - its width is never pruned
        setattr(m, "n_heads", heads)  # noqa: B010
    if qkv.weight.shape[0] != 3 * heads * width:
        raise SurgeryError(f"{type(m).__name__}: {qkv.weight.shape[0]} qkv channels are not 3 × {heads} heads")
    swapped(m)


__all__ = [
    "PrunableRelativePositionalMultiHeadAttention",
    "PrunableShiftedWindowAttention",
    "PrunableShiftedWindowAttentionV2",
    "swapped",
    "update",
]
