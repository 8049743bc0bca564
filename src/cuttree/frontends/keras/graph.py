"""Walk a Keras model's graph once, symbolically, and label its channels.

Functional and Sequential models are graphs of layer calls (``model._nodes_by_depth``); a model
used as a layer (the original design's ``base_model(inputs)``) is walked into, so its layers are
traced and pruned like the outer ones. Each call's output shapes are computed with
``compute_output_spec`` on shapes with batch 1 (no weights are read and nothing runs), and the
layer's rule (:mod:`cuttree.frontends.keras.rules`) says how channel labels flow. The result is
the same :class:`~cuttree.core.grouping.DependencyGraph` the torch frontend builds.

Names: a layer's *path* is its name, prefixed by the names of the models it is nested in
(``vgg16/block1_conv1``); a weight's name is ``path/variable`` (``vgg16/block1_conv1/kernel``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import keras

from cuttree.core.grouping import DependencyGraph, Role, group_channels, with_width_groups
from cuttree.core.labels import Label, Pin
from cuttree.errors import TraceError, warn
from cuttree.frontends.keras.rules import rule_for
from cuttree.frontends.keras.tracer import Call, Tracer, pin_through

_AUTO = re.compile(r"variable(_\d+)?")


def weight_names(layer: Any, path: str) -> list[str]:
    """``path/name`` for each of ``layer.weights`` (``path/sublayer/name`` for a sublayer's, as in
    MultiHeadAttention's ``query/kernel``); unnamed (``variable_17``) or repeated names become
    ``path/weight_i``, so names do not depend on how many variables Keras made before."""
    out: list[str] = []
    for i, v in enumerate(getattr(layer, "weights", [])):
        base = v.name if not _AUTO.fullmatch(v.name) else f"weight_{i}"
        inner = str(getattr(v, "path", "")).removeprefix(f"{layer.name}/")
        if inner.count("/") == 1 and inner.endswith(f"/{base}"):  # a sublayer's: query/kernel
            base = inner
        name = f"{path}/{base}"
        out.append(name if name not in out else f"{path}/weight_{i}")
    return out


def is_graph_model(m: Any) -> bool:
    """Functional models and (built) Sequential models have a graph cuttree can walk."""
    return isinstance(m, keras.Model) and _graph(m) is not None


def _graph(m: Any) -> Any:
    if isinstance(m, keras.Sequential):
        return getattr(m, "_functional", None)
    return m if hasattr(m, "_nodes_by_depth") and getattr(m, "_nodes_by_depth", None) else None


def check_model(model: Any) -> None:
    """Refuse what the walk cannot read: a subclassed model has no graph."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"cuttree.keras needs a keras.Model, got {type(model).__name__}; torch models go to cuttree.prune"
        )
    if not is_graph_model(model):
        raise TraceError(
            f"'{model.name}' is a subclassed {type(model).__name__} without a layer graph; cuttree.keras prunes "
            "Functional and Sequential models: rebuild it with keras.Input(...) and layer calls, or as a Sequential"
        )


def _spec(shape: Sequence[int | None], dtype: Any) -> Any:
    return keras.KerasTensor(tuple(shape), dtype=dtype)


def _concrete(shape: Sequence[int | None]) -> tuple[int, ...]:
    if any(s is None for s in shape):
        raise TraceError(
            f"shape {tuple(shape)} has unknown sizes; pass example_inputs with concrete shapes "
            "(e.g. np.zeros((1, 224, 224, 3))) or build the model with a fixed input_shape"
        )
    return tuple(int(s) for s in shape)  # type: ignore[arg-type]


def trace(
    model: Any, input_shapes: Sequence[tuple[int, ...]], ignore: Sequence[str] = (), group_width: bool = False
) -> Tracer:
    """Walk ``model`` on inputs of ``input_shapes`` (batch included) and label every channel;
    ``group_width`` labels grouped convs by the width inside their groups, not by whole groups."""
    check_model(model)
    tr = Tracer(pinned_out=set(ignore), group_width=group_width)
    graph = _graph(model)
    specs = [_spec(s, x.dtype) for s, x in zip(input_shapes, graph.inputs, strict=True)]
    outs = _walk(tr, graph, "", specs, [(None,) * len(s) for s in input_shapes], rule_for)
    for shape, lab in outs:
        tr.output_shapes.append(shape)
        for x in lab:
            tr.state.pin(x, Pin.OUTPUT)
    return tr


def _calls(graph: Any) -> Iterator[tuple[Any, Any]]:
    """The graph's layer calls (node, operation) in execution order, input nodes skipped."""
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node, node.operation


def _walk(
    tr: Tracer, graph: Any, prefix: str, in_specs: list[Any], in_labels: list[tuple[Label, ...]], rule_for: Any
) -> list[tuple[tuple[int, ...], tuple[Label, ...]]]:
    values: dict[int, Any] = {id(x): s for x, s in zip(graph.inputs, in_specs, strict=True)}
    labels: dict[int, tuple[Label, ...]] = {id(s): lab for s, lab in zip(in_specs, in_labels, strict=True)}
    keep: list[Any] = list(in_specs)
    for node, op in _calls(graph):
        args, kwargs = node.arguments.fill_in(values)
        flat = [x for x in keras.tree.flatten((args, kwargs)) if isinstance(x, keras.KerasTensor)]
        path = f"{prefix}{op.name}"
        labs = [labels.get(id(x), (None,) * len(x.shape)) for x in flat]
        inner = _graph(op) if isinstance(op, keras.Model) else None
        if inner is not None:
            tr.nested_inputs[path] = [(_concrete(x.shape), lab) for x, lab in zip(flat, labs, strict=True)]
            outs = _walk(tr, inner, path + "/", flat, labs, rule_for)
            result = [_spec(shape, x.dtype) for (shape, _), x in zip(outs, node.outputs, strict=True)]
            out_labels = [lab for _, lab in outs]
        else:
            _register(tr, op, path)
            result = keras.tree.flatten(op.compute_output_spec(*args, **_spec_kwargs(kwargs)))
            call = Call(op, path, [_concrete(x.shape) for x in flat], labs, kwargs=kwargs)
            call.out_shapes = [_concrete(r.shape) for r in result]
            rule = rule_for(op)
            if rule.propagate is None:
                tr.unknown.setdefault(path, type(op).__name__)
            out_labels = (rule.propagate or pin_through)(tr, call)
            if path in tr.pinned_out:
                for lab in out_labels:
                    for x in lab:
                        tr.state.pin(x, Pin.IGNORED)
            call.out_labels = list(out_labels)
            tr.calls.append(call)
        for x, r, lab in zip(node.outputs, result, out_labels, strict=True):
            values[id(x)] = r
            labels[id(r)] = lab
            keep.append(r)
    return [
        (_concrete(values[id(x)].shape), labels.get(id(values[id(x)]), (None,) * len(x.shape))) for x in graph.outputs
    ]


def _spec_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != "training"}


def _register(tr: Tracer, layer: Any, path: str) -> None:
    """Label ``layer``'s weights the first time it is called (a shared layer keeps one set)."""
    if path in tr.layers:
        return
    tr.layers[path] = layer
    names = weight_names(layer, path)
    tr.layer_weights[path] = names
    rule = rule_for(layer)
    attr_of = {id(_attr(layer, a)): a for a in rule.out_dims}
    for name, v in zip(names, getattr(layer, "weights", []), strict=True):
        shape = tuple(int(s) for s in v.shape)
        tr.var_name[id(v)] = name
        tr.shapes[name] = shape
        tr.weights[name] = tr.state.label_shape(shape)
        attr = attr_of.get(id(v))
        d = rule.out_dims.get(attr) if attr is not None else None
        tr.roles[name] = Role(path, None if d is None else d % max(len(shape), 1), rule.producer)
        if d is not None and path in tr.pinned_out and shape:
            tr.state.pin(tr.weights[name][d % len(shape)], Pin.IGNORED)


def _attr(obj: Any, dotted: str) -> Any:
    """``obj.a.b`` for ``"a.b"`` (a sublayer's variable), or ``None``."""
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def build_graph(
    model: Any, input_shapes: Sequence[tuple[int, ...]], ignore: Sequence[str] = (), group_width: bool = True
) -> tuple[DependencyGraph, Tracer]:
    """Trace ``model`` and group its coupled channels with the core.

    A grouped conv gives two units, as in the torch frontend: whole groups, and (with
    ``group_width``, from a second walk) the same positions of the width inside every group;
    grouped-query attention gives key/value heads and the same query heads of every kv head.
    """
    t0 = time.perf_counter()
    tr = trace(model, input_shapes, ignore)
    seconds = time.perf_counter() - t0
    if tr.unknown:
        items = [f"{p} ({c})" for p, c in tr.unknown.items()]
        warn(
            f"no layer rule for {', '.join(items[:4])}{' …' if len(items) > 4 else ''}: the channels they touch are "
            "kept whole (cuttree prunes less, never wrongly); register a rule with "
            "cuttree.frontends.keras.rules.layer_rule to prune through them"
        )
    if tr.whole:
        items = [f"{p} ({c})" for p, c in tr.whole.items()]
        warn(
            f"kept {len(items)} attention layer(s) whole, with every channel they read and write: "
            f"{', '.join(items[:4])}{' …' if len(items) > 4 else ''}; cuttree prunes the heads of "
            "attention on (batch, tokens, channels) inputs, over the tokens, not gated"
        )
    graph = _group(tr, seconds)
    if group_width and (tr.grouped_heads or any(kind == "groups" for _, kind in tr.state.units)):
        graph = with_width_groups(graph, _group(trace(model, input_shapes, ignore, group_width=True), seconds))
    return graph, tr


def _group(tr: Tracer, seconds: float) -> DependencyGraph:
    return group_channels(
        tr.state, tr.weights, tr.roles, shapes=dict(tr.shapes), outputs=tr.output_shapes, trace_seconds=seconds
    )


def run_recording(model: Any, inputs: Sequence[Any], paths: set[str]) -> tuple[list[Any], dict[str, Any]]:
    """Run ``model`` eagerly on ``inputs`` (inference mode), returning its outputs and the
    outputs of the layers at ``paths`` — nested models included, which ``layer.output`` of an
    inner layer cannot give."""
    seen: dict[str, Any] = {}
    outs = _run(_graph(model), "", list(inputs), paths, seen)
    return outs, seen


def _run(graph: Any, prefix: str, inputs: list[Any], paths: set[str], seen: dict[str, Any]) -> list[Any]:
    values: dict[int, Any] = {id(x): v for x, v in zip(graph.inputs, inputs, strict=True)}
    for node, op in _calls(graph):
        args, kwargs = node.arguments.fill_in(values)
        path = f"{prefix}{op.name}"
        inner = _graph(op) if isinstance(op, keras.Model) else None
        if inner is not None:
            flat = [x for x in keras.tree.flatten((args, kwargs)) if not isinstance(x, bool | type(None))]
            result = _run(inner, path + "/", flat[: len(inner.inputs)], paths, seen)
        else:
            if "training" in kwargs or _takes_training(op):
                kwargs = {**kwargs, "training": False}
            result = keras.tree.flatten(op(*args, **kwargs))
        if path in paths:
            seen[path] = result[0]
        for x, r in zip(node.outputs, result, strict=True):
            values[id(x)] = r
    return [values[id(x)] for x in graph.outputs]


def _takes_training(op: Any) -> bool:
    return bool(getattr(op, "_call_has_training_arg", False))
