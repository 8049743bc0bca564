"""The layer rules for Keras's ``MultiHeadAttention`` and ``GroupedQueryAttention``: whole heads
are their pruning unit.

Their kernels keep the heads as a dimension of their own: query, key and value are
``(in, heads, key_dim or value_dim)`` with biases ``(heads, width)``, the output projection is
``(heads, value_dim, out)``. One head is one unit (a fresh ``"heads"`` label unified across the
four kernels and three biases); the head width stays. In ``GroupedQueryAttention`` each key/value
head serves ``num_query_heads / num_key_value_heads`` consecutive query heads (``ops.repeat``), so
there are two units, as in the torch frontend: a key/value head with its query heads, and (in the
second walk, ``group_width``) the same positions among every key/value head's query heads
(``"query heads"``), so each kv head keeps as many query heads as the others; with one
key/value head (multi-query attention) the unit is a query head, and the key/value head stays.
The query, key and value inputs' channels follow the kernels' first dimension, and without ``output_shape`` the
output has the query's channels (Keras sizes the output projection from the query), so the
residual stream of a transformer block is one group through the attention. A configuration
these rules do not read (inputs other than ``(batch, tokens, channels)``, attention over other
axes, the gated variant) keeps every channel the layer touches, with a warning naming it.

Registered into :data:`cuttree.frontends.keras.rules.base.LAYER_RULES` on import.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers as L

from cuttree.core.labels import Label, Pin
from cuttree.frontends.keras.rules.base import Labels, Shapes, _index, _pin_all, layer_rule
from cuttree.frontends.keras.tracer import Call, Tracer, add_macs, prod


def _heads_update(cfg: dict[str, Any], layer: Any, new: list[np.ndarray], shapes: Shapes) -> None:
    query = int(new[_index(layer, layer._query_dense.kernel)].shape[1])  # (in, heads, width)
    if "num_key_value_heads" in cfg:  # GroupedQueryAttention
        cfg["num_query_heads"] = query
        cfg["num_key_value_heads"] = int(new[_index(layer, layer._key_dense.kernel)].shape[1])
    else:
        cfg["num_heads"] = query
    if cfg.get("output_shape") is not None:  # an explicit output width follows the output projection
        width = int(new[_index(layer, layer._output_dense.kernel)].shape[-1])
        cfg["output_shape"] = width if isinstance(cfg["output_shape"], int) else [width]


def _sizes(layer: Any) -> tuple[int, int, int, int]:
    """Query heads, key/value heads, key width, value width."""
    if hasattr(layer, "num_key_value_heads"):  # GroupedQueryAttention
        dim = int(layer.head_dim)
        return int(layer.num_query_heads), int(layer.num_key_value_heads), dim, dim
    dk = int(layer.key_dim)
    return int(layer.num_heads), int(layer.num_heads), dk, int(layer.value_dim or dk)


def _qkv(call: Call) -> dict[str, tuple[tuple[int, ...], Labels]]:
    """The query, value and key inputs (shape, labels), passed by position or by name; the key
    defaults to the value. Masks given by name are left out: they carry no channels."""
    named = {k: v for k, v in sorted(call.kwargs.items()) if isinstance(v, keras.KerasTensor)}
    n_pos = len(call.in_labels) - len(keras.tree.flatten(list(named.values())))
    inputs = list(zip(call.in_shapes, call.in_labels, strict=True))
    out = dict(zip(("query", "value", "key"), inputs[:n_pos], strict=False))
    flat_named = iter(inputs[n_pos:])
    for k in named:  # keras.tree.flatten walks a dict in sorted key order, as the tracer did
        out.setdefault(k, next(flat_named))
    if "value" in out:
        out.setdefault("key", out["value"])
    return out


def _plain(layer: Any, call: Call, qkv: dict[str, tuple[tuple[int, ...], Labels]]) -> bool:
    """Whether the layer is the configuration the rule reads (see the module docstring)."""
    axes = getattr(layer, "_attention_axes", None)
    return (
        all(n in qkv and len(qkv[n][0]) == 3 for n in ("query", "value", "key"))
        and tuple(axes or (1,)) == (1,)
        and not (getattr(layer, "_use_gate", False) or getattr(layer, "use_gate", False))
        and len(call.out_shapes) == 1
    )


@layer_rule(
    L.MultiHeadAttention,
    L.GroupQueryAttention,
    out_dims={"_output_dense.kernel": 2, "_output_dense.bias": 0},
    update=_heads_update,
)
def attention(tr: Tracer, call: Call) -> list[Labels]:
    layer = call.layer
    qkv = _qkv(call)
    qs = qkv["query"][0] if "query" in qkv else call.in_shapes[0]
    vs = qkv["value"][0] if "value" in qkv else qs
    ks = qkv["key"][0] if "key" in qkv else vs
    h, h_kv, dk, dv = _sizes(layer)
    t, s, n_out = prod(qs[1:-1]), prod(vs[1:-1]), call.out_shapes[0][-1]
    macs = [
        t * qs[-1] * h * dk,
        s * ks[-1] * h_kv * dk,
        s * vs[-1] * h_kv * dv,
        h * t * s * (dk + dv),
        t * h * dv * n_out,
    ]
    if not _plain(layer, call, qkv):
        tr.whole[call.path] = type(layer).__name__
        add_macs(tr, qs[0] * sum(macs))
        return _pin_all(tr, call)
    q, v, k = (qkv[n][1] for n in ("query", "value", "key"))
    kv_heads: Label
    if h_kv == 1 < h:  # multi-query: every query head reads the one key/value head, which stays
        query_heads = unit = tr.state.fresh_unit(h, "heads")
        kv_heads = None
    elif h_kv < h and tr.group_width:  # the same query heads of every key/value head (kv heads: the first walk)
        kv_heads = tr.state.fresh_unit(h_kv, "heads")
        query_heads = unit = np.tile(tr.state.fresh_unit(h // h_kv, "query heads"), h_kv)
    else:
        kv_heads = unit = tr.state.fresh_unit(h_kv, "heads")
        query_heads = np.repeat(kv_heads, h // h_kv)  # each key/value head's query heads, consecutive
        tr.grouped_heads |= h_kv < h
    if call.path in tr.pinned_out:  # ``ignore``: its heads stay as well as its outputs
        tr.state.pin(unit, Pin.IGNORED)
    heads = {"q": query_heads, "k": kv_heads, "v": kv_heads, "o": query_heads}
    dense = {"q": layer._query_dense, "k": layer._key_dense, "v": layer._value_dense, "o": layer._output_dense}
    kernel = {n: tr.w(d.kernel) for n, d in dense.items()}
    for n, x in (("q", q), ("k", k), ("v", v)):
        tr.state.unify(x[-1], kernel[n][0])
        tr.state.unify(kernel[n][1], heads[n])
        tr.state.pin(kernel[n][2], Pin.FIXED)  # the head width stays
        if layer.use_bias:
            b = tr.w(dense[n].bias)
            tr.state.unify(b[0], heads[n])
            tr.state.pin(b[1], Pin.FIXED)
    tr.state.unify(kernel["o"][0], heads["o"])
    tr.state.pin(kernel["o"][1], Pin.FIXED)
    out: Label = kernel["o"][2]
    if layer.use_bias:
        tr.state.unify(out, tr.w(dense["o"].bias)[0])
    if getattr(layer, "_output_shape", None) is None:  # Keras sizes the output projection from the query
        tr.state.unify(out, q[-1])
    batch = qs[0]
    add_macs(tr, batch * macs[0], kernel["q"][0], query_heads)
    add_macs(tr, batch * macs[1], kernel["k"][0], kv_heads)
    add_macs(tr, batch * macs[2], kernel["v"][0], kv_heads)
    # per query head, in both walks: their MAC factors pair up position by position
    add_macs(tr, batch * macs[3], query_heads)  # QKᵀ and the weighted sum of V
    add_macs(tr, batch * macs[4], query_heads, out)
    return [(*q[:-1], out)]
