"""Hugging Face transformers: the module rules of its attention (GPT-2's, GPTBigCode's, and the
common ``q_proj``/``k_proj``/``v_proj`` layout), GPT-2's transposed ``Conv1D`` and the fused
mixture-of-experts weights. Classes are recognised by module and name: nothing here imports
transformers.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Callable

from torch import nn

from cuttree.errors import SurgeryError
from cuttree.frontends.torch.attention import heads_of
from cuttree.frontends.torch.rules import ModuleRule, named_rule, scale_rms_weight


def linear_child(m: nn.Module, names: tuple[str, ...]) -> nn.Linear | None:
    """The first of ``m``'s children called one of ``names`` that is a ``nn.Linear``."""
    return next((c for n in names if isinstance(c := getattr(m, n, None), nn.Linear)), None)


def hf_projections(m: nn.Module) -> tuple[int | None, nn.Linear | None, nn.Linear | None]:
    """A Hugging Face attention module's head width and its query and key projections (each may be missing)."""
    width = next(
        (w for a in ("head_dim", "attention_head_size", "key_value_proj_dim") if (w := getattr(m, a, None))), None
    )
    q = linear_child(m, ("q_proj", "query", "q", "q_lin", "query_proj"))
    k = linear_child(m, ("k_proj", "key", "k", "k_lin", "key_proj"))
    return (int(width) if width else None), q, k


def _hf_patchable(m: nn.Module) -> bool:
    """A wrapper (``BertAttention``: no head width, no query projection; the self-attention inside
    it has the head counts), or a module with a head width and a query projection named as
    :func:`hf_projections` knows them. Others (DeepSeek-V4's low-rank ``q_a_proj``/``q_b_proj``)
    keep their heads whole."""
    width, q, _ = hf_projections(m)
    fused = linear_child(m, ("query_key_value",))
    return (width is None and q is None) or (width is not None and (q is not None or fused is not None))


def _hf(m: nn.Module) -> None:
    width, q, k = hf_projections(m)
    fused = linear_child(m, ("query_key_value",))  # q/k/v of every head in one projection (Persimmon)
    if width is None and q is None:
        return  # a wrapper (BertAttention): the self-attention inside it has the head counts
    proj, share = (q, 1) if q is not None else (fused, 3)  # the query heads' part of the projection
    if width is None or proj is None:  # _hf_patchable keeps such modules' heads whole
        raise SurgeryError(f"{type(m).__name__}: no query projection and head width to count heads from")
    heads = heads_of(proj.out_features // share, width, type(m).__name__)
    for attr in ("num_attention_heads", "num_heads", "n_heads", "n_head"):
        if hasattr(m, attr):
            setattr(m, attr, heads)
    for attr in ("all_head_size", "inner_dim", "embed_dim"):  # the heads' concatenated width (XGLM reshapes to it)
        if hasattr(m, attr):
            setattr(m, attr, heads * width)
    if k is not None:
        kv = heads_of(k.out_features, width, type(m).__name__)
        if hasattr(m, "num_key_value_heads"):
            setattr(m, "num_key_value_heads", kv)  # noqa: B010
        if hasattr(m, "num_key_value_groups"):  # each kv head keeps as many query heads as the others
            if heads % kv:
                raise SurgeryError(
                    f"{type(m).__name__}: {heads} query heads for {kv} key/value heads breaks its grouping"
                )
            setattr(m, "num_key_value_groups", heads // kv)  # noqa: B010


def _gpt2(m: nn.Module) -> None:
    """GPT-2's attention: one fused ``Conv1D`` (``[in, 3 · heads · width]``) split by ``split_size``."""
    c_attn, width = getattr(m, "c_attn"), int(getattr(m, "head_dim"))  # noqa: B009
    heads = heads_of(int(c_attn.weight.shape[1]) // 3, width, type(m).__name__)
    setattr(m, "num_heads", heads)  # noqa: B010
    setattr(m, "split_size", heads * width)  # noqa: B010


def _is_gpt2_attention(t: type) -> bool:
    return t.__module__ == "transformers.models.gpt2.modeling_gpt2" and t.__name__ == "GPT2Attention"


def _gpt_bigcode(m: nn.Module) -> None:
    """StarCoder's (GPTBigCode) self-attention: one fused ``c_attn`` holding ``heads · width`` query
    channels and, under multi-query attention, one key/value head (else q/k/v of every head),
    split by ``embed_dim`` and ``kv_dim``."""
    c_attn, width = getattr(m, "c_attn"), int(getattr(m, "head_dim"))  # noqa: B009
    if getattr(m, "multi_query"):  # noqa: B009
        heads, kv = heads_of(c_attn.out_features - 2 * width, width, type(m).__name__), 1
    else:
        heads = kv = heads_of(c_attn.out_features // 3, width, type(m).__name__)
    sizes = {"num_heads": heads, "embed_dim": heads * width, "kv_heads": kv, "kv_dim": kv * width}
    sizes["num_key_value_groups"] = heads // kv
    for attr, value in sizes.items():
        setattr(m, attr, value)


def _is_gpt_bigcode_attention(t: type) -> bool:
    return t.__module__.endswith(".modeling_gpt_bigcode") and t.__name__ == "GPTBigCodeAttention"


# before the generic Hugging Face rule below: the first named rule that matches wins
named_rule("transformers.GPT2Attention", _is_gpt2_attention, ModuleRule(heads=True, update=_gpt2))
named_rule("transformers.GPTBigCodeAttention", _is_gpt_bigcode_attention, ModuleRule(heads=True, update=_gpt_bigcode))


def _is_hf_attention(t: type) -> bool:
    return t.__module__.startswith("transformers.models.") and t.__name__.endswith("Attention")


named_rule("transformers.*Attention", _is_hf_attention, ModuleRule(heads=True, update=_hf, patchable=_hf_patchable))


def _hf_conv1d(m: nn.Module) -> None:
    """GPT-2's ``Conv1D``: a linear layer with its weight stored transposed (``[in, out]``) whose
    forward shapes its output with ``self.nf``."""
    nx, nf = getattr(m, "weight").shape  # noqa: B009
    setattr(m, "nx", int(nx))  # noqa: B010
    setattr(m, "nf", int(nf))  # noqa: B010


named_rule(
    "transformers.Conv1D",
    lambda t: t.__module__ == "transformers.pytorch_utils" and t.__name__ == "Conv1D",
    ModuleRule(out_dims={"weight": 1, "bias": 0}, producer=True, act_dim=-1, update=_hf_conv1d),
)


_UNIT_OFFSET = re.compile(r"\(?1(\.0)?\s*\+\s*self\.weight")


@functools.cache
def _rms_offset(t: type) -> float:
    """What a Hugging Face RMS norm adds to its weight before scaling: Gemma's (and others') scale
    by ``1 + weight``, the rest by ``weight``; read from the class's ``forward``."""
    try:
        source = inspect.getsource(t.forward)  # type: ignore[attr-defined]
    except (OSError, TypeError):
        return math.nan
    return 1.0 if _UNIT_OFFSET.search(source) else 0.0


def _is_hf_rms_norm(t: type) -> bool:
    """A Hugging Face ``…RMSNorm`` whose forward cuttree could read (its scale's offset known)."""
    return (
        t.__module__.startswith("transformers.models.")
        and t.__name__.endswith("RMSNorm")
        and not math.isnan(_rms_offset(t))
    )


def _hf_rms(m: nn.Module, s: float) -> None:
    cls: type = type(m)
    scale_rms_weight(m, s, _rms_offset(cls))


named_rule(
    "transformers.*RMSNorm",
    _is_hf_rms_norm,
    ModuleRule(out_dims={"weight": 0}, scale="weight", rms=_hf_rms),
)


def _hf_experts(m: nn.Module) -> None:
    """Hugging Face's fused mixture-of-experts weights (Mixtral, Qwen-MoE, …: ``gate_up_proj``
    ``[experts, 2 × intermediate, hidden]``, ``down_proj`` ``[experts, hidden, intermediate]``;
    other layouts too): the same intermediate positions go from every expert, since one tensor
    dim holds them all. Only the attribute that names the width needs updating."""
    down = getattr(m, "down_proj", None)
    if isinstance(down, nn.Parameter) and hasattr(m, "intermediate_dim"):
        setattr(m, "intermediate_dim", int(down.shape[-1]))  # noqa: B010


def _eager_experts(m: nn.Module) -> None:
    """Trace the experts' own loop of linear layers, not the fused kernel (``torch._grouped_mm``)
    their dispatching forward picks by default: same weights, ops the tracer follows."""
    eager = getattr(type(m).forward, "__wrapped__", None)
    if eager is not None:
        m.__class__ = type(f"{type(m).__name__}Eager", (type(m),), {"forward": eager})


@functools.cache  # asked for every module call while tracing; a class's layout never changes
def _hf_experts_layout(t: type) -> str | None:
    """``"gate_up_proj"`` or ``"up_proj"`` for a Hugging Face experts class whose weights hold the
    intermediate width in dim 1 (as its ``use_experts_implementation`` decorator records it), else
    ``None``: transposed layouts are not pruned."""
    if not (t.__module__.startswith("transformers.") and t.__name__.endswith("Experts")):
        return None
    try:
        flags = inspect.getclosurevars(t.__init__).nonlocals  # type: ignore[misc]
    except (TypeError, ValueError):
        return None
    if flags.get("is_transposed") is not False or "has_gate" not in flags:
        return None
    return "gate_up_proj" if flags["has_gate"] else "up_proj"


def _experts_with(layout: str) -> Callable[[type], bool]:
    return lambda t: _hf_experts_layout(t) == layout


for _layout in ("gate_up_proj", "up_proj"):
    named_rule(
        f"transformers.*Experts ({_layout})",
        _experts_with(_layout),
        ModuleRule(
            out_dims={_layout: 1, f"{_layout}_bias": 1},
            producer=True,
            update=_hf_experts,
            trace_as=_eager_experts,
        ),
    )
