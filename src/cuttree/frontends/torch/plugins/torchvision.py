"""torchvision's model families: the module rules of its VisionTransformer and of its window
attention (Swin, MaxViT), which runs as a twin (:mod:`cuttree.frontends.torch.plugins.torchvision_swin`,
which imports torchvision) only when a model holds one. Nothing here imports torchvision.
"""

from __future__ import annotations

from types import ModuleType

from torch import nn

from cuttree.frontends.torch.rules import ModuleRule, named_rule


def _torchvision_vit(m: nn.Module) -> None:
    """torchvision's VisionTransformer reshapes its patch embedding with ``self.hidden_dim``."""
    setattr(m, "hidden_dim", int(getattr(m, "conv_proj").weight.shape[0]))  # noqa: B009, B010


named_rule(
    "torchvision.VisionTransformer",
    lambda t: t.__module__ == "torchvision.models.vision_transformer" and t.__name__ == "VisionTransformer",
    ModuleRule(update=_torchvision_vit),
)

_TORCHVISION_WINDOWS = {
    ("torchvision.models.swin_transformer", "ShiftedWindowAttention"),
    ("torchvision.models.swin_transformer", "ShiftedWindowAttentionV2"),
    ("torchvision.models.maxvit", "RelativePositionalMultiHeadAttention"),
}


def _is_torchvision_window(t: type) -> bool:
    return (t.__module__, t.__name__) in _TORCHVISION_WINDOWS


def _torchvision_window(m: nn.Module) -> None:
    _vision().update(m)


def _vision() -> ModuleType:
    from cuttree.frontends.torch.plugins import torchvision_swin as attention_vision

    return attention_vision


named_rule(
    "torchvision.ShiftedWindowAttention",
    _is_torchvision_window,
    ModuleRule(heads=True, update=_torchvision_window, trace_as=lambda m: _vision().swapped(m)),
)
