"""One lookup table: per module type, its own (output) channel dims and the attributes to update.

The tracer finds *which* dims are coupled from the ops that run; this table only says, for a
module type, (a) which dims of its tensors are the module's own output channels (for naming
groups and for ``ignore``), (b) whether it is a producer (a conv or linear layer, the natural
name of a group), and (c) how to bring its attributes in line with its tensors after surgery.
Types are looked up along the MRO, so subclasses (torchvision's ``LayerNorm2d``) are covered.

>>> from torch import nn
>>> rule_for_module(nn.Conv2d(3, 8, 3)).out_dims
{'weight': 0, 'bias': 0}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from cuttree.core.registry import Registry


def _no_update(m: nn.Module) -> None:
    """Modules whose forward reads only their tensors' shapes need no attribute update."""


@dataclass(frozen=True)
class ModuleRule:
    """How one module type relates to channels."""

    out_dims: Mapping[str, int] = field(default_factory=dict)
    producer: bool = False
    frozen: bool = False
    scale: str | None = None  # a norm layer's γ, for the bn_scale criterion
    act_dim: int = 1  # the channel dim of the module's output (producers)
    update: Callable[[nn.Module], None] = _no_update
    heads: bool = False  # an attention module: reshapes inside it may split channels into heads (cuttree.frontends.torch.attention)
    # Whether ``update`` can patch this instance's head counts (its projections have names it
    # knows); an attention module it cannot patch keeps its heads whole (see :func:`counts_heads`).
    patchable: Callable[[nn.Module], bool] = lambda m: True
    # Before a trace: put the module in the form the tracer must see (its twin class, a cleared
    # cache); cuttree.frontends.torch.attention.traceable restores the class afterwards.
    trace_as: Callable[[nn.Module], None] | None = None
    # An RMS norm over its channel dim (LLaMA's): inside its forward the mean of squares over the
    # last dim does not pin the channels, and after surgery ``rms(m, s)`` multiplies its scale by
    # ``s = √(d / d_kept)``, so the statistic of the channels left equals the full one's when the
    # removed channels are zero (exact up to ``eps``). A norm without a scale stays pinned.
    rms: Callable[[nn.Module, float], None] | None = None


MODULE_RULES: Registry[type[nn.Module], ModuleRule] = Registry("module rule")
# Rules for classes of libraries cuttree does not import (timm, transformers), found by a test of
# the type; keyed by a name, so a second rule under one name warns rather than hiding the first.
NAMED_RULES: Registry[str, tuple[Callable[[type], bool], ModuleRule]] = Registry("named module rule")
_DEFAULT = ModuleRule()


def named_rule(name: str, test: Callable[[type], bool], rule: ModuleRule) -> None:
    """Use ``rule`` for every module type for which ``test(type)`` holds (checked along the MRO),
    registered as ``name`` (the library and class it is for: ``"transformers.Conv1D"``)."""
    NAMED_RULES.register(name, (test, rule))


def module_rule(
    *types: type[nn.Module], **kwargs: object
) -> Callable[[Callable[[nn.Module], None]], Callable[[nn.Module], None]]:
    """Register the decorated attribute updater (and the rule's fields) for module types."""

    def make(fn: Callable[[nn.Module], None]) -> ModuleRule:
        return ModuleRule(update=fn, **kwargs)  # type: ignore[arg-type]

    return MODULE_RULES.decorator(*types, make=make)


def rule_for_module(m: nn.Module) -> ModuleRule:
    """The rule of ``m``'s type or its nearest registered base class."""
    for t in type(m).__mro__:
        rule = MODULE_RULES.get(t)
        if rule is not None:
            return rule
        for test, named in NAMED_RULES.values():
            if test(t):
                return named
    return _DEFAULT


def counts_heads(m: nn.Module) -> bool:
    """Whether ``m`` is an attention module whose heads cuttree prunes: its rule has ``heads`` and
    can patch this instance's head counts."""
    rule = rule_for_module(m)
    return rule.heads and rule.patchable(m)


@module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, out_dims={"weight": 0, "bias": 0}, producer=True)
def _conv(m: nn.Module) -> None:
    assert isinstance(m, nn.modules.conv._ConvNd)
    old_groups, old_out = m.groups, m.out_channels
    out = m.weight.shape[0]
    if old_groups > 1:  # depthwise (channel multiplier out/in) or grouped: whole groups went
        m.groups = out // (old_out // old_groups)
    m.in_channels = m.weight.shape[1] * m.groups
    m.out_channels = out


@module_rule(
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, out_dims={"weight": 1, "bias": 0}, producer=True
)
def _conv_transpose(m: nn.Module) -> None:
    assert isinstance(m, nn.modules.conv._ConvTransposeNd)
    old_groups, old_in = m.groups, m.in_channels
    m.in_channels = m.weight.shape[0]
    if old_groups > 1 and old_groups == old_in:
        m.groups = m.in_channels
    m.out_channels = m.weight.shape[1] * m.groups


@module_rule(nn.Linear, out_dims={"weight": 0, "bias": 0}, producer=True, act_dim=-1)
def _linear(m: nn.Module) -> None:
    assert isinstance(m, nn.Linear)
    m.out_features, m.in_features = m.weight.shape


_NORM_DIMS = {"weight": 0, "bias": 0, "running_mean": 0, "running_var": 0}


@module_rule(nn.modules.batchnorm._NormBase, out_dims=_NORM_DIMS, scale="weight")
def _batch_norm(m: nn.Module) -> None:
    assert isinstance(m, nn.modules.batchnorm._NormBase)
    t = m.weight if m.weight is not None else m.running_mean
    if t is not None:
        m.num_features = t.shape[0]


@module_rule(nn.LayerNorm, out_dims={"weight": 0, "bias": 0}, scale="weight")
def _layer_norm(m: nn.Module) -> None:
    assert isinstance(m, nn.LayerNorm)
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


def scale_rms_weight(m: nn.Module, s: float, offset: float = 0.0) -> None:
    """Multiply an RMS norm's effective scale ``offset + weight`` by ``s`` (Gemma's norms scale by
    ``1 + weight``: ``offset`` 1)."""
    w = getattr(m, "weight")  # noqa: B009
    with torch.no_grad():
        w.copy_((w + offset) * s - offset)


def is_rms_norm(m: nn.Module) -> bool:
    """Whether ``m`` is an RMS norm with a scale whose channels cuttree prunes (see ``ModuleRule.rms``)."""
    return rule_for_module(m).rms is not None and isinstance(getattr(m, "weight", None), torch.Tensor)


@module_rule(nn.RMSNorm, out_dims={"weight": 0}, scale="weight", rms=scale_rms_weight)
def _rms_norm(m: nn.Module) -> None:
    assert isinstance(m, nn.RMSNorm)
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


@module_rule(nn.GroupNorm, out_dims={"weight": 0, "bias": 0}, scale="weight")
def _group_norm(m: nn.Module) -> None:
    assert isinstance(m, nn.GroupNorm)
    if m.weight is not None:
        if m.num_groups > 1:  # whole groups went: each keeps its size
            m.num_groups = m.weight.shape[0] // (m.num_channels // m.num_groups)
        m.num_channels = m.weight.shape[0]


@module_rule(nn.PReLU, out_dims={"weight": 0})
def _prelu(m: nn.Module) -> None:
    assert isinstance(m, nn.PReLU)
    m.num_parameters = m.weight.numel()


@module_rule(nn.Embedding, out_dims={"weight": 1})
def _embedding(m: nn.Module) -> None:
    assert isinstance(m, nn.Embedding)
    m.embedding_dim = m.weight.shape[1]
