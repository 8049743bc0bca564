"""Unstructured and N:M sparsity for Keras models: the core's masks, applied to the kernels.

Which weights: the kernel of every producer layer (Conv, Dense, depthwise, the pointwise kernel
of a separable conv), minus ``ignore``; the model's last producer (its output layer) stays dense
unless named in ``layers``, as in the torch frontend. Masks are numpy keep-masks in Keras's
weight layout; :class:`GradualPruning` is the callback that applies the cubic schedule during
``model.fit`` (re-masking every ``frequency`` steps and zeroing masked weights after every
batch), and :func:`strip` makes the final zeros permanent and drops the masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from cuttree.config import Config
from cuttree.core import masks as core_masks
from cuttree.core.importance import REGISTRY
from cuttree.core.names import selected, selects
from cuttree.core.results import SparsifyResult
from cuttree.core.schedule import due, polynomial_sparsity
from cuttree.frontends.keras.calibrate import to_numpy
from cuttree.frontends.keras.rules import rule_for
from cuttree.frontends.keras.surgery import leaf_layers, user_classes


def kernel_of(layer: Any) -> Any:
    """The weight unstructured pruning masks: ``kernel``, or a separable conv's pointwise kernel."""
    k = getattr(layer, "pointwise_kernel", None)
    return k if k is not None else getattr(layer, "kernel", None)


def input_dim(layer: Any, ndim: int) -> int:
    """The kernel's input-channel dim (N:M runs along it): (*k, in, out), transposed (*k, out, in)."""
    return ndim - 1 if "Transpose" in type(layer).__name__ else ndim - 2


def prunable_layers(model: Any, ignore: Sequence[str] = (), include_output: Sequence[str] = ()) -> dict[str, Any]:
    """Producer layers with a kernel, by path; the last one (the output layer) only if named."""
    layers = {
        p: layer for p, layer in leaf_layers(model).items() if rule_for(layer).producer and kernel_of(layer) is not None
    }
    if layers:
        last = list(layers)[-1]
        if not selected(include_output, last, sep="/", leaf=True):
            layers.pop(last)

    return {p: layer for p, layer in layers.items() if not selected(ignore, p, sep="/", leaf=True)}


def compute_masks(layers: dict[str, Any], config: Config, sparsity_now: float | None = None) -> dict[str, np.ndarray]:
    """Keep-masks by |w| (layer-wise or global, ratio or threshold, or N:M), ties in the order
    :func:`cuttree.core.masks.tie_order` draws from ``config.seed`` (``ties: position``: by
    position), as in the torch frontend."""
    if REGISTRY.lookup(config.criterion).needs != "weights":  # what it declares, never its name
        raise ValueError(
            f"criterion '{config.criterion}' is not available for Keras unstructured pruning yet; use l1 or l2"
        )
    score = {p: np.abs(to_numpy(kernel_of(layer))) for p, layer in layers.items()}
    if config.nm is not None:
        n, m = (int(v) for v in config.nm.split(":"))
        return core_masks.nm_masks(
            score, n, m, {p: input_dim(layers[p], s.ndim) for p, s in score.items()}, config.tie_seed
        )
    per_layer = {
        p: o.ratio
        for pat, o in config.layers.items()
        if o.ratio is not None
        for p in layers
        if selects(pat, p, sep="/", leaf=True)
    }
    ratio = sparsity_now if sparsity_now is not None else config.ratio
    return core_masks.magnitude_masks(
        score, ratio, None if sparsity_now is not None else config.threshold, config.scope, per_layer, config.tie_seed
    )


def apply_masks(layers: dict[str, Any], masks: dict[str, np.ndarray]) -> None:
    """Zero the masked kernel entries, in place."""
    for p, mask in masks.items():
        k = kernel_of(layers[p])
        k.assign(to_numpy(k) * mask)


def sparsity(layers: dict[str, Any]) -> float:
    """Fraction of zeros among the layers' kernels."""
    zeros = total = 0
    for layer in layers.values():
        w = to_numpy(kernel_of(layer))
        zeros += int((w == 0).sum())
        total += w.size
    return zeros / max(total, 1)


def copy_model(model: Any) -> Any:
    """An independent copy (config + weights), nested models included."""
    with keras.saving.custom_object_scope(user_classes(leaf_layers(model).values())):
        new = type(model).from_config(model.get_config())
    new.set_weights(model.get_weights())
    return new


def sparsify(model: Any, config: Config, calib_data: Any = None, sparsity_now: float | None = None) -> SparsifyResult:
    """A copy of ``model`` with its kernels masked by magnitude (or N:M)."""
    work = copy_model(model)
    layers = prunable_layers(work, config.ignore, include_output=list(config.layers))
    masks = compute_masks(layers, config, sparsity_now)
    apply_masks(layers, masks)
    return SparsifyResult(work, masks, sparsity(layers))


def strip(model: Any, masks: dict[str, np.ndarray] | None = None) -> Any:
    """Make the zeros permanent: apply ``masks`` (e.g. a callback's final ones) one last time."""
    if masks:
        apply_masks(prunable_layers(model, include_output=list(masks)), masks)
    return model


class GradualPruning(keras.callbacks.Callback):
    """The cubic (polynomial) schedule during ``model.fit``, as TFMOT's ``UpdatePruningStep``:
    masks recomputed every ``frequency`` steps between ``begin_step`` and ``end_step``, masked
    weights zeroed again after every batch (the optimizer moves them)."""

    def __init__(self, config: Config, target: Any | None = None) -> None:
        super().__init__()
        self.target = target  # the model to mask, when fit runs on a wrapper (distillation)
        if config.schedule is None:
            raise ValueError("gradual sparsity needs a schedule: section in the config")
        self.config = config
        self.step = 0
        self.masks: dict[str, np.ndarray] = {}
        self.layers: dict[str, Any] = {}

    def on_train_begin(self, logs: Any = None) -> None:
        model = self.target if self.target is not None else self.model
        self.layers = prunable_layers(model, self.config.ignore, include_output=list(self.config.layers))

    def _sync(self) -> None:
        """On JAX, fit keeps the weights outside the variables between steps: bring them back
        (a no-op when they are there), so that masks read and write the real weights."""
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        sch = self.config.schedule
        assert sch is not None
        if due(self.step, sch.begin_step, sch.end_step, sch.frequency):
            self._sync()
            s = polynomial_sparsity(
                self.step,
                sch.initial_sparsity,
                sch.final_sparsity,
                sch.begin_step,
                sch.end_step,
                sch.frequency,
                sch.power,
            )
            self.masks = compute_masks(self.layers, self.config, sparsity_now=s)
            apply_masks(self.layers, self.masks)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self.masks:
            self._sync()
            apply_masks(self.layers, self.masks)
        self.step += 1
