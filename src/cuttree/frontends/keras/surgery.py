"""Apply a plan to a Keras model by rebuilding it: new widths in the layer configs, sliced weights.

The original model is never touched. Its config (``get_config``, nested models included) is
edited by each layer's rule (``filters``, ``units``, a Reshape's ``target_shape``, …), the model
is rebuilt from it, every layer gets its weights with the removed positions deleted, and one
forward pass checks that the outputs keep their shapes: all or nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np

from cuttree.core.grouping import components
from cuttree.core.plan import SECOND_WALK_UNITS, GroupPlan, PruningPlan
from cuttree.errors import SurgeryError, first_line
from cuttree.frontends.keras.calibrate import model_input, to_numpy
from cuttree.frontends.keras.graph import is_graph_model, trace
from cuttree.frontends.keras.rules import Shapes, rule_for
from cuttree.frontends.keras.tracer import Call, Tracer


def check_plan(plan: PruningPlan, tr: Tracer) -> None:
    """Raise if the plan was not made for this model (framework, tensor names, shapes)."""
    if plan.framework != "keras":
        raise SurgeryError(
            f"the plan was made for a {plan.framework} model (layout '{plan.layout}'); apply it with "
            "cuttree.apply_plan to the torch model it was made for"
        )
    for name, shape in plan.shapes.items():
        if name not in tr.shapes:
            raise SurgeryError(
                f"the plan prunes weight '{name}', which this model does not have; load the model the plan was made for"
            )
        if tr.shapes[name] != tuple(shape):
            raise SurgeryError(
                f"weight '{name}' has shape {tr.shapes[name]}, the plan expects {tuple(shape)}; "
                "load the model the plan was made for"
            )


def leaf_layers(model: Any, prefix: str = "") -> dict[str, Any]:
    """Every non-model layer by path, walking into nested models (as the tracer names them)."""
    out: dict[str, Any] = {}
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if is_graph_model(layer):
            out.update(leaf_layers(layer, path + "/"))
        else:
            out[path] = layer
    return out


def user_classes(layers: Iterable[Any]) -> dict[str, type]:
    """The classes among ``layers`` that Keras does not know by name (the user's own), by name.

    Rebuilding from a config needs them in a custom-object scope. Keras's own classes stay out:
    by bare name they would shadow Keras operations of the same name (``x + 3.0`` in
    MobileNetV3 is the operation ``Add``, which the ``Add`` layer cannot stand in for).

    >>> import keras
    >>> class Scale(keras.layers.Layer):
    ...     pass
    >>> sorted(user_classes([keras.layers.Add(), Scale(), keras.layers.Dense(2)]))
    ['Scale']
    """
    return {type(x).__name__: type(x) for x in layers if not type(x).__module__.startswith("keras.")}


def _gone(tr: Tracer, groups: Iterable[GroupPlan]) -> tuple[np.ndarray, np.ndarray]:
    """The walk's components, and which of them ``groups`` remove."""
    comp = components(tr.state)
    gone = np.zeros(int(comp.max()) + 1, dtype=bool)
    for g in groups:
        rm = g.removed
        if not len(rm):
            continue
        dead = np.zeros(g.size, dtype=bool)
        dead[rm] = True
        for m in g.members:
            lab = tr.weights[m.tensor][m.dim]
            if lab is not None:
                gone[comp[lab[m.positions[dead[m.channels]]]]] = True
    return comp, gone


def _new_shapes(
    tr: Tracer, plan: PruningPlan, wide: Tracer | None
) -> tuple[dict[str, Shapes], dict[str, list[tuple[int, ...]]]]:
    """Each call's shapes after the plan, from the labels its tensors carry, and each nested
    model's new input shapes. The groups of the width inside grouped convs are read on the walk
    that labelled them (``wide``); a position stays when neither walk removes it."""
    walks = [(tr, _gone(tr, [g for g in plan.groups if g.unit not in SECOND_WALK_UNITS]))]
    if wide is not None:
        walks.append((wide, _gone(wide, [g for g in plan.groups if g.unit in SECOND_WALK_UNITS])))

    def new(shape: tuple[int, ...], labs: list[tuple[Any, ...]]) -> tuple[int, ...]:
        out = []
        for d, s in enumerate(shape):
            alive = np.ones(s, dtype=bool)
            for (comp, gone), lab in zip((w for _, w in walks), labs, strict=True):
                if lab[d] is not None:
                    alive &= ~gone[comp[lab[d]]]
            out.append(int(alive.sum()))
        return tuple(out)

    def shapes(calls: list[Call], ins: bool) -> list[tuple[int, ...]]:
        pairs = zip(
            calls[0].in_shapes if ins else calls[0].out_shapes,
            *(c.in_labels if ins else c.out_labels for c in calls),
            strict=True,
        )
        return [new(shape, list(labs)) for shape, *labs in pairs]

    calls: dict[str, Shapes] = {}
    for same in zip(*(w.calls for w, _ in walks), strict=True):
        calls.setdefault(same[0].path, Shapes(shapes(list(same), True), shapes(list(same), False)))
    nested: dict[str, list[tuple[int, ...]]] = {}
    for path, ins in tr.nested_inputs.items():
        labs = [w.nested_inputs[path] for w, _ in walks]
        nested[path] = [new(shape, [lab for _, lab in each]) for (shape, _), *each in zip(ins, *labs, strict=True)]
    return calls, nested


def sliced_weights(tr: Tracer, plan: PruningPlan) -> dict[str, list[np.ndarray]]:
    """Each traced layer's weights (in ``layer.weights`` order) with the plan's positions removed."""
    removed = plan.removed_positions()
    out: dict[str, list[np.ndarray]] = {}
    for path, layer in tr.layers.items():
        arrays = []
        for name, v in zip(tr.layer_weights[path], getattr(layer, "weights", []), strict=True):
            a = to_numpy(v)
            for d, pos in sorted(removed.get(name, {}).items()):
                a = np.delete(a, pos, axis=d)
            arrays.append(a)
        out[path] = arrays
    return out


def _edit(
    cfg: dict[str, Any],
    prefix: str,
    tr: Tracer,
    new: dict[str, list[np.ndarray]],
    shapes: tuple[dict[str, Shapes], dict[str, list[tuple[int, ...]]]],
) -> None:
    for entry in cfg.get("layers", []):
        entry.pop("build_config", None)  # the old input shapes: the rebuilt layers build on their new inputs
        conf = entry["config"]
        path = f"{prefix}{conf['name']}"
        if "layers" in conf:  # a nested Functional or Sequential model: its inputs may be narrower now
            _edit(conf, path + "/", tr, new, shapes)
            _set_inputs(conf, shapes[1].get(path, []))
        elif path in tr.layers:
            layer = tr.layers[path]
            rule_for(layer).update(conf, layer, new[path], shapes[0].get(path, Shapes([], [])))


def _set_inputs(conf: dict[str, Any], new_shapes: list[tuple[int, ...]]) -> None:
    """Give a nested model's InputLayers the (batch-free) shapes of what now flows into them."""
    entries = [e for e in conf["layers"] if e.get("class_name") == "InputLayer"]
    if "input_layers" in conf:  # Functional: inputs in the order of input_layers
        names = (
            [x[0] for x in conf["input_layers"]]
            if isinstance(conf["input_layers"][0], list)
            else [conf["input_layers"][0]]
        )
        by_name = {e["config"]["name"]: e for e in entries}
        entries = [by_name[n] for n in names if n in by_name]
    for e, shape in zip(entries, new_shapes, strict=False):
        e["config"]["batch_shape"] = [None, *shape[1:]]


def apply_plan(model: Any, plan: PruningPlan, input_shapes: Sequence[tuple[int, ...]]) -> Any:
    """A new model with the plan's channels removed; ``model`` is left as it was.

    Raises :class:`SurgeryError` if the rebuilt model does not build, load its weights, or run
    with outputs of the original's shapes.
    """
    tr = trace(model, input_shapes)
    check_plan(plan, tr)
    new = sliced_weights(tr, plan)
    cfg = model.get_config()
    second = any(g.unit in SECOND_WALK_UNITS for g in plan.groups)
    wide = trace(model, input_shapes, group_width=True) if second else None
    _edit(cfg, "", tr, new, _new_shapes(tr, plan, wide))
    try:
        with keras.saving.custom_object_scope(user_classes(tr.layers.values())):
            rebuilt = type(model).from_config(cfg)
        layers = leaf_layers(rebuilt)
        for path, arrays in new.items():
            if arrays:
                layers[path].set_weights(arrays)
        xs = [np.zeros(s, dtype="float32") for s in input_shapes]
        outs = keras.tree.flatten(rebuilt(model_input(rebuilt, xs if len(xs) > 1 else xs[0]), training=False))
    except Exception as e:  # any failure of the rebuild: report, keep the cause, the original is untouched
        first = first_line(e)
        raise SurgeryError(
            f"the pruned Keras model could not be rebuilt ({type(e).__name__}: {first}); add the layer involved "
            "to 'ignore'"
        ) from e
    got = [tuple(int(d) for d in o.shape) for o in outs]
    if got != list(tr.output_shapes):
        raise SurgeryError(
            f"the pruned model's outputs have shapes {got}, the original's {tr.output_shapes}; add the layer "
            "involved to 'ignore'"
        )
    return rebuilt
